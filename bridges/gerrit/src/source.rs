//! The gerrit source: lines of `gerrit stream-events` (live over SSH, or
//! replayed from a file) become events on `gerrit/<project>/<type>`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use firehose::gerrit::GerritEvent;
use firehose::PayloadMode;
use firehose_bridge::backoff::Backoff;
use firehose_bridge::lines::{Line, Lines};
use firehose_bridge::{Event, SourceContext};
use russh::keys::PrivateKey;
use russh::ChannelMsg;
use tokio::io::AsyncReadExt;

use crate::ssh::{self, HostKeyCheck, Target};

/// A live SSH source.
pub struct Live {
    pub target: Target,
    pub key: Arc<PrivateKey>,
    pub host_key: HostKeyCheck,
    pub command: String,
    pub max_line_bytes: usize,
}

/// Turns one line into an event (or a dead letter) and hands it over.
/// Returns false when the runtime has stopped.
pub async fn handle_line(ctx: &SourceContext, source_uri: &str, line: Line) -> bool {
    let (bytes, len, reason) = match line {
        // Blank lines are keepalives, not errors.
        Line::Complete(b) if b.iter().all(u8::is_ascii_whitespace) => return true,
        Line::Complete(b) => match GerritEvent::parse(&b) {
            Ok(ev) => {
                let payload = match ctx.payload {
                    PayloadMode::Raw => ev.text().as_bytes().to_vec(),
                    PayloadMode::Cloudevents => ev
                        .to_cloudevent(source_uri, time::OffsetDateTime::now_utc())
                        .to_json(),
                };
                let event = Event {
                    topic: ctx.topic(&ev.topic()),
                    payload: payload.into(),
                    retain: false,
                    ack: None,
                };
                return ctx.events.send(event).await.is_ok();
            }
            Err(e) => {
                let len = b.len();
                (b, len, e.to_string())
            }
        },
        Line::TooLong { prefix, len } => {
            (prefix, len, "line longer than --max-line-bytes".to_owned())
        }
        Line::CutOff(b) => {
            let len = b.len();
            (
                b,
                len,
                "line cut off (stream ended before its newline)".to_owned(),
            )
        }
    };
    ctx.malformed("gerrit", &reason, &bytes, len);
    true
}

/// Publishes a JSON-lines file (or stdin for `-`), then returns.
pub async fn replay(
    ctx: SourceContext,
    path: String,
    source_uri: String,
    max_line_bytes: usize,
) -> Result<(), String> {
    let mut input: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if path == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(&path)
                .await
                .map_err(|e| format!("--replay {path}: {e}"))?,
        )
    };
    ctx.connected();
    let mut lines = Lines::new(max_line_bytes);
    let mut buf = vec![0u8; 64 * 1024];
    let mut n_lines = 0u64;
    loop {
        let n = input
            .read(&mut buf)
            .await
            .map_err(|e| format!("--replay {path}: {e}"))?;
        let batch = if n == 0 {
            lines.finish().into_iter().collect()
        } else {
            lines.push(&buf[..n])
        };
        for line in batch {
            n_lines += 1;
            if !handle_line(&ctx, &source_uri, line).await {
                return Ok(());
            }
        }
        if n == 0 {
            break;
        }
    }
    tracing::info!(file = %path, lines = n_lines, "replay read to the end");
    Ok(())
}

/// Runs `gerrit stream-events` over SSH until the bridge stops,
/// reconnecting with backoff whenever the connection ends.
pub async fn live(ctx: SourceContext, src: Live) -> Result<(), String> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let source_uri = src.target.source_uri();
    let mut shutdown = ctx.shutdown.clone();
    loop {
        if ctx.stopping() {
            return Ok(());
        }
        let opened = tokio::select! {
            r = ssh::open(&src.target, src.key.clone(), &src.host_key, &src.command, Duration::from_secs(30)) => r,
            _ = shutdown.changed() => return Ok(()),
        };
        match opened {
            Ok(stream) => {
                let since = Instant::now();
                tracing::info!(gerrit = %src.target, command = %src.command, "streaming events");
                ctx.connected();
                let why = pump(&ctx, &source_uri, stream, src.max_line_bytes).await;
                if ctx.stopping() {
                    return Ok(());
                }
                tracing::warn!(gerrit = %src.target, reason = %why, "event stream ended; reconnecting");
                ctx.disconnected(why);
                if since.elapsed() > Duration::from_secs(60) {
                    backoff.reset();
                }
            }
            Err(e) => {
                tracing::warn!(gerrit = %src.target, error = %e, attempt = backoff.attempts() + 1, "cannot open the event stream");
                ctx.disconnected(e.to_string());
            }
        }
        ctx.reconnecting();
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// Reads the channel until it ends; returns why it ended.
async fn pump(
    ctx: &SourceContext,
    source_uri: &str,
    mut stream: ssh::Stream,
    max_line_bytes: usize,
) -> String {
    let mut lines = Lines::new(max_line_bytes);
    let mut shutdown = ctx.shutdown.clone();
    let mut exit: Option<String> = None;
    loop {
        let msg = tokio::select! {
            m = stream.channel.wait() => m,
            _ = shutdown.changed() => return "bridge stopping".to_owned(),
        };
        match msg {
            Some(ChannelMsg::Data { data }) => {
                tracing::trace!(bytes = data.len(), "stream data");
                for line in lines.push(&data) {
                    if !handle_line(ctx, source_uri, line).await {
                        return "runtime stopped".to_owned();
                    }
                }
            }
            Some(ChannelMsg::ExtendedData { data, .. }) => {
                let text = String::from_utf8_lossy(&data);
                tracing::warn!(stderr = %text.trim_end(), "gerrit wrote to stderr");
            }
            Some(ChannelMsg::ExitStatus { exit_status }) => {
                exit = Some(format!("command exited with status {exit_status}"));
            }
            Some(ChannelMsg::Eof) | Some(ChannelMsg::Close) | None => {
                if let Some(line) = lines.finish() {
                    handle_line(ctx, source_uri, line).await;
                }
                return exit.unwrap_or_else(|| "connection closed".to_owned());
            }
            Some(_) => {}
        }
    }
}
