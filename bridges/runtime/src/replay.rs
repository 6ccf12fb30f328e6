//! Line-oriented input: a bridge's parser for one line ([`LineHandler`]),
//! fed from any byte stream ([`feed`]), and `--replay FILE|-` ([`Replay`]):
//! a JSON-lines file (or stdin) published through that parser, after which
//! the bridge delivers what it spooled and exits.
//!
//! Blank lines are skipped (keepalives); lines over the limit and a last
//! line without its newline are dead-lettered here, once for every bridge.

use std::future::Future;

use tokio::io::AsyncReadExt;

use crate::lines::{Line, Lines};
use crate::source::{ResultExt, Source, SourceContext, SourceError};

/// Turns one complete line into events (or a dead letter).
pub trait LineHandler: Send + 'static {
    /// The name dead letters are filed under (`gerrit`, `nova`).
    fn kind(&self) -> &'static str;
    /// Publishes what `line` holds through `ctx`; input that is not an
    /// event goes to [`SourceContext::malformed`].
    fn line(
        &mut self,
        ctx: &SourceContext,
        line: Vec<u8>,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;
}

/// Hands one piece of input to `handler`, dead-lettering what is not a
/// whole line.
pub async fn feed<H: LineHandler>(
    ctx: &SourceContext,
    handler: &mut H,
    line: Line,
) -> Result<(), SourceError> {
    let (bytes, len, reason) = match line {
        Line::Complete(b) if b.iter().all(u8::is_ascii_whitespace) => return Ok(()),
        Line::Complete(b) => return handler.line(ctx, b).await,
        Line::TooLong { prefix, len } => (prefix, len, "line longer than --max-line-bytes"),
        Line::CutOff(b) => {
            let len = b.len();
            (b, len, "line cut off (stream ended before its newline)")
        }
    };
    ctx.malformed(handler.kind(), reason, &bytes, len);
    Ok(())
}

/// `--replay FILE|-`: every line of a file (or stdin), then finished.
pub struct Replay<H> {
    path: String,
    max_line_bytes: usize,
    handler: H,
}

impl<H: LineHandler> Replay<H> {
    /// Replays `path` (`-` for stdin) through `handler`.
    pub fn new(path: String, max_line_bytes: usize, handler: H) -> Replay<H> {
        Replay {
            path,
            max_line_bytes,
            handler,
        }
    }
}

impl<H: LineHandler> Source for Replay<H> {
    fn name(&self) -> String {
        format!("replay {}", self.path)
    }

    async fn run(&mut self, ctx: &SourceContext) -> Result<(), SourceError> {
        let path = self.path.clone();
        let mut input: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if path == "-" {
            Box::new(tokio::io::stdin())
        } else {
            Box::new(
                // The source's name says which file: `source replay FILE`.
                tokio::fs::File::open(&path)
                    .await
                    .fatal("cannot open the file")?,
            )
        };
        ctx.connected();
        let mut lines = Lines::new(self.max_line_bytes);
        let mut buf = vec![0u8; 64 * 1024];
        let mut n_lines = 0u64;
        loop {
            let n = input.read(&mut buf).await.fatal("cannot read the file")?;
            let batch = if n == 0 {
                lines.finish().into_iter().collect()
            } else {
                lines.push(&buf[..n])
            };
            for line in batch {
                n_lines += 1;
                feed(ctx, &mut self.handler, line).await?;
            }
            if n == 0 {
                break;
            }
        }
        tracing::info!(file = %path, lines = n_lines, "replay read to the end");
        Ok(())
    }
}
