//! Zuul's reports: what Zuul's own MQTT reporter publishes, one message per
//! pipeline item report (`start`, `success`, `failure`, `merge-conflict`,
//! ...), read into one typed [`ZuulReport`] whatever the Zuul version.
//!
//! No bridge is involved: Zuul publishes straight to the firehose (as an
//! authenticated publisher allowed to write under the Zuul root, `zuul/` by
//! default; `docs/subunit.md` shows the connection, the pipeline reporter
//! and the ACL line). The reader types a message by its topic: anything
//! under the root ([`crate::reader::Decoder::zuul_root`]).
//!
//! | | |
//! |---|---|
//! | topic | the reporter's `topic` template under the root, e.g. `zuul/{tenant}/{pipeline}/{project}/{change}` |
//! | payload | the reporter's JSON: `action`, `tenant`, `pipeline`, `project`, `branch`, `change`, `patchset`, `ref`, ..., `buildset` with its `builds` |
//! | type | `zuul.buildset.<action>`: `zuul.buildset.start`, `zuul.buildset.failure`, ... |
//! | subject | the change number, else the ref |
//! | time | `timestamp` (Zuul 4 and later), else `enqueue_time` |
//!
//! A `start` report lists the builds to come with only `job_name` and
//! `voting`; later reports add each build's `uuid`, times, `log_url` and
//! `result`. Fields are read leniently (a number where a string is
//! documented, a time as a string), since Zuul's own types moved between
//! versions.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// The default topic root of Zuul's reports on the firehose.
pub const ROOT: &str = "zuul";

/// One report of one pipeline item.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ZuulReport {
    /// The item's uuid (Zuul 4 and later): the same across its reports.
    #[serde(default, deserialize_with = "text")]
    pub uuid: Option<String>,
    /// The reporter action: `start`, `success`, `failure`,
    /// `merge-conflict`, `dequeue`, `enqueue`, `no-jobs`, ...
    #[serde(default, deserialize_with = "text_or_empty")]
    pub action: String,
    /// The tenant.
    #[serde(default, deserialize_with = "text_or_empty")]
    pub tenant: String,
    /// The pipeline (`check`, `gate`, ...).
    #[serde(default, deserialize_with = "text_or_empty")]
    pub pipeline: String,
    /// The project (`openstack/nova`).
    #[serde(default, deserialize_with = "text_or_empty")]
    pub project: String,
    /// The branch.
    #[serde(default, deserialize_with = "text")]
    pub branch: Option<String>,
    /// The change number; none for a ref update.
    #[serde(default, deserialize_with = "text")]
    pub change: Option<String>,
    /// The patchset number.
    #[serde(default, deserialize_with = "text")]
    pub patchset: Option<String>,
    /// The change's URL.
    #[serde(default, deserialize_with = "text")]
    pub change_url: Option<String>,
    /// The git ref (`refs/changes/03/3/1`).
    #[serde(default, rename = "ref", deserialize_with = "text")]
    pub git_ref: Option<String>,
    /// The commit.
    #[serde(default, deserialize_with = "text")]
    pub commit_id: Option<String>,
    /// The report's text (`Build succeeded.`).
    #[serde(default, deserialize_with = "text")]
    pub message: Option<String>,
    /// When the report was made, seconds since the Unix epoch.
    #[serde(default, deserialize_with = "seconds")]
    pub timestamp: Option<f64>,
    /// When the event reached the scheduler.
    #[serde(default, deserialize_with = "seconds")]
    pub trigger_time: Option<f64>,
    /// When the item entered the pipeline.
    #[serde(default, deserialize_with = "seconds")]
    pub enqueue_time: Option<f64>,
    /// The buildset and its builds.
    #[serde(default)]
    pub buildset: Buildset,
}

/// The item's builds.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Buildset {
    /// The buildset's uuid.
    #[serde(default, deserialize_with = "text")]
    pub uuid: Option<String>,
    /// The buildset's result (`SUCCESS`, `FAILURE`, ...); none while it
    /// runs.
    #[serde(default, deserialize_with = "text")]
    pub result: Option<String>,
    /// One per job.
    #[serde(default)]
    pub builds: Vec<ZuulBuild>,
}

