//! The unix socket the callback plugin writes to, as a source: `serve`
//! listens until the bridge stops; `run` listens while one command (an
//! `ansible-playbook`) runs, then reads what is left and finishes, so the
//! runtime delivers everything before the bridge exits with the command's
//! own exit code.

use firehose::report::Chain;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use firehose_bridge::cli::{split_command, CommandExit};
use firehose_bridge::lines::Lines;
use firehose_bridge::replay::{feed, LineHandler};
use firehose_bridge::{ResultExt, Source, SourceContext, SourceError};
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use firehose::ansible::PluginEvent;

/// How long `run` reads connections after the command exited (the plugin
/// flushes before the playbook ends; this only bounds a stuck writer).
const DRAIN: Duration = Duration::from_secs(10);

/// Turns plugin lines into events.
pub struct PluginLines;

impl LineHandler for PluginLines {
    fn kind(&self) -> &'static str {
        "ansible"
    }

    async fn line(&mut self, ctx: &SourceContext, line: Vec<u8>) -> Result<(), SourceError> {
        match PluginEvent::parse(&line) {
            Ok(ev) => {
                let source = format!("ansible://{}", firehose::topic::level(&ev.launcher));
                ctx.publish(&ev, &source, None).await
            }
            Err(e) => {
                ctx.malformed(
                    "ansible",
                    &firehose::report::error_chain(&e),
                    &line,
                    line.len(),
                );
                Ok(())
            }
        }
    }
}

/// Binds `path`, replacing a stale socket (never any other file), readable
/// and writable by its owner and group only.
fn bind(path: &Path) -> Result<UnixListener, SourceError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(SourceError::Fatal {
                context: format!("--socket {}", path.display()),
                source: "exists and is not a socket; not replacing it".into(),
            });
        }
        std::fs::remove_file(path)
            .fatal(format!("removing the stale socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path).fatal(format!("listening on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .fatal(format!("chmod 0660 {}", path.display()))?;
    Ok(l)
}

/// Reads one plugin connection to its end.
async fn connection(
    ctx: SourceContext,
    mut stream: UnixStream,
    max_line: usize,
) -> Result<(), SourceError> {
    let mut lines = Lines::new(max_line);
    let mut buf = vec![0u8; 64 * 1024];
    let mut handler = PluginLines;
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "plugin connection failed");
                0
            }
        };
        let batch = if n == 0 {
            lines.finish().into_iter().collect()
        } else {
            lines.push(&buf[..n])
        };
        for line in batch {
            feed(&ctx, &mut handler, line).await?;
        }
        if n == 0 {
            return Ok(());
        }
    }
}

/// `serve --socket PATH`: every connection's events, until the bridge stops.
pub struct Serve {
    pub path: PathBuf,
    pub max_line_bytes: usize,
}

impl Source for Serve {
    fn name(&self) -> String {
        format!("socket {}", self.path.display())
    }

    async fn run(&mut self, ctx: &SourceContext) -> Result<(), SourceError> {
        let listener = bind(&self.path)?;
        tracing::info!(socket = %self.path.display(), "waiting for ansible callback connections");
        ctx.connected();
        let mut conns = JoinSet::new();
        let mut shutdown = ctx.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Err(SourceError::Stopped),
                accepted = listener.accept() => {
                    let (stream, _) = accepted.lost("accepting a plugin connection")?;
                    tracing::debug!("plugin connected");
                    conns.spawn(connection(ctx.clone(), stream, self.max_line_bytes));
                }
                Some(done) = conns.join_next() => {
                    if let Ok(Err(SourceError::Stopped)) = done {
                        return Err(SourceError::Stopped);
                    }
                }
            }
        }
    }
}

/// `run -- COMMAND...`: the command's events, then finished.
pub struct Run {
    pub command: Vec<String>,
    pub max_line_bytes: usize,
    /// Holds the socket and the plugin for the command's lifetime.
    pub dir: tempfile::TempDir,
    /// The command's exit code, once it exited (128 + signal if killed).
    pub exit: CommandExit,
}

impl Source for Run {
    fn name(&self) -> String {
        self.command.first().cloned().unwrap_or_default()
    }

    async fn run(&mut self, ctx: &SourceContext) -> Result<(), SourceError> {
        if self.exit.get().is_some() {
            return Ok(());
        }
        let socket = self.dir.path().join("firehose.sock");
        let listener = bind(&socket)?;
        let plugins =
            crate::plugin::install(self.dir.path()).fatal("writing the callback plugin")?;
        let (program, args) = split_command(
            &self.command,
            "firehose-ansible run [flags] -- ansible-playbook ...",
        )?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env("FIREHOSE_ANSIBLE_SOCKET", &socket)
            .env(
                "ANSIBLE_CALLBACK_PLUGINS",
                crate::plugin::prepend_path("ANSIBLE_CALLBACK_PLUGINS", &plugins),
            )
            .env(
                "ANSIBLE_CALLBACKS_ENABLED",
                crate::plugin::enable("ANSIBLE_CALLBACKS_ENABLED"),
            );
        let mut child = cmd.spawn().fatal(format!("running {program}"))?;
        tracing::info!(command = %self.command.join(" "), "running");
        ctx.connected();
        let mut conns = JoinSet::new();
        let status = loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, _) = accepted.lost("accepting a plugin connection")?;
                    conns.spawn(connection(ctx.clone(), stream, self.max_line_bytes));
                }
                status = child.wait() => break status.fatal(format!("waiting for {program}"))?,
            }
        };
        drop(listener);
        let drained = tokio::time::timeout(DRAIN, async {
            while let Some(r) = conns.join_next().await {
                if let Ok(Err(e)) = r {
                    return Err(e);
                }
            }
            Ok(())
        })
        .await;
        if drained.is_err() {
            tracing::warn!("a plugin connection was still open {DRAIN:?} after the command exited; not waiting for it");
        }
        let code = self.exit.set(status);
        tracing::info!(command = %program, exit_code = code, "command finished; delivering its events");
        drained.unwrap_or(Ok(()))
    }
}
