//! A running firehose-history (tools/history): the history's own tests,
//! and the broker's and notify's that need one beside them.

use std::net::SocketAddr;
use std::process::Command;

use crate::process::{bin, poll, Proc, WAIT};

/// firehose-history, connected to its broker, its API's address known.
pub struct HistoryProc {
    pub proc_: Proc,
    pub http: SocketAddr,
}

impl HistoryProc {
    /// Starts firehose-history on `broker` (a URL), storing into `db`, its
    /// API on `http` (`127.0.0.1:0` for any port), plus `extra` flags; returns
    /// once its API listens and it is connected.
    pub fn start(broker: &str, db: &str, http: &str, extra: &[&str]) -> HistoryProc {
        let proc_ = Proc::spawn(
            "firehose-history",
            Command::new(bin("firehose-history"))
                .args(["--broker", broker, "--db", db, "--http", http])
                .args(extra)
                .env("FIREHOSE_LOG", "info"),
        );
        let http = poll(
            WAIT,
            || {
                let logs = proc_.logs();
                if logs.contains("firehose-history:") {
                    panic!("firehose-history failed:\n{logs}");
                }
                logs.lines()
                    .find(|l| l.contains("api listening"))
                    .and_then(|l| l.split("addr=").nth(1))
                    .and_then(|a| a.split_whitespace().next())
                    .and_then(|a| a.parse().ok())
            },
            || format!("firehose-history's api; logs:\n{}", proc_.logs()),
        );
        proc_.wait_log("connected");
        HistoryProc { proc_, http }
    }
}