/// One job's build.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ZuulBuild {
    /// The job.
    #[serde(default, deserialize_with = "text_or_empty")]
    pub job_name: String,
    /// Whether its result votes.
    #[serde(default = "yes", deserialize_with = "flag")]
    pub voting: bool,
    /// The build's uuid (not in a start report).
    #[serde(default, deserialize_with = "text")]
    pub uuid: Option<String>,
    /// Seconds since the Unix epoch (not in a start report).
    #[serde(default, deserialize_with = "seconds")]
    pub start_time: Option<f64>,
    /// Seconds since the Unix epoch (not in a start report).
    #[serde(default, deserialize_with = "seconds")]
    pub end_time: Option<f64>,
    /// Seconds since the Unix epoch.
    #[serde(default, deserialize_with = "seconds")]
    pub execute_time: Option<f64>,
    /// Its logs (not in a start report).
    #[serde(default, deserialize_with = "text")]
    pub log_url: Option<String>,
    /// Its result page, else its logs.
    #[serde(default, deserialize_with = "text")]
    pub web_url: Option<String>,
    /// `SUCCESS`, `FAILURE`, `POST_FAILURE`, `TIMED_OUT`, `SKIPPED`, ...
    /// (not in a start report).
    #[serde(default, deserialize_with = "text")]
    pub result: Option<String>,
}

fn yes() -> bool {
    true
}

/// A string, a number as its text, or nothing (null, empty, other).
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

fn text_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    text(d).map(Option::unwrap_or_default)
}

/// Seconds as a number or as its text (`'1524801056.2545864'`).
fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(!matches!(Value::deserialize(d)?, Value::Bool(false)))
}

impl ZuulBuild {
    /// Whether it has a result (a start report's builds have none).
    pub fn finished(&self) -> bool {
        self.result.is_some()
    }

    /// Whether it finished with anything but `SUCCESS` or `SKIPPED`.
    pub fn failed(&self) -> bool {
        self.result
            .as_deref()
            .is_some_and(|r| !matches!(r, "SUCCESS" | "SKIPPED"))
    }
}

/// What a report says happened to the item, by its `action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Its jobs started: the builds have no results yet.
    Start,
    /// Every voting build succeeded.
    Success,
    /// A voting build failed.
    Failure,
    /// It could not be merged (`merge-conflict`; `merge-failure` before
    /// Zuul 4).
    MergeConflict,
    /// It entered the pipeline.
    Enqueue,
    /// It left the pipeline without a result.
    Dequeue,
    /// It had no jobs to run.
    NoJobs,
    /// Any other action, as Zuul named it.
    Other(String),
}

/// Why a payload is not a Zuul report.
#[derive(Debug, thiserror::Error)]
pub enum ZuulError {
    /// Not JSON, or not an object of the report's shape.
    #[error("not a Zuul report")]
    Json(#[source] serde_json::Error),
    /// JSON, but not an object.
    #[error("a Zuul report is a JSON object")]
    NotObject,
    /// An object with no `action`.
    #[error("a Zuul report without an action")]
    NoAction,
}

/// A report's id, of the topic levels under Zuul's root (the same whatever
/// the root) and the report as Zuul sent it: two readers of one report
/// (firehose-sub, firehose-history) agree on it.
pub(crate) fn report_id(levels: &str, payload: &[u8]) -> String {
    crate::envelope::stable_id("zuul", &[levels.as_bytes(), b"\0", payload].concat())
}

impl ZuulReport {
    /// Reads a report's JSON text.
    pub fn from_slice(payload: &[u8]) -> Result<ZuulReport, ZuulError> {
        // serde reads a struct from an array too (by position): refuse one.
        if payload.trim_ascii_start().first() != Some(&b'{') {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(payload) {
                    Ok(_) => ZuulError::NotObject,
                    Err(e) => ZuulError::Json(e),
                },
            );
        }
        let r: ZuulReport = serde_json::from_slice(payload).map_err(ZuulError::Json)?;
        if r.action.is_empty() {
            return Err(ZuulError::NoAction);
        }
        Ok(r)
    }

    /// `zuul.buildset.<action>` (the action lowercased, anything but
    /// letters, digits, `-` and `_` as `_`).
    pub fn event_type(&self) -> String {
        let action: String = self
            .action
            .chars()
            .map(|c| match c {
                'a'..='z' | '0'..='9' | '-' | '_' => c,
                'A'..='Z' => c.to_ascii_lowercase(),
                _ => '_',
            })
            .collect();
        format!("zuul.buildset.{action}")
    }

