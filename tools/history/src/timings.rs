//! StackTach's timings: how long each operation took, from the events that
//! open and close it for one subject. Pure (events in, figures out),
//! unit-tested.
//!
//! - nova: `<op>.start` → `<op>.end` of one instance (`instance.create`,
//!   `compute.instance.resize`, ...);
//! - ansible: `ansible.play.start` → `ansible.playbook.finish` of one
//!   playbook run;
//! - gerrit: a change's first `patchset-created` → its `change-merged`,
//!   per project (`gerrit.change <project>`).
//!
//! An end without a start (the start is older than the window), or a start
//! still open, is not a timing; a second start before the end restarts it.

use std::collections::HashMap;

use serde::Serialize;

/// One event, as far as timings care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub kind: String,
    /// The instance, playbook or change it is about.
    pub key: Option<String>,
    pub project: Option<String>,
    /// The event's own time, Unix ms.
    pub time_ms: Option<i64>,
}

/// Whether an event opens or closes an operation, and which.
fn phase(m: &Mark) -> Option<(String, bool)> {
    let k = m.kind.as_str();
    if k == "ansible.play.start" {
        return Some(("ansible.playbook".into(), true));
    }
    if k == "ansible.playbook.finish" {
        return Some(("ansible.playbook".into(), false));
    }
    if k == "gerrit.patchset-created" || k == "gerrit.change-merged" {
        let op = format!("gerrit.change {}", m.project.as_deref().unwrap_or("?"));
        return Some((op, k == "gerrit.patchset-created"));
    }
    if !k.starts_with("nova.") {
        return None;
    }
    if let Some(op) = k.strip_suffix(".start") {
        return Some((op.to_owned(), true));
    }
    k.strip_suffix(".end").map(|op| (op.to_owned(), false))
}

/// The figures of one operation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timing {
    pub operation: String,
    pub count: usize,
    pub min_ms: i64,
    pub p50_ms: i64,
    pub p95_ms: i64,
    pub max_ms: i64,
    pub mean_ms: f64,
    /// The slowest subjects, slowest first: (subject, ms).
    pub slowest: Vec<Slow>,
}

/// One slow subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slow {
    pub subject: String,
    pub ms: i64,
}

/// How many slowest subjects each timing lists.
pub const SLOWEST: usize = 5;

fn percentile(sorted: &[i64], p: f64) -> i64 {
    // Nearest rank.
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The timings of `marks` (in any order), one per operation, sorted by
/// operation.
pub fn timings(marks: &[Mark]) -> Vec<Timing> {
    let mut ordered: Vec<&Mark> = marks.iter().filter(|m| m.time_ms.is_some()).collect();
    ordered.sort_by_key(|m| m.time_ms);
    let mut open: HashMap<(String, String), i64> = HashMap::new();
    let mut done: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for m in ordered {
        let (Some((op, start)), Some(key), Some(t)) = (phase(m), m.key.clone(), m.time_ms) else {
            continue;
        };
        let slot = (op.clone(), key.clone());
        if start {
            // gerrit: the first patchset counts; nova/ansible: the latest start.
            if op.starts_with("gerrit.") {
                open.entry(slot).or_insert(t);
            } else {
                open.insert(slot, t);
            }
        } else if let Some(t0) = open.remove(&slot) {
            done.entry(op).or_default().push((key, t - t0));
        }
    }
    let mut out: Vec<Timing> = done
        .into_iter()
        .map(|(operation, mut runs)| {
            let mut ms: Vec<i64> = runs.iter().map(|r| r.1).collect();
            ms.sort_unstable();
            runs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            Timing {
                operation,
                count: ms.len(),
                min_ms: ms[0],
                p50_ms: percentile(&ms, 0.5),
                p95_ms: percentile(&ms, 0.95),
                max_ms: ms[ms.len() - 1],
                mean_ms: ms.iter().sum::<i64>() as f64 / ms.len() as f64,
                slowest: runs
                    .into_iter()
                    .take(SLOWEST)
                    .map(|(subject, ms)| Slow { subject, ms })
                    .collect(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.operation.cmp(&b.operation));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: &str, key: &str, t: i64) -> Mark {
        Mark {
            kind: kind.into(),
            key: Some(key.into()),
            project: Some("openstack/nova".into()),
            time_ms: Some(t),
        }
    }

    #[test]
    fn starts_and_ends_of_one_subject_make_a_timing() {
        let marks = [
            m("nova.instance.create.start", "a", 1_000),
            m("nova.instance.create.end", "a", 4_000),
            m("nova.instance.create.start", "b", 2_000),
            m("nova.instance.create.end", "b", 12_000),
            m("nova.instance.create.end", "orphan", 5_000),
            m("nova.instance.create.start", "still-open", 6_000),
            m("nova.instance.delete.start", "a", 20_000),
            m("nova.instance.delete.end", "a", 20_500),
            m("gerrit.patchset-created", "12", 0),
            m("gerrit.patchset-created", "12", 50_000),
            m("gerrit.change-merged", "12", 100_000),
            m("ansible.play.start", "p", 10),
            m("ansible.playbook.finish", "p", 70),
            m("gerrit.comment-added", "12", 1),
        ];
        let t = timings(&marks);
        let ops: Vec<&str> = t.iter().map(|t| t.operation.as_str()).collect();
        assert_eq!(
            ops,
            [
                "ansible.playbook",
                "gerrit.change openstack/nova",
                "nova.instance.create",
                "nova.instance.delete"
            ]
        );
        let create = &t[2];
        assert_eq!(create.count, 2);
        assert_eq!((create.min_ms, create.max_ms), (3_000, 10_000));
        assert_eq!((create.p50_ms, create.p95_ms), (3_000, 10_000));
        assert_eq!(create.mean_ms, 6_500.0);
        assert_eq!(
            create.slowest[0],
            Slow {
                subject: "b".into(),
                ms: 10_000
            }
        );
        assert_eq!(t[1].max_ms, 100_000, "from the first patchset");
        assert_eq!(t[0].max_ms, 60);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.95), 95);
        assert_eq!(percentile(&[7], 0.95), 7);
    }
}
