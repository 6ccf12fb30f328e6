//! What notify has done, per rule and per target, for `--metrics`
//! (Prometheus text) and the log.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// One rule's counts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RuleCounters {
    /// Events that became notifications.
    pub matched: u64,
    /// Events dropped as a repeat of one seen within the dedup window.
    pub deduped: u64,
    /// Events held back by the throttle (summarized later).
    pub throttled: u64,
    /// Summaries sent at the end of a throttle window.
    pub summaries: u64,
}

/// One target's counts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TargetCounters {
    /// Delivered.
    pub sent: u64,
    /// Given up after every attempt failed.
    pub failed: u64,
    /// Attempts that failed and were tried again.
    pub retried: u64,
    /// Dropped from a full queue (the oldest goes).
    pub dropped: u64,
}

/// Every counter.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages read from the broker.
    pub events: AtomicU64,
    rules: Mutex<BTreeMap<String, RuleCounters>>,
    targets: Mutex<BTreeMap<String, TargetCounters>>,
}

impl Stats {
    /// Counters for these targets (rules register as they are compiled).
    pub fn new(targets: &[String]) -> Stats {
        let s = Stats::default();
        for t in targets {
            s.count_target(t, |_| {});
        }
        s
    }

    /// Registers a rule (so it shows with zeros).
    pub fn rule(&self, name: &str) {
        self.count_rule(name, |_| {});
    }

    pub fn count_rule(&self, name: &str, f: impl FnOnce(&mut RuleCounters)) {
        let mut m = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        f(m.entry(name.to_owned()).or_default());
    }

    pub fn count_target(&self, name: &str, f: impl FnOnce(&mut TargetCounters)) {
        let mut m = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        f(m.entry(name.to_owned()).or_default());
    }

    pub fn rule_counters(&self, name: &str) -> RuleCounters {
        let m = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        m.get(name).cloned().unwrap_or_default()
    }

    pub fn target_counters(&self, name: &str) -> TargetCounters {
        let m = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        m.get(name).cloned().unwrap_or_default()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        use firehose::metrics::{Exposition, Kind::Counter};
        let mut e = Exposition::new("firehose_notify");
        e.one(
            "events_total",
            Counter,
            "Messages read from the broker.",
            self.events.load(Relaxed),
        );
        let rules = self.rules.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let targets = self
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let rule_metrics: [Metric<RuleCounters>; 4] = [
            ("matched", "Events that became notifications.", |c| {
                c.matched
            }),
            (
                "deduped",
                "Events dropped as repeats within the dedup window.",
                |c| c.deduped,
            ),
            ("throttled", "Events held back by the throttle.", |c| {
                c.throttled
            }),
            ("summaries", "Throttle summaries sent.", |c| c.summaries),
        ];
        for (name, help, get) in rule_metrics {
            let name = format!("rule_{name}_total");
            e.family(&name, Counter, help);
            for (rule, c) in &rules {
                e.sample(&name, &[("rule", rule)], get(c));
            }
        }
        let target_metrics: [Metric<TargetCounters>; 4] = [
            ("sent", "Notifications delivered.", |c| c.sent),
            (
                "failed",
                "Notifications given up after every attempt.",
                |c| c.failed,
            ),
            ("retried", "Attempts that failed and were retried.", |c| {
                c.retried
            }),
            ("dropped", "Notifications dropped from a full queue.", |c| {
                c.dropped
            }),
        ];
        for (name, help, get) in target_metrics {
            let name = format!("target_{name}_total");
            e.family(&name, Counter, help);
            for (target, c) in &targets {
                e.sample(&name, &[("target", target)], get(c));
            }
        }
        e.finish()
    }
}

/// A metric: its name, its help, and how to read it from the counters.
type Metric<C> = (&'static str, &'static str, fn(&C) -> u64);
