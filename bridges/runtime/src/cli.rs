//! The one `main` every bridge binary shares, so every bridge has the same
//! options with the same names and behaves the same way around its source:
//! logging through `FIREHOSE_LOG`, `--config FILE` (or
//! `FIREHOSE_<BRIDGE>_CONFIG`) with `[publish]` and `[source]` tables under
//! the flags, `--check-config`, `--print json|yaml`, and one line naming the
//! program and the whole error chain on failure.
//!
//! A bridge's own code is a closure from its `[source]` table (with its
//! flags applied) to a [`Plan`]: the sources to run.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::de::DeserializeOwned;

use crate::config::{load_file, FileConfig, Publish, PublishArgs};
use crate::print::PrintFormat;
use crate::runtime::Bridge;
use crate::source::{error_chain, BoxError, Source};

/// Options every bridge has.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CommonArgs {
    /// TOML config file with [publish] and [source] tables (default:
    /// $FIREHOSE_<BRIDGE>_CONFIG, e.g. FIREHOSE_NOVA_CONFIG). Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration and every file it names, then exit.
    #[arg(long)]
    pub check_config: bool,
    /// Print the normalized events to stdout (json or yaml) instead of
    /// publishing them; upstream input is acked as if delivered.
    #[arg(long, value_name = "FORMAT")]
    pub print: Option<PrintFormat>,
    #[command(flatten)]
    pub publish: PublishArgs,
}

/// `--replay`, for bridges whose input can be a JSON-lines file.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ReplayArgs {
    /// Publish the events of a JSON-lines file (or - for stdin) instead of
    /// reading the live source, then exit once all are delivered.
    #[arg(long, value_name = "FILE")]
    pub replay: Option<String>,
}

/// Who the bridge is.
#[derive(Debug, Clone, Copy)]
pub struct Info {
    /// `gerrit`, `nova`, ...: in topics, ids, metrics and messages.
    pub name: &'static str,
    pub version: &'static str,
    /// The log filter when `FIREHOSE_LOG` is unset, e.g. `info,russh=warn`.
    pub log: &'static str,
}

/// What a bridge's configuration comes to.
pub struct Plan<S> {
    pub sources: Vec<S>,
    /// What `--check-config` reports besides the broker, e.g. `gerrit ssh://...`.
    pub describe: String,
}

/// Logs to stderr: `FIREHOSE_LOG` if set (an error when it does not
/// parse), else `default`; colours only on a terminal.
pub fn init_logging(default: &str) -> Result<(), firehose::logging::LogFilterError> {
    firehose::logging::init(default)
}

/// Reads the config file (`--config`, else `FIREHOSE_<BRIDGE>_CONFIG`, else
/// none) and resolves the `[publish]` table with the flags applied.
pub fn load<C: DeserializeOwned + Default>(
    info: Info,
    common: &CommonArgs,
) -> Result<(FileConfig<C>, Publish), BoxError> {
    let var = format!("FIREHOSE_{}_CONFIG", info.name.to_uppercase());
    let path = common
        .config
        .clone()
        .or_else(|| std::env::var_os(&var).map(PathBuf::from));
    let mut file: FileConfig<C> = match &path {
        Some(p) => load_file(p)?,
        None => FileConfig::default(),
    };
    file.publish.apply(&common.publish);
    let publish = file.publish.resolve(info.name)?;
    Ok((file, publish))
}

/// The whole life of a bridge binary: returns its exit code.
pub fn main<C, S, F, E>(info: Info, common: CommonArgs, build: F) -> ExitCode
where
    C: DeserializeOwned + Default,
    S: Source,
    F: FnOnce(C, &Publish) -> Result<Plan<S>, E>,
    E: Into<BoxError>,
{
    let program = format!("firehose-{}", info.name);
    if let Err(e) = init_logging(info.log) {
        eprintln!("{program}: {}", error_chain(&e));
        return ExitCode::from(2);
    }
    exit(&program, run(info, common, build))
}

/// Loads the configuration, builds the plan, then checks it
/// (`--check-config`) or runs it to the end. Logging is the caller's.
pub fn run<C, S, F, E>(info: Info, common: CommonArgs, build: F) -> Result<(), BoxError>
where
    C: DeserializeOwned + Default,
    S: Source,
    F: FnOnce(C, &Publish) -> Result<Plan<S>, E>,
    E: Into<BoxError>,
{
    let (file, publish) = load::<C>(info, &common)?;
    let plan = build(file.source, &publish).map_err(Into::into)?;
    if common.check_config {
        println!(
            "firehose-{}: configuration OK (broker {}, {})",
            info.name, publish.url, plan.describe
        );
        return Ok(());
    }
    let rt =
        tokio::runtime::Runtime::new().map_err(|e| format!("starting the async runtime: {e}"))?;
    let mut bridge = Bridge::new(info.name, info.version, publish);
    if let Some(format) = common.print {
        bridge = bridge.print_only(format);
    }
    rt.block_on(bridge.run(plan.sources))?;
    Ok(())
}

/// The exit code for `result`, printing `program: error: cause: ...` on failure.
pub fn exit<E: Into<BoxError>>(program: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {}", error_chain(e.into().as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// The code a wrapped command's status stands for, as a shell gives it
/// (128 + the signal when it was killed).
pub fn command_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// A wrapped command's exit code (`run -- COMMAND`), shared by the source
/// that runs the command (it sets it, once) and the bridge's `main`
/// (which exits with it, see [`exit_as_command`]). A source that finds it
/// set has run its command already: a retry must not run it again.
#[derive(Debug, Clone, Default)]
pub struct CommandExit(std::sync::Arc<std::sync::Mutex<Option<i32>>>);

impl CommandExit {
    /// The code, once the command exited.
    pub fn get(&self) -> Option<i32> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records how the command exited; returns its code.
    pub fn set(&self, status: std::process::ExitStatus) -> i32 {
        let code = command_code(status);
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(code);
        code
    }
}

/// A wrapped command as program and arguments, or a fatal error showing
/// how to give one (`usage`, e.g. `firehose-subunit run [flags] -- stestr run`).
pub fn split_command<'a>(
    command: &'a [String],
    usage: &str,
) -> Result<(&'a String, &'a [String]), crate::SourceError> {
    command
        .split_first()
        .ok_or_else(|| crate::SourceError::Fatal {
            context: "run".into(),
            source: format!("no command: {usage}").into(),
        })
}

/// The exit of a bridge that wrapped a command (`run -- COMMAND`): the
/// command's own code once it ran, delivered or not (the runtime logged
/// what it could not deliver, and an error is printed); else the bridge's.
pub fn exit_as_command<E: Into<BoxError>>(
    program: &str,
    result: Result<(), E>,
    command: Option<i32>,
) -> ExitCode {
    match (result, command) {
        (Err(e), Some(code)) => {
            eprintln!("{program}: {}", error_chain(e.into().as_ref()));
            ExitCode::from(code.clamp(0, 255) as u8)
        }
        (Ok(()), Some(code)) => ExitCode::from(code.clamp(0, 255) as u8),
        (r, None) => exit(program, r),
    }
}
