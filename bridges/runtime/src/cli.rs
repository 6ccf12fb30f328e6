//! What every bridge binary does the same way around its own `run`: logs
//! to stderr through `FIREHOSE_LOG` (an `EnvFilter`), and one line naming
//! the program and the whole error chain on failure.

use std::io::IsTerminal;
use std::process::ExitCode;

/// Logs to stderr: `FIREHOSE_LOG` if set, else `default` (e.g.
/// `"info,russh=warn"`); colours only on a terminal.
pub fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FIREHOSE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// The exit code for `result`, printing `program: error: cause: ...` on failure.
pub fn exit<E: std::fmt::Display>(program: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
