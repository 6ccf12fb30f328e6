//! Counters of the ingester and the API, served as Prometheus text on
//! `/metrics`: what was stored, what was a duplicate, what was not an
//! event, how far behind the store is.

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
        use firehose::metrics::{Exposition, Kind::*};
        let mut e = Exposition::new("firehose_history");
        let l = |a: &AtomicU64| a.load(Relaxed);
        e.one("stored_total", Counter, "Events stored.", l(&self.stored));
        e.one(
            "duplicates_total",
            Counter,
            "Events received again (a redundant bridge, a redelivery): not stored twice.",
            l(&self.duplicates),
        );
        e.one(
            "not_events_total",
            Counter,
            "Messages stored that are not firehose events (not JSON, unknown topic family).",
            l(&self.not_events),
        );
        e.one(
            "batches_total",
            Counter,
            "Batches committed.",
            l(&self.batches),
        );
        e.one(
            "store_errors_total",
            Counter,
            "Batches the database refused; retried, nothing acknowledged meanwhile.",
            l(&self.store_errors),
        );
        e.one(
            "disconnects_total",
            Counter,
            "Connections to the broker lost.",
            l(&self.disconnects),
        );
        e.one(
            "broker_connected",
            Gauge,
            "1 while connected to the broker (subscribed with its persistent session).",
            l(&self.connected),
        );
        e.one(
            "lag_milliseconds",
            Gauge,
            "From the first event of the last batch arriving to its commit.",
            self.lag_ms.load(Relaxed),
        );
        e.one(
            "last_received_timestamp_seconds",
            Gauge,
            "When the last stored event was received (Unix time).",
            format_args!("{:.3}", self.last_received_ms.load(Relaxed) as f64 / 1000.0),
        );
        e.one(
            "store_bytes",
            Gauge,
            "The store's size at the last retention round (SQLite: pages in use; PostgreSQL: an estimate).",
            l(&self.store_bytes),
        );
        e.one(
            "requests_total",
            Counter,
            "API requests answered.",
            l(&self.requests),
        );
        e.one(
            "bad_requests_total",
            Counter,
            "API requests refused with 400.",
            l(&self.bad_requests),
        );
        e.family(
            "purged_total",
            Counter,
            "Events purged by retention, by reason.",
        );
        for (reason, n) in [("age", &self.purged_age), ("size", &self.purged_size)] {
            e.sample("purged_total", &[("reason", reason)], l(n));
        }
        e.finish()
    }
}
