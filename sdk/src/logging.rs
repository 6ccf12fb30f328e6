//! The log setup every Firehose program shares: to stderr, colored only on
//! a terminal, filtered by `FIREHOSE_LOG` (an `EnvFilter`: `debug`,
//! `info,firehose_broker::session=debug`). A `FIREHOSE_LOG` that does not
//! parse is an error, not silently ignored.

use std::io::IsTerminal;

/// Starts logging with `default` as the filter when `FIREHOSE_LOG` is not
/// set. The error names the variable and gives examples.
pub fn init(default: &str) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("FIREHOSE_LOG") {
        Ok(spec) => EnvFilter::try_new(&spec).map_err(|e| {
            format!("FIREHOSE_LOG={spec:?} is not a valid log filter ({e}); e.g. FIREHOSE_LOG=debug or FIREHOSE_LOG=info,firehose_broker::session=debug")
        })?,
        Err(_) => EnvFilter::new(default),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}