    /// What a reader gets of a report Zuul sent on `levels` (the topic
    /// under Zuul's root) as `payload`.
    pub(crate) fn attributes(&self, levels: &str, payload: &[u8]) -> crate::envelope::Attributes {
        crate::envelope::Attributes {
            kind: self.event_type(),
            id: Some(report_id(levels, payload)),
            subject: self.subject(),
            time: self
                .time()
                .and_then(crate::envelope::unix_seconds)
                .map(crate::envelope::rfc3339),
        }
    }

    /// The change number, else the ref: what the report is about.
    pub fn subject(&self) -> Option<String> {
        self.change.clone().or_else(|| self.git_ref.clone())
    }

    /// When the report was made (`timestamp`), else when the item was
    /// enqueued, seconds since the Unix epoch.
    pub fn time(&self) -> Option<f64> {
        self.timestamp.or(self.enqueue_time)
    }

    /// What happened, typed.
    pub fn kind(&self) -> Action {
        match self.action.as_str() {
            "start" => Action::Start,
            "success" => Action::Success,
            "failure" => Action::Failure,
            "merge-conflict" | "merge-failure" => Action::MergeConflict,
            "enqueue" => Action::Enqueue,
            "dequeue" => Action::Dequeue,
            "no-jobs" => Action::NoJobs,
            other => Action::Other(other.to_owned()),
        }
    }

    /// A start report: its builds are still to run.
    pub fn is_start(&self) -> bool {
        self.kind() == Action::Start
    }

    /// The builds that finished with a failing result.
    pub fn failed_builds(&self) -> impl Iterator<Item = &ZuulBuild> {
        self.buildset.builds.iter().filter(|b| b.failed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A start report as Zuul 3's documentation shows it (JSON spelling),
    /// times as strings.
    const START: &str = r#"{"action": "start", "tenant": "openstack.org",
        "pipeline": "check", "project": "sf-jobs", "branch": "master",
        "change_url": "https://gerrit.example.com/r/3", "message": "Starting check jobs.",
        "trigger_time": "1524801056.2545864", "enqueue_time": "1524801093.5689457",
        "change": "3", "patchset": "1", "commit_id": "2db20c7fb26adf9ac9936a9e750ced9b4854a964",
        "owner": "username", "ref": "refs/changes/03/3/1",
        "zuul_ref": "Zf8b3d7cd34f54cb396b488226589db8f",
        "buildset": {"uuid": "f8b3d7cd34f54cb396b488226589db8f",
                     "builds": [{"job_name": "linters", "voting": true}]}}"#;

    #[test]
    fn a_start_report_has_builds_without_results() {
        let r = ZuulReport::from_slice(START.as_bytes()).unwrap();
        assert_eq!(r.event_type(), "zuul.buildset.start");
        assert_eq!(r.kind(), Action::Start);
        assert!(r.is_start());
        assert_eq!(r.subject().as_deref(), Some("3"));
        assert_eq!(r.time(), Some(1524801093.5689457));
        assert_eq!(r.buildset.builds.len(), 1);
        let b = &r.buildset.builds[0];
        assert_eq!(b.job_name, "linters");
        assert!(b.voting && !b.finished() && !b.failed());
        assert_eq!(r.buildset.result, None);
    }

    #[test]
    fn a_failure_report_names_its_failed_builds() {
        let r = ZuulReport::from_slice(
            br#"{"uuid": "e5b3", "action": "failure", "tenant": "openstack", "pipeline": "gate",
            "project": "openstack/nova", "branch": "master", "change": 123456, "patchset": 4,
            "ref": "refs/changes/56/123456/4", "timestamp": 1700000000.25,
            "buildset": {"uuid": "bs1", "result": "FAILURE", "builds": [
              {"job_name": "tox-py311", "voting": true, "uuid": "b1", "start_time": 1699999000.0,
               "end_time": 1699999900.0, "log_url": "https://logs/b1/", "result": "SUCCESS"},
              {"job_name": "tempest", "voting": false, "uuid": "b2", "result": "TIMED_OUT"},
              {"job_name": "grenade", "voting": true, "uuid": "b3", "result": "FAILURE"}]}}"#,
        )
        .unwrap();
        assert_eq!(r.event_type(), "zuul.buildset.failure");
        assert_eq!(r.kind(), Action::Failure);
        assert_eq!(r.change.as_deref(), Some("123456"), "a number read as text");
        assert_eq!(r.patchset.as_deref(), Some("4"));
        assert_eq!(r.time(), Some(1700000000.25));
        let failed: Vec<&str> = r.failed_builds().map(|b| b.job_name.as_str()).collect();
        assert_eq!(failed, ["tempest", "grenade"]);
        assert!(!r.buildset.builds[1].voting);
    }

