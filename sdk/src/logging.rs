//! The log setup every Firehose program shares: to stderr, colored only on
//! a terminal, filtered by `FIREHOSE_LOG` (an `EnvFilter`: `debug`,
//! `info,firehose_broker::session=debug`). A `FIREHOSE_LOG` that does not
//! parse is an error, not silently ignored.

use std::io::IsTerminal;

/// A `FIREHOSE_LOG` that does not parse: names the variable and gives
/// examples (the parser's reason is its `source()`).
#[derive(Debug, thiserror::Error)]
#[error("FIREHOSE_LOG={spec:?} is not a valid log filter (e.g. FIREHOSE_LOG=debug or FIREHOSE_LOG=info,firehose_broker::session=debug)")]
pub struct LogFilterError {
    spec: String,
    source: tracing_subscriber::filter::ParseError,
}

/// Starts logging with `default` as the filter when `FIREHOSE_LOG` is not
/// set.
pub fn init(default: &str) -> Result<(), LogFilterError> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("FIREHOSE_LOG") {
        Ok(spec) => EnvFilter::try_new(&spec).map_err(|source| LogFilterError { spec, source })?,
        Err(_) => EnvFilter::new(default),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}
