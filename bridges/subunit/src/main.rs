//! `firehose-subunit`: subcommands and flags; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand};
use firehose_bridge::cli::{CommonArgs, Info, Plan};
use firehose_bridge::BoxedSource;
use firehose_subunit::config::{SubunitArgs, SubunitConfig};
use firehose_subunit::direct::{File, Run};

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
}

const INFO: Info = Info {
    name: "subunit",
    version: env!("CARGO_PKG_VERSION"),
    log: "info",
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = firehose_bridge::cli::init_logging(INFO.log) {
        eprintln!("firehose-subunit: {e}");
        return ExitCode::from(2);
    }
    let Cmd::Run {
        common,
        subunit,
        file,
        command,
    } = cli.cmd;
    let exit = Arc::new(Mutex::new(None));
    let exit2 = exit.clone();
    let r = firehose_bridge::cli::run(INFO, common, |mut cfg: SubunitConfig, _| {
        cfg.apply(&subunit)?;
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
                return Err("give --file PATH (or - for stdin), or a command after --: firehose-subunit run [flags] -- stestr run".to_owned())
            }
        };
        Ok::<_, String>(Plan {
            describe: "one run".into(),
            sources: vec![source],
        })
    });
    let code = *exit.lock().unwrap_or_else(|e| e.into_inner());
    match (r, code) {
        (Err(e), Some(code)) => {
            eprintln!("firehose-subunit: {e}");
            ExitCode::from(code.clamp(0, 255) as u8)
        }
        (Ok(()), Some(code)) => ExitCode::from(code.clamp(0, 255) as u8),
        (r, None) => firehose_bridge::cli::exit("firehose-subunit", r),
    }
}
