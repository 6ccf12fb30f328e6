//! One run's results from its subunit stream: counts by subunit's status
//! names, the run's span, each finished test with its duration, and the
//! failures with their tracebacks cut to a size. Counted as subunit's
//! own `subunit-stats` counts (through testtools' stream decorator): a test
//! is each final status (`success`, `fail`, `skip`, `xfail`,
//! `uxsuccess`), of one test id on one route. Pure: no I/O, unit-tested.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::v2::{packets, ParseError, Status};

/// One finished test.
#[derive(Debug, Clone, PartialEq)]
pub struct TestResult {
    pub id: String,
    pub status: Status,
    /// From its `inprogress` to its result, when both carry a time.
    pub duration_s: Option<f64>,
    /// When it finished (seconds since the Unix epoch), when its result
    /// carries a time.
    pub finished: Option<f64>,
    /// Its attachments that explain a result (`traceback`, `reason`),
    /// each cut to the configured size; empty for a success.
    pub details: BTreeMap<String, String>,
    /// Whether an attachment was cut.
    pub truncated: bool,
}

/// The run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    /// Finished tests by status name (`success`, `fail`, ...).
    pub counts: BTreeMap<&'static str, u64>,
    /// Seconds since the Unix epoch of the first and last timestamps.
    pub first: Option<f64>,
    pub last: Option<f64>,
    /// Every finished test, in the order of their results.
    pub tests: Vec<TestResult>,
    pub tags: BTreeSet<String>,
}

impl Summary {
    /// Tests that finished.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// `fail` and `uxsuccess`: what makes a run fail (as stestr says).
    pub fn failed(&self) -> u64 {
        self.count(Status::Fail) + self.count(Status::UxSuccess)
    }

    pub fn count(&self, s: Status) -> u64 {
        self.counts.get(s.name()).copied().unwrap_or(0)
    }

    /// From the first timestamp to the last.
    pub fn duration_s(&self) -> Option<f64> {
        Some(self.last? - self.first?)
    }
}

/// What the stream holds that explains a result; other attachments
/// (stdout, stderr, logging) are not kept.
const DETAILS: &[&str] = &["traceback", "reason"];

#[derive(Default)]
struct Open {
    started: Option<f64>,
    details: BTreeMap<String, Vec<u8>>,
    truncated: bool,
}

/// Reads a whole stream. `cap` bounds each kept attachment, in bytes
/// (cut on a character boundary, the tail kept: a traceback's last lines
/// say what failed).
pub fn summarize(stream: &[u8], cap: usize) -> Result<Summary, ParseError> {
    let mut s = Summary::default();
    let mut open: HashMap<(Option<String>, String), Open> = HashMap::new();
    for p in packets(stream) {
        let p = p?;
        let at = p
            .timestamp
            .map(|(secs, ns)| f64::from(secs) + f64::from(ns) / 1e9);
        if let Some(t) = at {
            s.first = Some(s.first.map_or(t, |f| f.min(t)));
            s.last = Some(s.last.map_or(t, |l| l.max(t)));
        }
        s.tags.extend(p.tags.iter().map(|t| (*t).to_owned()));
        let Some(id) = p.test_id else { continue };
        let key = (p.route_code.map(str::to_owned), id.to_owned());
        let o = open.entry(key.clone()).or_default();
        if p.status == Status::InProgress {
            o.started = at.or(o.started);
        }
        if let Some(f) = &p.file {
            if DETAILS.contains(&f.name) {
                let kept = o.details.entry(f.name.to_owned()).or_default();
                kept.extend_from_slice(f.bytes);
                if kept.len() > cap {
                    kept.drain(..kept.len() - cap);
                    o.truncated = true;
                }
            }
        }
        if p.status.is_final() {
            let o = open.remove(&key).unwrap_or_default();
            *s.counts.entry(p.status.name()).or_default() += 1;
            s.tests.push(TestResult {
                id: id.to_owned(),
                status: p.status,
                duration_s: match (o.started, at) {
                    (Some(a), Some(b)) if b >= a => Some(b - a),
                    _ => None,
                },
                finished: at,
                details: if p.status == Status::Success {
                    BTreeMap::new()
                } else {
                    o.details
                        .into_iter()
                        .map(|(k, v)| (k, text_tail(&v)))
                        .collect()
                },
                truncated: o.truncated,
            });
        }
    }
    Ok(s)
}

/// Bytes as text, from the first whole character (a cut may have split
/// one at the start).
fn text_tail(b: &[u8]) -> String {
    let start = (0..b.len().min(4))
        .find(|&i| b[i] & 0xC0 != 0x80)
        .unwrap_or(0);
    String::from_utf8_lossy(&b[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v2::{write, File, Packet};

    fn p(id: &'static str, status: Status, secs: u32) -> Packet<'static> {
        Packet {
            status,
            test_id: Some(id),
            timestamp: Some((secs, 500_000_000)),
            tags: vec![],
            mime_type: None,
            file: None,
            route_code: None,
            runnable: true,
        }
    }

    #[test]
    fn a_run_is_counted_timed_and_its_failures_kept() {
        let mut tb = p("t.fails", Status::Undefined, 12);
        tb.file = Some(File {
            name: "traceback",
            bytes: "Traceback (most recent call last):\n  ...\nAssertionError: 1 != 2 é\n"
                .as_bytes(),
            eof: true,
        });
        let mut out = p("t.fails", Status::Undefined, 12);
        out.file = Some(File {
            name: "stdout",
            bytes: b"noise",
            eof: true,
        });
        let mut reason = p("t.skipped", Status::Undefined, 13);
        reason.file = Some(File {
            name: "reason",
            bytes: b"not on this platform",
            eof: true,
        });
        let stream: Vec<u8> = [
            p("t.ok", Status::Exists, 9),
            p("t.ok", Status::InProgress, 10),
            p("t.ok", Status::Success, 11),
            p("t.fails", Status::InProgress, 11),
            tb,
            out,
            p("t.fails", Status::Fail, 12),
            p("t.skipped", Status::InProgress, 13),
            reason,
            p("t.skipped", Status::Skip, 13),
        ]
        .iter()
        .flat_map(write::packet)
        .collect();
        let s = summarize(&stream, 30).unwrap();
        assert_eq!(s.total(), 3);
        assert_eq!(s.count(Status::Success), 1);
        assert_eq!(s.count(Status::Fail), 1);
        assert_eq!(s.count(Status::Skip), 1);
        assert_eq!(s.failed(), 1);
        assert_eq!(s.duration_s(), Some(4.0));
        let fail = &s.tests[1];
        assert_eq!(fail.id, "t.fails");
        assert_eq!(fail.duration_s, Some(1.0));
        assert!(fail.truncated);
        let tb = &fail.details["traceback"];
        assert!(tb.ends_with("AssertionError: 1 != 2 é\n"), "{tb:?}");
        assert!(tb.len() <= 30);
        assert!(!fail.details.contains_key("stdout"));
        assert_eq!(s.tests[2].details["reason"], "not on this platform");
        assert!(s.tests[0].details.is_empty());
    }
}
