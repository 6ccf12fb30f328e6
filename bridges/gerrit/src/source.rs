//! The gerrit source: lines of `gerrit stream-events` (live over SSH, or
//! replayed from a file) become events on `gerrit/<project>/<type>`.
//! Reconnecting, status and shutdown are the runtime's.

use std::sync::Arc;

use firehose::gerrit::GerritEvent;
use firehose_bridge::lines::Lines;
use firehose_bridge::replay::{feed, LineHandler};
use firehose_bridge::{ResultExt, Source, SourceContext, SourceError};
use russh::keys::PrivateKey;
use russh::ChannelMsg;

use crate::ssh::{self, HostKeyCheck, Target};

/// How long opening the stream (TCP, SSH, login, exec) may take.
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Parses `stream-events` lines into events.
pub struct GerritLines {
    /// The CloudEvents `source`: the Gerrit server's URI.
    pub source_uri: String,
}

impl LineHandler for GerritLines {
    fn kind(&self) -> &'static str {
        "gerrit"
    }

    async fn line(&mut self, ctx: &SourceContext, line: Vec<u8>) -> Result<(), SourceError> {
        match GerritEvent::parse(&line) {
            Ok(ev) => ctx.publish(&ev, &self.source_uri, None).await,
            Err(e) => {
                ctx.malformed("gerrit", &e.to_string(), &line, line.len());
                Ok(())
            }
        }
    }
}

/// The live SSH source.
pub struct Live {
    pub target: Target,
    pub key: Arc<PrivateKey>,
    pub host_key: HostKeyCheck,
    pub command: String,
    pub max_line_bytes: usize,
}

impl Source for Live {
    fn name(&self) -> String {
        self.target.to_string()
    }

    async fn run(&mut self, ctx: &SourceContext) -> Result<(), SourceError> {
        self.stream(ctx).await
    }
}

impl Live {
    /// Opens the stream and reads it until it ends.
    async fn stream(&mut self, ctx: &SourceContext) -> Result<(), SourceError> {
        let stream = ssh::open(
            &self.target,
            self.key.clone(),
            &self.host_key,
            &self.command,
            OPEN_TIMEOUT,
        )
        .await
        .lost("cannot open the event stream")?;
        tracing::info!(gerrit = %self.target, command = %self.command, "streaming events");
        ctx.connected();
        let mut handler = GerritLines {
            source_uri: self.target.source_uri(),
        };
        let why = pump(ctx, &mut handler, stream, self.max_line_bytes).await?;
        Err(SourceError::Ended(format!("event stream ended: {why}")))
    }
}

/// Reads the channel until it ends; returns why it ended.
async fn pump(
    ctx: &SourceContext,
    handler: &mut GerritLines,
    mut stream: ssh::Stream,
    max_line_bytes: usize,
) -> Result<String, SourceError> {
    let mut lines = Lines::new(max_line_bytes);
    let mut exit: Option<String> = None;
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let msg = tokio::select! {
            m = stream.channel.wait() => m,
            _ = shutdown.changed() => return Err(SourceError::Stopped),
        };
        match msg {
            Some(ChannelMsg::Data { data }) => {
                tracing::trace!(bytes = data.len(), "stream data");
                for line in lines.push(&data) {
                    feed(ctx, handler, line).await?;
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
                    feed(ctx, handler, line).await?;
                }
                return Ok(exit.unwrap_or_else(|| "connection closed".to_owned()));
            }
            Some(_) => {}
        }
    }
}
