//! The runtime's counters: what `/metrics` exports and the status message
//! carries. One instance per bridge process, shared by the source and the
//! publisher.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Counters for one bridge.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events the source read.
    pub read: AtomicU64,
    /// Events the broker acknowledged.
    pub published: AtomicU64,
    /// Events waiting in the spool (gauge).
    pub pending: AtomicI64,
    /// Source input that was not an event (dead-lettered).
    pub malformed: AtomicU64,
    /// Events lost because the spool was full.
    pub dropped: AtomicU64,
    /// Events the broker refused (MQTT 5 PUBACK reason >= 0x80), dead-lettered.
    pub rejected: AtomicU64,
    /// Broker reconnections.
    pub broker_reconnects: AtomicU64,
    /// Source reconnections.
    pub source_reconnects: AtomicU64,
    /// 1 while connected to the broker.
    pub broker_connected: AtomicI64,
    /// 1 while connected to the source.
    pub source_connected: AtomicI64,
    /// When the source last read an event (Unix nanoseconds; 0: never).
    last_event_ns: AtomicI64,
    /// Gauges a source keeps per labelled thing (e.g. one nova service's
    /// up/down): name → rendered labels → value.
    gauges: std::sync::Mutex<
        std::collections::BTreeMap<&'static str, std::collections::BTreeMap<String, i64>>,
    >,
}

impl Stats {
    /// Sets a source's own gauge, exported as `firehose_bridge_<name>` with
    /// the bridge label and `labels`; `None` removes the sample (a thing that
    /// is gone, so no alert stays on it).
    pub fn set_gauge(&self, name: &'static str, labels: &[(&str, &str)], value: Option<i64>) {
        let rendered: String = labels
            .iter()
            .map(|(k, v)| format!(",{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        let mut g = self.gauges.lock().unwrap_or_else(|e| e.into_inner());
        let samples = g.entry(name).or_default();
        match value {
            Some(v) => {
                samples.insert(rendered, v);
            }
            None => {
                samples.remove(&rendered);
            }
        }
    }

    /// Counts one event read from the source. On every event's path, so
    /// two atomic stores; the time is formatted only for the status.
    pub fn event_read(&self) {
        self.read.fetch_add(1, Relaxed);
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        self.last_event_ns.store(now as i64, Relaxed);
    }

    /// When the last event was read (RFC 3339).
    pub fn last_event(&self) -> Option<String> {
        let ns = self.last_event_ns.load(Relaxed);
        (ns != 0)
            .then(|| time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128).ok())
            .flatten()
            .map(firehose::envelope::rfc3339)
    }

    /// Records whether the source is connected.
    pub fn set_source_connected(&self, up: bool) {
        self.source_connected.store(up as i64, Relaxed);
    }

    /// Snapshot for the status message.
    pub fn counters(&self) -> firehose::status::Counters {
        firehose::status::Counters {
            read: self.read.load(Relaxed),
            published: self.published.load(Relaxed),
            pending: self.pending.load(Relaxed).max(0) as u64,
            malformed: self.malformed.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            reconnects: self.broker_reconnects.load(Relaxed) + self.source_reconnects.load(Relaxed),
        }
    }

    /// Prometheus text exposition, every sample labelled with the bridge.
    pub fn prometheus(&self, bridge: &str) -> String {
        let mut s = String::new();
        let mut one = |name: &str, kind: &str, help: &str, labels: &str, v: i64| {
            let _ = writeln!(s, "# HELP firehose_bridge_{name} {help}");
            let _ = writeln!(s, "# TYPE firehose_bridge_{name} {kind}");
            let _ = writeln!(
                s,
                "firehose_bridge_{name}{{bridge=\"{bridge}\"{labels}}} {v}"
            );
        };
        let g = |a: &AtomicU64| a.load(Relaxed) as i64;
        one(
            "events_read_total",
            "counter",
            "Events read from the source.",
            "",
            g(&self.read),
        );
        one(
            "events_published_total",
            "counter",
            "Events the broker acknowledged.",
            "",
            g(&self.published),
        );
        one(
            "events_spooled",
            "gauge",
            "Events waiting in the spool.",
            "",
            self.pending.load(Relaxed),
        );
        one(
            "events_malformed_total",
            "counter",
            "Source input that was not an event (dead-lettered).",
            "",
            g(&self.malformed),
        );
        one(
            "events_dropped_total",
            "counter",
            "Events lost because the spool was full.",
            "",
            g(&self.dropped),
        );
        one(
            "events_rejected_total",
            "counter",
            "Events the broker refused (MQTT 5 reason code >= 0x80), dead-lettered.",
            "",
            g(&self.rejected),
        );
        one(
            "broker_reconnects_total",
            "counter",
            "Reconnections to the broker.",
            "",
            g(&self.broker_reconnects),
        );
        one(
            "source_reconnects_total",
            "counter",
            "Reconnections to the source.",
            "",
            g(&self.source_reconnects),
        );
        one(
            "broker_connected",
            "gauge",
            "1 while connected to the broker.",
            "",
            self.broker_connected.load(Relaxed),
        );
        one(
            "source_connected",
            "gauge",
            "1 while connected to the source.",
            "",
            self.source_connected.load(Relaxed),
        );
        let gauges = self.gauges.lock().unwrap_or_else(|e| e.into_inner());
        for (name, samples) in gauges.iter() {
            let _ = writeln!(s, "# TYPE firehose_bridge_{name} gauge");
            for (labels, v) in samples {
                let _ = writeln!(
                    s,
                    "firehose_bridge_{name}{{bridge=\"{bridge}\"{labels}}} {v}"
                );
            }
        }
        s
    }
}
