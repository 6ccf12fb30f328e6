//! Backfill and offline input: every mail of a maildir (`new/` and `cur/`)
//! or an mbox file (or stdin), published once; then the source is finished
//! and the bridge exits once the broker has everything. Files are only
//! read, never changed.

use std::path::{Path, PathBuf};

use firehose_bridge::{ResultExt, Source, SourceContext, SourceError};
use mail_parser::mailbox::mbox::MessageIterator;

use crate::mail;

/// Counts of one pass over the input, for the closing log line.
#[derive(Debug, Default)]
struct Counts {
    mails: u64,
    published: u64,
    other: u64,
    dead: u64,
}

/// Publishes one mail (or dead-letters it, whole).
async fn one(
    ctx: &SourceContext,
    source: &str,
    what: &str,
    raw: &[u8],
    screen: &mail::Screen,
    n: &mut Counts,
) -> Result<(), SourceError> {
    n.mails += 1;
    let parsed = screen.read(raw).await;
    match parsed {
        Ok(Some(ev)) => {
            n.published += 1;
            ctx.publish(&ev, source, None).await
        }
        Ok(None) => {
            n.other += 1;
            Ok(())
        }
        Err(reason) => {
            n.dead += 1;
            ctx.malformed_whole("launchpad", &format!("{what}: {reason}"), raw);
            Ok(())
        }
    }
}

/// `--maildir DIR`.
pub struct Maildir {
    pub dir: PathBuf,
    pub screen: mail::Screen,
}

impl Source for Maildir {
    fn name(&self) -> String {
        format!("maildir {}", self.dir.display())
    }

    async fn run(&mut self, ctx: &SourceContext) -> Result<(), SourceError> {
        let mut files = Vec::new();
        for sub in ["new", "cur"] {
            let d = self.dir.join(sub);
            let entries = std::fs::read_dir(&d).fatal(format!(
                "--maildir {}: reading {sub}/ (is it a maildir?)",
                self.dir.display()
            ))?;
            for e in entries {
                let e = e.fatal(format!("--maildir: reading {}", d.display()))?;
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    files.push(e.path());
                }
            }
        }
        // Maildir names start with the delivery time: roughly oldest first.
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        ctx.connected();
        let source = format!("file://{}", absolute(&self.dir).display());
        let mut n = Counts::default();
        for f in &files {
            let raw = tokio::fs::read(f)
                .await
                .fatal(format!("reading {}", f.display()))?;
            let what = f.display().to_string();
            one(ctx, &source, &what, &raw, &self.screen, &mut n).await?;
        }
        tracing::info!(maildir = %self.dir.display(), mails = n.mails, published = n.published, not_launchpad = n.other, dead_lettered = n.dead, "maildir read to the end");
        Ok(())
    }
}

/// `--mbox FILE` (or `-` for stdin).
pub struct Mbox {
    pub path: String,
    pub screen: mail::Screen,
}

impl Source for Mbox {
    fn name(&self) -> String {
        format!("mbox {}", self.path)
    }

    async fn run(&mut self, ctx: &SourceContext) -> Result<(), SourceError> {
        let data = if self.path == "-" {
            let mut buf = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut buf)
                .await
                .fatal("--mbox -: reading stdin")?;
            buf
        } else {
            tokio::fs::read(&self.path)
                .await
                .fatal(format!("--mbox {}", self.path))?
        };
        ctx.connected();
        let source = match self.path.as_str() {
            "-" => "file:-".to_owned(),
            p => format!("file://{}", absolute(Path::new(p)).display()),
        };
        let mut n = Counts::default();
        for (i, m) in MessageIterator::new(&data[..]).enumerate() {
            let what = format!("{} message {}", self.path, i + 1);
            match m {
                Ok(m) => {
                    one(ctx, &source, &what, m.contents(), &self.screen, &mut n).await?;
                }
                Err(_) => {
                    n.dead += 1;
                    ctx.malformed("launchpad", &format!("{what}: not an mbox message"), &[], 0);
                }
            }
        }
        tracing::info!(mbox = %self.path, mails = n.mails, published = n.published, not_launchpad = n.other, dead_lettered = n.dead, "mbox read to the end");
        Ok(())
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}
