//! `firehose-subunit`: subcommands and flags; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use firehose_bridge::cli::{CommandExit, CommonArgs, Info, Plan};
use firehose_bridge::source::BoxError;
use firehose_bridge::BoxedSource;
use firehose_subunit::config::{SubunitArgs, SubunitConfig};
use firehose_subunit::direct::{File, Run};
use firehose_subunit::fetch::Fetcher;
use firehose_subunit::worker::Worker;

#[derive(Parser, Debug)]
#[command(
    name = "firehose-subunit",
    version,
    about = "Publish test results (subunit v2 streams) onto the Firehose MQTT bus",
    long_about = "Publish test results (subunit v2 streams) onto the Firehose MQTT bus.\n\n\
        One message per run, on gearman-subunit/<host>/<project>/<change> as the original \
        subunit2sql worker published it: in raw mode exactly its {\"status\", \"build_uuid\", \
        \"source_url\"}; in CloudEvents mode (subunit.run.success) with the counts by subunit \
        status (success, fail, skip, xfail, uxsuccess), the run's duration and each failure \
        with the tail of its traceback. A stream that is not subunit v2 is dead-lettered and \
        its run published as failed.\n\n\
        Logs go to stderr; FIREHOSE_LOG (e.g. debug) sets what is shown.",
    after_help = "Examples:\n  firehose-subunit run --broker mqtt://subunit@127.0.0.1 --password-file /etc/firehose/subunit.pass \\\n    --project openstack/nova --change 123456 -- stestr run\n\n  stestr last --subunit | firehose-subunit run --file - --project openstack/nova --change 123456 \\\n    --broker mqtt://subunit@127.0.0.1 --password-file /etc/firehose/subunit.pass"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Publish one run: a finished stream (--file PATH, - for stdin), or
    /// the results of a command run here (after `--`), exiting with the
    /// command's own exit code once the broker has the message.
    Run {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        subunit: SubunitArgs,
        /// A finished subunit v2 stream (- for standard input).
        #[arg(long, value_name = "PATH", conflicts_with = "command")]
        file: Option<String>,
        /// The test command and its arguments, after `--` (its standard
        /// output is the stream when it is subunit v2; for stestr, `stestr
        /// last --subunit` is read after it).
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// The original worker: take `push-subunit` jobs from Gearman, fetch
    /// each job's stream (source_url.gz, then source_url), publish its run
    /// and complete the job once the broker has it, until stopped.
    Worker {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        subunit: SubunitArgs,
        /// A Gearman server, HOST:PORT (repeatable; default port 4730).
        #[arg(long, value_name = "HOST:PORT")]
        gearman: Vec<String>,
    },
}

const INFO: Info = Info {
    name: "subunit",
    version: env!("CARGO_PKG_VERSION"),
    log: "info",
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = firehose_bridge::cli::init_logging(INFO.log) {
        eprintln!("firehose-subunit: {}", firehose::report::error_chain(&e));
        return ExitCode::from(2);
    }
    let (common, subunit, file, command) = match cli.cmd {
        Cmd::Worker {
            common,
            subunit,
            gearman,
        } => return worker(common, subunit, gearman),
        Cmd::Run {
            common,
            subunit,
            file,
            command,
        } => (common, subunit, file, command),
    };
    let exit = CommandExit::default();
    let exit2 = exit.clone();
    let r = firehose_bridge::cli::run(
        INFO,
        common,
        |mut cfg: SubunitConfig, publish| -> Result<_, BoxError> {
            cfg.apply(&subunit, publish.payload)?;
            let shape = cfg.shape();
            let max_bytes = cfg.max_stream_bytes;
            let source = match (file, command.is_empty()) {
            (Some(f), _) => {
                let path = (f != "-").then(|| PathBuf::from(&f));
                let url = subunit.source_url.clone().unwrap_or_else(|| match &path {
                    Some(p) => format!("file://{}", p.display()),
                    None => "file:///dev/stdin".into(),
                });
                BoxedSource::new(File {
                    path,
                    build: cfg.build(&subunit, url)?,
                    shape,
                    max_bytes,
                })
            }
            (None, false) => {
                let url = subunit
                    .source_url
                    .clone()
                    .unwrap_or_else(|| format!("exec:{}", command[0]));
                BoxedSource::new(Run {
                    build: cfg.build(&subunit, url)?,
                    command: command.clone(),
                    shape,
                    max_bytes,
                    exit: exit2,
                })
            }
            (None, true) => {
                return Err("give --file PATH (or - for stdin), or a command after --: firehose-subunit run [flags] -- stestr run".into())
            }
        };
            Ok(Plan {
                describe: "one run".into(),
                sources: vec![source],
            })
        },
    );
    firehose_bridge::cli::exit_as_command("firehose-subunit", r, exit.get())
}

/// `worker`: one source per Gearman server.
fn worker(common: CommonArgs, subunit: SubunitArgs, gearman: Vec<String>) -> ExitCode {
    let r = firehose_bridge::cli::run(
        INFO,
        common,
        |mut cfg: SubunitConfig, publish| -> Result<_, BoxError> {
            cfg.apply(&subunit, publish.payload)?;
            if !gearman.is_empty() {
                cfg.gearman = gearman;
            }
            if cfg.gearman.is_empty() {
                return Err("worker needs --gearman HOST:PORT (or gearman in [source])".into());
            }
            let fetcher = Fetcher::new(
                Duration::from_secs(cfg.fetch_timeout_secs),
                cfg.max_stream_bytes,
            )?;
            let fetcher = Arc::new(fetcher);
            let host = firehose_bridge::config::hostname();
            let servers: Vec<String> = cfg
                .gearman
                .iter()
                .map(|s| match s.rsplit_once(':') {
                    Some((_, port)) if port.parse::<u16>().is_ok() => s.clone(),
                    _ => format!("{s}:4730"),
                })
                .collect();
            Ok(Plan {
                describe: format!("gearman {}", servers.join(", ")),
                sources: servers
                    .into_iter()
                    .map(|server| Worker {
                        server,
                        topic_root: cfg.topic_root(),
                        shape: cfg.shape(),
                        fetcher: fetcher.clone(),
                        client_id: format!("{host}-pusher"),
                    })
                    .collect(),
            })
        },
    );
    firehose_bridge::cli::exit("firehose-subunit", r)
}
