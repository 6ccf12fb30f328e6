//! Test results: what `firehose-subunit` publishes for one processed
//! subunit stream, the message the original `gearman-subunit` worker
//! sent after it stored a run (`docs/subunit.md` in the repository).
//!
//! | | |
//! |---|---|
//! | topic | `<base>/<project>/<change>`, the base `gearman-subunit/<worker host>` unless configured |
//! | raw payload | `{"status": "success" \| "failed", "build_uuid": ..., "source_url": ...}` (Python's `json.dumps` spacing) |
//! | CloudEvents type | `subunit.run.success`, `subunit.run.failed` |
//! | CloudEvents data | the raw fields, the build's fields, `counts` by subunit status name, `tests`, `duration_s`, `failures` |
//! | per-test topic | `<run topic>/tests/<subunit status>` (CloudEvents only, when the bridge runs with `--per-test`) |
//! | per-test type | `subunit.test.fail`, `subunit.test.success`, ... with `test_id`, `duration_s`, `details` |
//!
//! `failed` means the stream could not be stored (fetched, read) in the
//! original; a run whose tests failed is still `success` there, and its
//! `counts` say how the tests went.

use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::envelope::stable_id;
use crate::{CloudEvent, Publishable};

/// The first topic level of the original worker's messages.
pub const FAMILY: &str = "gearman-subunit";

/// Whether the stream was processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// The stream was read (its tests may still have failed: see `counts`).
    Success,
    /// The stream could not be fetched or read.
    Failed,
}

impl RunStatus {
    /// `success` or `failed`, as the original wrote it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Success => "success",
            RunStatus::Failed => "failed",
        }
    }

    /// CloudEvents `type`: `subunit.run.success`, `subunit.run.failed`.
    pub fn kind(self) -> &'static str {
        match self {
            RunStatus::Success => "subunit.run.success",
            RunStatus::Failed => "subunit.run.failed",
        }
    }

    fn parse(s: &str) -> Option<RunStatus> {
        match s {
            "success" => Some(RunStatus::Success),
            "failed" => Some(RunStatus::Failed),
            _ => None,
        }
    }
}

/// One processed stream.
#[derive(Debug, Clone, PartialEq)]
pub struct SubunitRun {
    /// The topic's levels before the project (`gearman-subunit/<host>`).
    pub base: String,
    /// `openstack/nova` (its slashes are topic levels).
    pub project: String,
    /// The change number (`build_change`).
    pub change: String,
    /// Whether the stream was processed.
    pub status: RunStatus,
    /// The build's uuid (Zuul's), as the job gave it.
    pub build_uuid: String,
    /// Where the stream was fetched from.
    pub source_url: String,
    /// The build's own fields (`build_name`, `build_queue`, `log_url`, ...)
    /// as the job gave them.
    pub fields: Map<String, Value>,
    /// What the stream said (`counts`, `tests`, `duration_s`,
    /// `failures`), when it could be read.
    pub summary: Option<Map<String, Value>>,
}

/// Python's `json.dumps` of one string: JSON with non-ASCII escaped.
fn py_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl SubunitRun {
    /// The CloudEvents id: the same for the same job done again (a retried
    /// job, a second worker), so history keeps it once.
    pub fn id(&self) -> String {
        run_id(&self.topic(), &self.raw())
    }
}

/// A run's id, of its topic (from the family's first level on, so the same
/// under any `--base-topic`) and its raw payload: what the bridge gives in
/// CloudEvents mode and the reader computes for a raw payload.
pub(crate) fn run_id(topic: &str, raw: &[u8]) -> String {
    stable_id("subunit", &[topic.as_bytes(), b"\0", raw].concat())
}

/// A raw payload read back by its topic levels (from the family's first
/// level on: `gearman-subunit/<host>/<project...>/<change>`): the
/// attributes the bridge gives in CloudEvents mode, and the run.
pub(crate) fn read_raw(
    levels: &[&str],
    raw: &[u8],
    data: &Value,
) -> Result<(crate::envelope::Attributes, PublishedRun), &'static str> {
    if levels.len() < 4 {
        return Err("not a gearman-subunit/<host>/<project>/<change> topic");
    }
    let run = PublishedRun::from_value(data).ok_or("gearman-subunit payload without a status")?;
    let attrs = crate::envelope::Attributes {
        kind: run.status.kind().to_owned(),
        id: Some(run_id(&levels.join("/"), raw)),
        subject: levels.last().map(|c| (*c).to_owned()),
        time: None,
    };
    Ok((attrs, run))
}

impl Publishable for SubunitRun {
    fn topic(&self) -> String {
        format!("{}/{}/{}", self.base, self.project, self.change)
    }

    fn raw(&self) -> Vec<u8> {
        format!(
            "{{\"status\": {}, \"build_uuid\": {}, \"source_url\": {}}}",
            py_str(self.status.as_str()),
            py_str(&self.build_uuid),
            py_str(&self.source_url)
        )
        .into_bytes()
    }

