//! `firehose-notify`: notifications from the Firehose, mqttwarn-style.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use firehose_notify::config::Config;
use firehose_notify::service::{self, Options};

#[derive(Parser, Debug)]
#[command(
    name = "firehose-notify",
    version,
    about = "Notifications from the Firehose: rules send templated messages to webhooks, mail, scripts, files and MQTT",
    long_about = "Notifications from the Firehose, mqttwarn-style.\n\n\
        Rules pick events by topic filter, event type (gerrit.comment-added, \
        nova.instance.update, ...) and a jq expression; render a message with a Jinja \
        template over the normalized event ({{ topic }}, {{ type }}, {{ subject }}, \
        {{ data.change.subject }}, {{ payload }}, {{ received }}); and hand it to named \
        targets: exec, webhook (Slack, Mattermost, Matrix presets), smtp, file, mqtt, log. \
        Each target has its own queue and retries; dedup and throttle keep redundant \
        bridges and bursts quiet.\n\n\
        SIGHUP reloads the file (a bad file keeps the running one and logs why). \
        SIGTERM delivers what is queued (--drain) and exits.",
    after_help = "Examples:\n  firehose-notify --config /etc/firehose/notify.toml\n  firehose-notify --config notify.toml --dry-run\n  firehose-notify import /etc/mqttwarn/mqttwarn.ini > notify.toml"
)]
struct Cli {
    /// The configuration file (TOML).
    #[arg(
        long,
        env = "FIREHOSE_NOTIFY_CONFIG",
        value_name = "FILE",
        global = true
    )]
    config: Option<PathBuf>,
    /// Check the file and exit: every rule and target is built (templates,
    /// jq expressions, target names, addresses, CA and password files),
    /// nothing is started or sent.
    #[arg(long)]
    check_config: bool,
    /// Print what would be sent, to whom, instead of sending.
    #[arg(long)]
    dry_run: bool,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9465).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// At exit, how long targets may take to deliver what is queued.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    drain: Duration,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Convert a mqttwarn.ini to a firehose-notify TOML file (on stdout).
    Import {
        /// The mqttwarn configuration.
        ini: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = firehose::logging::init("info") {
        eprintln!("firehose-notify: {}", firehose::report::error_chain(&e));
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "firehose-notify: {}",
                firehose::report::error_chain(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Import { ini }) = &cli.command {
        let text = std::fs::read_to_string(ini)
            .with_context(|| format!("cannot read {}", ini.display()))?;
        let toml = firehose_notify::import::convert(&text)
            .with_context(|| format!("{}", ini.display()))?;
        print!("{toml}");
        return Ok(());
    }
    let path = cli.config.clone().context(
        "no configuration: give --config FILE or set FIREHOSE_NOTIFY_CONFIG (see deploy/notify.toml)",
    )?;
    let cfg = Config::load(&path)?;
    if cli.check_config {
        firehose_notify::service::check(&cfg).with_context(|| format!("{}", path.display()))?;
        println!(
            "configuration OK: {} target(s), {} rule(s), broker {}",
            cfg.targets.len(),
            cfg.rules.len(),
            firehose::url::redact(&cfg.broker.url)
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("firehose-notify")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(service::run(
        cfg,
        Options {
            path,
            dry_run: cli.dry_run,
            metrics: cli.metrics,
            drain: cli.drain,
        },
    ))?;
    Ok(())
}