    #[test]
    fn odd_reports_are_refused_or_read_leniently() {
        assert!(matches!(
            ZuulReport::from_slice(b"{\"pipeline\": \"check\"}"),
            Err(ZuulError::NoAction)
        ));
        assert!(matches!(
            ZuulReport::from_slice(b"[1, 2]"),
            Err(ZuulError::NotObject)
        ));
        assert!(matches!(
            ZuulReport::from_slice(b"{\"action\": "),
            Err(ZuulError::Json(_))
        ));
        assert!(matches!(
            ZuulReport::from_slice(b"not json"),
            Err(ZuulError::Json(_))
        ));
        let r = ZuulReport::from_slice(
            br#"{"action": "Merge Conflict!", "change": "", "ref": "refs/heads/master",
                 "buildset": {"builds": [{"job_name": "x", "voting": null}]}}"#,
        )
        .unwrap();
        assert_eq!(r.event_type(), "zuul.buildset.merge_conflict_");
        assert_eq!(r.kind(), Action::Other("Merge Conflict!".into()));
        assert_eq!(r.subject().as_deref(), Some("refs/heads/master"));
        assert!(r.buildset.builds[0].voting);
    }

    #[test]
    fn the_reader_types_what_is_under_the_root_and_nothing_else() {
        use crate::reader::{decode, Body, Decoder};
        let topic = "zuul/openstack.org/check/openstack/nova/3";
        let ev = decode(topic, START.as_bytes(), false);
        assert_eq!(ev.kind, "zuul.buildset.start");
        assert_eq!(ev.subject.as_deref(), Some("3"));
        assert!(ev
            .time
            .as_deref()
            .is_some_and(|t| t.starts_with("2018-04-27T")));
        assert!(matches!(&ev.body, Body::Zuul(z) if z.project == "sf-jobs"));
        assert_eq!(ev.data()["pipeline"], "check", "data is the report");
        // The same bytes again are the same event; another item's are not.
        assert_eq!(decode(topic, START.as_bytes(), false).id, ev.id);
        assert_ne!(decode("zuul/x", START.as_bytes(), false).id, ev.id);

        // Wrapped in a CloudEvent (a relay that re-enveloped it), by type.
        let ce = format!(
            r#"{{"specversion": "1.0", "id": "x", "source": "relay", "type": "zuul.buildset.start", "time": "2018-04-27T03:51:33Z", "data": {START}}}"#
        );
        let wrapped = decode("relay/zuul-copy", ce.as_bytes(), false);
        assert!(
            matches!(&wrapped.body, Body::Zuul(z) if z.is_start()),
            "{:?}",
            wrapped.body
        );

        // Under another root, `zuul/...` is just MQTT, and the root's
        // levels are the report's.
        let ci = Decoder::new().zuul_root("/ci/zuul/");
        assert_eq!(ci.decode(topic, START.as_bytes(), false).kind, "mqtt");
        let moved = ci.decode(
            "ci/zuul/openstack.org/check/openstack/nova/3",
            START.as_bytes(),
            false,
        );
        assert_eq!(moved.kind, "zuul.buildset.start");
        assert_ne!(
            decode("zuulish/x", START.as_bytes(), false).kind,
            "zuul.buildset.start"
        );

        // Broken reports under the root say why, and are not nova events
        // for their project's name.
        let bad = decode(topic, b"{\"pipeline\": 1}", false);
        assert_eq!(bad.kind, "mqtt");
        assert!(
            matches!(&bad.body, Body::Other { reason: Some(r) } if r.contains("without an action")),
            "{:?}",
            bad.body
        );
    }
}
