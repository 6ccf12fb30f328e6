//! The runtime's counters: what `/metrics` exports and the status message
//! carries. One instance per bridge process, shared by the source and the
//! publisher.

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
    /// up/down): name → labels → value.
    gauges: std::sync::Mutex<std::collections::BTreeMap<&'static str, Samples>>,
}

impl Stats {
    /// Sets a source's own gauge, exported as `firehose_bridge_<name>` with
    /// the bridge label and `labels`; `None` removes the sample (a thing that
    /// is gone, so no alert stays on it).
    pub fn set_gauge(&self, name: &'static str, labels: &[(&str, &str)], value: Option<i64>) {
        let rendered: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
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
        use firehose::metrics::{Exposition, Kind::*};
        let mut e = Exposition::new("firehose_bridge");
        let g = |a: &AtomicU64| a.load(Relaxed) as i64;
        let label = [("bridge", bridge)];
        for (name, kind, help, v) in [
            (
                "events_read_total",
                Counter,
                "Events read from the source.",
                g(&self.read),
            ),
            (
                "events_published_total",
                Counter,
                "Events the broker acknowledged.",
                g(&self.published),
            ),
            (
                "events_spooled",
                Gauge,
                "Events waiting in the spool.",
                self.pending.load(Relaxed),
            ),
            (
                "events_malformed_total",
                Counter,
                "Source input that was not an event (dead-lettered).",
                g(&self.malformed),
            ),
            (
                "events_dropped_total",
                Counter,
                "Events lost because the spool was full.",
                g(&self.dropped),
            ),
            (
                "events_rejected_total",
                Counter,
                "Events the broker refused (MQTT 5 reason code >= 0x80), dead-lettered.",
                g(&self.rejected),
            ),
            (
                "broker_reconnects_total",
                Counter,
                "Reconnections to the broker.",
                g(&self.broker_reconnects),
            ),
            (
                "source_reconnects_total",
                Counter,
                "Reconnections to the source.",
                g(&self.source_reconnects),
            ),
            (
                "broker_connected",
                Gauge,
                "1 while connected to the broker.",
                self.broker_connected.load(Relaxed),
            ),
            (
                "source_connected",
                Gauge,
                "1 while connected to the source.",
                self.source_connected.load(Relaxed),
            ),
        ] {
            e.family(name, kind, help);
            e.sample(name, &label, v);
        }
        let gauges = self.gauges.lock().unwrap_or_else(|e| e.into_inner());
        for (name, samples) in gauges.iter() {
            e.family(
                name,
                Gauge,
                "A source's own gauge, one sample per thing it watches.",
            );
            for (labels, v) in samples {
                let mut all = vec![("bridge", bridge)];
                all.extend(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                e.sample(name, &all, v);
            }
        }
        e.finish()
    }
}

/// One gauge's samples: labels → value.
type Samples = std::collections::BTreeMap<Vec<(String, String)>, i64>;
