//! Counters of the ingester and the API, served as Prometheus text on
//! `/metrics`: what was stored, what was a duplicate, what was not an
//! event, how far behind the store is.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Every counter; shared by the ingester and the HTTP server.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events stored.
    pub stored: AtomicU64,
    /// Events already stored (a redundant bridge's copy, a redelivery).
    pub duplicates: AtomicU64,
    /// Messages stored that are not firehose events.
    pub not_events: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Batches the database refused (retried: nothing is acknowledged
    /// before it is stored).
    pub store_errors: AtomicU64,
    /// Connections to the broker lost.
    pub disconnects: AtomicU64,
    /// 1 while connected to the broker.
    pub connected: AtomicU64,
    /// The received time of the last stored event, Unix ms.
    pub last_received_ms: AtomicI64,
    /// How long the last batch waited between its first event's arrival and
    /// its commit, ms.
    pub lag_ms: AtomicI64,
    /// API requests answered, and refused as malformed.
    pub requests: AtomicU64,
    pub bad_requests: AtomicU64,
    /// Events purged by age, and by the size cap.
    pub purged_age: AtomicU64,
    pub purged_size: AtomicU64,
    /// The store's size at the last retention round, bytes.
    pub store_bytes: AtomicU64,
    /// Woken after each committed batch: the streams read on.
    pub committed: tokio::sync::Notify,
}

impl Stats {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut c = |name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(out, "# HELP firehose_history_{name} {help}");
            let _ = writeln!(out, "# TYPE firehose_history_{name} {kind}");
            let _ = writeln!(out, "firehose_history_{name} {v}");
        };
        let l = |a: &AtomicU64| a.load(Relaxed).to_string();
        c("stored_total", "Events stored.", "counter", l(&self.stored));
        c(
            "duplicates_total",
            "Events received again (a redundant bridge, a redelivery): not stored twice.",
            "counter",
            l(&self.duplicates),
        );
        c(
            "not_events_total",
            "Messages stored that are not firehose events (not JSON, unknown topic family).",
            "counter",
            l(&self.not_events),
        );
        c(
            "batches_total",
            "Batches committed.",
            "counter",
            l(&self.batches),
        );
        c(
            "store_errors_total",
            "Batches the database refused; retried, nothing acknowledged meanwhile.",
            "counter",
            l(&self.store_errors),
        );
        c(
            "disconnects_total",
            "Connections to the broker lost.",
            "counter",
            l(&self.disconnects),
        );
        c(
            "broker_connected",
            "1 while connected to the broker (subscribed with its persistent session).",
            "gauge",
            l(&self.connected),
        );
        c(
            "lag_milliseconds",
            "From the first event of the last batch arriving to its commit.",
            "gauge",
            self.lag_ms.load(Relaxed).to_string(),
        );
        c(
            "last_received_timestamp_seconds",
            "When the last stored event was received (Unix time).",
            "gauge",
            format!("{:.3}", self.last_received_ms.load(Relaxed) as f64 / 1000.0),
        );
        c(
            "store_bytes",
            "The store's size at the last retention round (SQLite: pages in use; PostgreSQL: an estimate).",
            "gauge",
            l(&self.store_bytes),
        );
        c(
            "requests_total",
            "API requests answered.",
            "counter",
            l(&self.requests),
        );
        c(
            "bad_requests_total",
            "API requests refused with 400.",
            "counter",
            l(&self.bad_requests),
        );
        let _ = writeln!(
            out,
            "# HELP firehose_history_purged_total Events purged by retention, by reason."
        );
        let _ = writeln!(out, "# TYPE firehose_history_purged_total counter");
        for (reason, n) in [("age", &self.purged_age), ("size", &self.purged_size)] {
            let _ = writeln!(
                out,
                "firehose_history_purged_total{{reason=\"{reason}\"}} {}",
                l(n)
            );
        }
        out
    }
}
