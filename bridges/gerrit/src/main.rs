//! `firehose-gerrit`: flags, config file, logging; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use firehose_bridge::config::{load_file, FileConfig, PublishArgs};
use firehose_bridge::Bridge;
use firehose_gerrit::config::{GerritArgs, GerritConfig};
use firehose_gerrit::source::{self, Live};
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
        Settings come from --config (TOML: [publish] and [source] tables), then flags.",
    after_help = "Example:\n  firehose-gerrit --gerrit ssh://firehose@review.example.org \\\n    --ssh-key /etc/firehose/gerrit.key --broker mqtt://firehose-gerrit@127.0.0.1 \\\n    --password-file /etc/firehose/gerrit.pass --spool /var/lib/firehose/gerrit"
)]
struct Cli {
    /// TOML config file with [publish] and [source] tables.
    #[arg(long, env = "FIREHOSE_GERRIT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration and the files it names, then exit.
    #[arg(long)]
    check_config: bool,
    /// Publish the events of a JSON-lines file (or - for stdin) instead of
    /// connecting to Gerrit, then exit once all are delivered.
    #[arg(long, value_name = "FILE")]
    replay: Option<String>,
    #[command(flatten)]
    gerrit: GerritArgs,
    #[command(flatten)]
    publish: PublishArgs,
}

fn main() -> ExitCode {
    firehose_bridge::cli::init_logging("info,russh=warn");
    firehose_bridge::cli::exit("firehose-gerrit", run(Cli::parse()))
}

fn run(cli: Cli) -> Result<()> {
    let mut file: FileConfig<GerritConfig> = match &cli.config {
        Some(p) => load_file(p)?,
        None => FileConfig::default(),
    };
    file.publish.apply(&cli.publish);
    file.source.apply(&cli.gerrit);
    let publish = file.publish.resolve("gerrit")?;
    let src = file.source;

    let live = match &cli.replay {
        Some(_) => None,
        None => Some(live_source(&src)?),
    };
    if cli.check_config {
        println!(
            "firehose-gerrit: configuration OK (broker {}, {})",
            publish.url,
            match &live {
                Some(l) => format!("gerrit {}", l.target),
                None => "replay".to_owned(),
            }
        );
        return Ok(());
    }
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let bridge = Bridge::new("gerrit", env!("CARGO_PKG_VERSION"), publish);
    let max_line = src.max_line_bytes;
    rt.block_on(async move {
        match (live, cli.replay) {
            (Some(live), _) => bridge.run(move |ctx| source::live(ctx, live)).await,
            (None, Some(path)) => {
                let uri = match &src.gerrit {
                    Some(g) => g
                        .parse::<Target>()
                        .map(|t| t.source_uri())
                        .unwrap_or_else(|_| g.clone()),
                    None => format!("file:{path}"),
                };
                bridge
                    .run(move |ctx| source::replay(ctx, path, uri, max_line))
                    .await
            }
            (None, None) => Ok(()),
        }
    })?;
    Ok(())
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
