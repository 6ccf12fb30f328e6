//! `firehose-gerrit`: flags, config file, logging; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use firehose_bridge::cli::{CommonArgs, Info, Plan, ReplayArgs};
use firehose_bridge::replay::Replay;
use firehose_bridge::BoxedSource;
use firehose_gerrit::config::{GerritArgs, GerritConfig};
use firehose_gerrit::source::{GerritLines, Live};
use firehose_gerrit::ssh::{self, HostKeyCheck, Target};

#[derive(Parser, Debug)]
#[command(
    name = "firehose-gerrit",
    version,
    about = "Publish Gerrit's stream-events onto the Firehose MQTT bus",
    long_about = "Publish Gerrit's stream-events onto the Firehose MQTT bus.\n\n\
        Connects to Gerrit over SSH, runs `gerrit stream-events` and publishes every event \
        on gerrit/<project>/<event-type> (QoS 1), as a CloudEvents envelope or, with \
        --payload raw, exactly as Gerrit printed it. Events wait in a spool until the broker \
        acknowledged them; lines that are not events go to a dead-letter file. A retained \
        status message on firehose/status/gerrit/<instance> says up, degraded or down.\n\n\
        Settings come from --config (TOML: [publish] and [source] tables), then flags.\n\nLogs go to stderr; FIREHOSE_LOG (e.g. debug, or info,russh=debug) sets what is shown.",
    after_help = "Example:\n  firehose-gerrit --gerrit ssh://firehose@review.example.org \\\n    --ssh-key /etc/firehose/gerrit.key --broker mqtt://firehose-gerrit@127.0.0.1 \\\n    --password-file /etc/firehose/gerrit.pass --spool /var/lib/firehose/gerrit"
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    replay: ReplayArgs,
    #[command(flatten)]
    gerrit: GerritArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let info = Info {
        name: "gerrit",
        version: env!("CARGO_PKG_VERSION"),
        log: "info,russh=warn",
    };
    firehose_bridge::cli::main(info, cli.common, |mut src: GerritConfig, _| {
        src.apply(&cli.gerrit);
        plan(src, cli.replay.replay)
    })
}

/// The source the configuration asks for: Gerrit itself, or a replay.
fn plan(src: GerritConfig, replay: Option<String>) -> Result<Plan<BoxedSource>> {
    let (source, describe) = match replay {
        Some(path) => {
            let source_uri = match &src.gerrit {
                Some(g) => g
                    .parse::<Target>()
                    .map(|t| t.source_uri())
                    .unwrap_or_else(|_| g.clone()),
                None => format!("file:{path}"),
            };
            let lines = GerritLines { source_uri };
            let replay = Replay::new(path, src.max_line_bytes, lines);
            (BoxedSource::new(replay), "replay".to_owned())
        }
        None => {
            let live = live_source(&src)?;
            let describe = format!("gerrit {}", live.target);
            (BoxedSource::new(live), describe)
        }
    };
    Ok(Plan {
        sources: vec![source],
        describe,
    })
}

/// Everything the live SSH source needs, checked up front.
fn live_source(src: &GerritConfig) -> Result<Live> {
    let Some(url) = &src.gerrit else {
        bail!("no Gerrit to read from: pass --gerrit ssh://USER@HOST[:PORT] (or --replay FILE)");
    };
    let target: Target = url.parse()?;
    let Some(key_path) = &src.ssh_key else {
        bail!(
            "--gerrit needs --ssh-key FILE (the private key Gerrit knows for {})",
            target.user
        );
    };
    let key = ssh::load_key(key_path)?;
    let host_key = if let Some(fp) = &src.host_key_fingerprint {
        if !fp.starts_with("SHA256:") {
            bail!(
                "--host-key-fingerprint {fp:?}: expected SHA256:... as `ssh-keygen -lf` prints it"
            );
        }
        HostKeyCheck::Fingerprint(fp.clone())
    } else if src.insecure_accept_host_key {
        tracing::warn!("--insecure-accept-host-key: the Gerrit host key will not be checked");
        HostKeyCheck::Insecure
    } else {
        let path = match &src.known_hosts {
            Some(p) => p.clone(),
            None => std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".ssh/known_hosts"))
                .context("no HOME to find ~/.ssh/known_hosts: pass --known-hosts FILE")?,
        };
        if !path.exists() {
            bail!(
                "known_hosts file {} does not exist: create it with `ssh-keyscan -p {} {} > {}` (after checking the key), or pass --host-key-fingerprint",
                path.display(),
                target.port,
                target.host,
                path.display()
            );
        }
        HostKeyCheck::KnownHosts(path)
    };
    Ok(Live {
        target,
        key,
        host_key,
        command: src.command.clone(),
        max_line_bytes: src.max_line_bytes,
    })
}