    fn cloudevent(&self, source: &str, received: OffsetDateTime) -> CloudEvent {
        let mut data = Map::new();
        data.insert("status".into(), json!(self.status.as_str()));
        data.insert("build_uuid".into(), json!(self.build_uuid));
        data.insert("source_url".into(), json!(self.source_url));
        data.insert("project".into(), json!(self.project));
        data.insert("build_change".into(), json!(self.change));
        data.insert("build".into(), Value::Object(self.fields.clone()));
        if let Some(s) = &self.summary {
            data.extend(s.clone());
        }
        let data = serde_json::value::to_raw_value(&data).expect("a JSON map always serializes");
        CloudEvent::new(
            self.id(),
            source,
            self.status.kind().to_owned(),
            received,
            Some(self.change.clone()),
            data,
        )
    }
}

/// One finished test of a run: published beside its run when the bridge
/// is asked for per-test events (`--per-test failures|all`), so a reader
/// can follow one test across builds without unpacking run summaries. The
/// original published no such message: it exists in CloudEvents mode only
/// (its raw form is its `data`).
#[derive(Debug, Clone, PartialEq)]
pub struct SubunitTest {
    /// The run's topic levels before the project.
    pub base: String,
    /// The run's project.
    pub project: String,
    /// The run's change.
    pub change: String,
    /// The run's build uuid.
    pub build_uuid: String,
    /// The run message's id ([`SubunitRun::id`]).
    pub run_id: String,
    /// Its place among the run's finished tests (a test id may finish
    /// more than once, on several workers).
    pub index: usize,
    /// The test id (`nova.tests.unit.test_x.TestX.test_y`).
    pub test_id: String,
    /// Subunit's status name: `success`, `fail`, `skip`, `xfail`,
    /// `uxsuccess`.
    pub status: String,
    /// From its start to its result, when both carry a time.
    pub duration_s: Option<f64>,
    /// When it finished, seconds since the Unix epoch, when the stream says.
    pub finished: Option<f64>,
    /// The attachments that explain the result (`traceback`, `reason`),
    /// each cut to the bridge's `--traceback-bytes` (its tail).
    pub details: Map<String, Value>,
    /// Whether an attachment was cut.
    pub truncated: bool,
}

impl SubunitTest {
    fn data(&self) -> Value {
        json!({
            "test_id": self.test_id,
            "status": self.status,
            "duration_s": self.duration_s,
            "details": self.details,
            "truncated": self.truncated,
            "build_uuid": self.build_uuid,
            "project": self.project,
            "build_change": self.change,
            "run_id": self.run_id,
        })
    }
}

impl Publishable for SubunitTest {
    fn topic(&self) -> String {
        format!(
            "{}/{}/{}/tests/{}",
            self.base, self.project, self.change, self.status
        )
    }

    fn raw(&self) -> Vec<u8> {
        self.data().to_string().into_bytes()
    }

    fn cloudevent(&self, source: &str, received: OffsetDateTime) -> CloudEvent {
        let id = stable_id(
            "subunit-test",
            format!("{}\0{}\0{}", self.run_id, self.index, self.test_id).as_bytes(),
        );
        let time = self
            .finished
            .and_then(crate::envelope::unix_seconds)
            .unwrap_or(received);
        let data =
            serde_json::value::to_raw_value(&self.data()).expect("a JSON value always serializes");
        CloudEvent::new(
            id,
            source,
            format!("subunit.test.{}", self.status),
            time,
            Some(self.change.clone()),
            data,
        )
    }
}

/// A published test as a reader gets it.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedTest {
    /// The test id.
    pub test_id: String,
    /// Subunit's status name.
    pub status: String,
    /// The whole `data`: `duration_s`, `details`, the run's fields.
    pub value: Value,
}

impl PublishedTest {
    /// Reads `data`; `None` when it is not a test.
    pub fn from_value(v: &Value) -> Option<PublishedTest> {
        Some(PublishedTest {
            test_id: v.get("test_id")?.as_str()?.to_owned(),
            status: v.get("status")?.as_str()?.to_owned(),
            value: v.clone(),
        })
    }

    /// Its traceback, when it kept one.
    pub fn traceback(&self) -> Option<&str> {
        self.value.get("details")?.get("traceback")?.as_str()
    }
}

/// A published run as a reader gets it, from either payload mode.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedRun {
    /// Whether the stream was processed.
    pub status: RunStatus,
    /// The build's uuid.
    pub build_uuid: Option<String>,
    /// Where the stream was fetched from.
    pub source_url: Option<String>,
    /// The whole payload (raw) or `data` (CloudEvents): `counts` and the
    /// rest when the bridge ran in CloudEvents mode.
    pub value: Value,
}

impl PublishedRun {
    /// Reads a payload's fields; `None` when it is not a run.
    pub fn from_value(v: &Value) -> Option<PublishedRun> {
        let status = RunStatus::parse(v.get("status")?.as_str()?)?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(PublishedRun {
            status,
            build_uuid: s("build_uuid"),
            source_url: s("source_url"),
            value: v.clone(),
        })
    }

    /// Finished tests with this subunit status (`fail`, `skip`, ...), when
    /// the payload counts them (CloudEvents mode).
    pub fn count(&self, status: &str) -> Option<u64> {
        self.value.get("counts")?.get(status)?.as_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> SubunitRun {
        SubunitRun {
            base: "gearman-subunit/worker-1".into(),
            project: "openstack/nova".into(),
            change: "123456".into(),
            status: RunStatus::Success,
            build_uuid: "5f0c".into(),
            source_url:
                "https://logs.example.org/56/123456/1/check/tempest/5f0c/testrepository.subunit"
                    .into(),
            fields: Map::new(),
            summary: Some(
                json!({"counts": {"success": 3, "fail": 1}})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
        }
    }

    #[test]
    fn the_raw_payload_is_the_originals_byte_for_byte() {
        let r = run();
        assert_eq!(r.topic(), "gearman-subunit/worker-1/openstack/nova/123456");
        assert_eq!(
            String::from_utf8(r.raw()).unwrap(),
            r#"{"status": "success", "build_uuid": "5f0c", "source_url": "https://logs.example.org/56/123456/1/check/tempest/5f0c/testrepository.subunit"}"#
        );
        assert_eq!(py_str("é\"\n"), r#""\u00e9\"\n""#);
    }

    #[test]
    fn the_cloudevent_carries_the_counts_and_reads_back() {
        let r = run();
        let ce = r.cloudevent("gearman://127.0.0.1:4730", OffsetDateTime::UNIX_EPOCH);
        assert_eq!(ce.kind, "subunit.run.success");
        assert_eq!(ce.subject.as_deref(), Some("123456"));
        assert_eq!(ce.id, r.id());
        let data: Value = serde_json::from_str(ce.data.get()).unwrap();
        let p = PublishedRun::from_value(&data).unwrap();
        assert_eq!(p.count("fail"), Some(1));
        assert_eq!(p.build_uuid.as_deref(), Some("5f0c"));
        let raw: Value = serde_json::from_slice(&r.raw()).unwrap();
        assert_eq!(PublishedRun::from_value(&raw).unwrap().count("fail"), None);
    }

    #[test]
    fn a_reader_gets_the_same_event_from_either_payload_mode() {
        use crate::reader::{decode, Body};
        let r = run();
        let raw = decode(&format!("prod/{}", r.topic()), &r.raw(), false);
        let ce = r.cloudevent("gearman://127.0.0.1:4730", OffsetDateTime::UNIX_EPOCH);
        let cloud = decode(&r.topic(), &ce.to_json(), false);
        for ev in [&raw, &cloud] {
            assert_eq!(ev.kind, "subunit.run.success");
            assert_eq!(ev.subject.as_deref(), Some("123456"));
            assert_eq!(
                ev.id.as_deref(),
                Some(r.id().as_str()),
                "one id in both modes"
            );
            assert!(matches!(&ev.body, Body::Subunit(p) if p.status == RunStatus::Success));
        }
        let broken = decode("gearman-subunit/w/openstack/nova/1", b"{\"x\": 1}", false);
        assert!(matches!(broken.body, Body::Other { reason: Some(_) }));
    }

    #[test]
    fn a_test_event_reads_back_typed_with_its_traceback() {
        use crate::reader::{decode, Body};
        let r = run();
        let t = SubunitTest {
            base: r.base.clone(),
            project: r.project.clone(),
            change: r.change.clone(),
            build_uuid: r.build_uuid.clone(),
            run_id: r.id(),
            index: 3,
            test_id: "nova.tests.unit.test_x.TestX.test_y".into(),
            status: "fail".into(),
            duration_s: Some(0.25),
            finished: Some(1_700_000_000.5),
            details: json!({"traceback": "AssertionError: 1 != 2"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            truncated: false,
        };
        assert_eq!(
            t.topic(),
            "gearman-subunit/worker-1/openstack/nova/123456/tests/fail"
        );
        let ce = t.cloudevent("gearman://127.0.0.1:4730", OffsetDateTime::UNIX_EPOCH);
        let ev = decode(&t.topic(), &ce.to_json(), false);
        assert_eq!(ev.kind, "subunit.test.fail");
        assert_eq!(ev.subject.as_deref(), Some("123456"));
        assert_eq!(ev.time.as_deref(), Some("2023-11-14T22:13:20.5Z"));
        match &ev.body {
            Body::SubunitTest(p) => {
                assert_eq!(p.test_id, "nova.tests.unit.test_x.TestX.test_y");
                assert_eq!(p.traceback(), Some("AssertionError: 1 != 2"));
            }
            other => panic!("not a test: {other:?}"),
        }
        let again = SubunitTest {
            index: 4,
            ..t.clone()
        };
        assert_ne!(
            again.cloudevent("x", OffsetDateTime::UNIX_EPOCH).id,
            ce.id,
            "a test that ran twice is two events"
        );
    }
}
