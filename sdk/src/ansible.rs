//! Ansible playbook events: what `firehose-ansible`'s callback plugin sends
//! (one JSON line per event, [`PluginEvent`]) and how it is published: the
//! original OpenStack infra plugin's topics and payloads (`docs/ansible.md`
//! in the repository), with skipped results added.
//!
//! | plugin event | topic (under `ansible/playbook/<play uuid>/`) | raw payload keys |
//! |---|---|---|
//! | `play_start` | `action/start` | status, host, session, playbook_name, playbook_id, ansible_type |
//! | `task` | `task/<host>/<OK\|FAILED\|UNREACHABLE\|SKIPPED>` | status, host, ansible_host, session, ansible_type, playbook_name, playbook_id, ansible_task, ansible_result |
//! | `stats` | `stats/<host>` | host, ansible_host, playbook_id, playbook_name, stats |
//! | `finish` | `action/finish/<OK\|FAILED>` | playbook_id, playbook_name, status |
//!
//! `host` is the machine that ran ansible, `ansible_host` the target. In raw
//! mode `ansible_result` stays the JSON string existing consumers parse; in
//! CloudEvents mode it is an object, and `changed`, `ignored`, `item` and
//! `action` are added.
//!
//! The id is of the raw payload (with `ansible_result` read as an object),
//! in both modes: the raw payload carries no id of the plugin's, and a
//! reader of either mode (firehose-history, a redundant bridge's copy) must
//! get the same one. Two events of one run whose raw payloads are the same
//! bytes are therefore one event, as they always were to raw readers.

use crate::{CloudEvent, Publishable};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

/// One line from the plugin.
#[derive(Debug, Clone, Deserialize)]
pub struct PluginEvent {
    /// `play_start`, `task`, `stats` or `finish`.
    pub event: String,
    /// The plugin's uuid of the event (for logs; the CloudEvents `id` is of
    /// the raw payload, so both payload modes agree: see the module doc).
    pub id: String,
    /// Unix time, seconds.
    pub time: f64,
    /// One per `ansible-playbook` run.
    pub session: String,
    /// The machine ansible runs on.
    pub launcher: String,
    /// The play's uuid (the topic's third level).
    pub play_id: Option<String>,
    /// The play's name (`playbook_name` in payloads).
    pub play_name: Option<String>,
    /// The target host (task, stats).
    pub host: Option<String>,
    /// `TASK: <name>`.
    pub task: Option<String>,
    /// The task's module (`ping`, `command`, ...).
    pub action: Option<String>,
    /// OK, FAILED, UNREACHABLE, SKIPPED (task); OK, FAILED (finish).
    pub status: Option<String>,
    #[serde(default)]
    /// The task changed something (published as OK).
    pub changed: bool,
    #[serde(default)]
    /// A failure the task's `ignore_errors` let pass.
    pub ignored: bool,
    #[serde(default)]
    /// One item of a loop.
    pub item: bool,
    /// The task result as the JSON string ansible's `_dump_results` gives.
    pub result: Option<String>,
    /// `stats.summarize(host)`.
    pub stats: Option<Value>,
    /// Events the plugin had to drop (finish).
    #[serde(default)]
    pub dropped: u64,
}

/// Why a line is not an event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("not a plugin event")]
    /// The line is not JSON, or not the event's shape.
    Json(#[from] serde_json::Error),
    #[error("{event} event without {field}")]
    /// A field the event needs is absent.
    Missing {
        /// The event's name.
        event: String,
        /// The absent field.
        field: &'static str,
    },
    #[error("unknown event {0:?}")]
    /// An event name this version does not know.
    Unknown(String),
}

impl PluginEvent {
    /// Parses and checks one line.
    pub fn parse(line: &[u8]) -> Result<PluginEvent, EventError> {
        let ev: PluginEvent = serde_json::from_slice(line)?;
        let need: &[(&'static str, bool)] = match ev.event.as_str() {
            "play_start" => &[("play_id", ev.play_id.is_some())],
            "task" => &[
                ("play_id", ev.play_id.is_some()),
                ("host", ev.host.is_some()),
                ("status", ev.status.is_some()),
            ],
            "stats" => &[
                ("play_id", ev.play_id.is_some()),
                ("host", ev.host.is_some()),
            ],
            "finish" => &[
                ("play_id", ev.play_id.is_some()),
                ("status", ev.status.is_some()),
            ],
            other => return Err(EventError::Unknown(other.to_owned())),
        };
        if let Some((field, _)) = need.iter().find(|(_, present)| !present) {
            return Err(EventError::Missing {
                event: ev.event.clone(),
                field,
            });
        }
        Ok(ev)
    }

    fn s(v: &Option<String>) -> &str {
        v.as_deref().unwrap_or_default()
    }

    /// The payload with `ansible_result` as `result_value`.
    fn payload(&self, result_value: Value) -> Map<String, Value> {
        let play_id = Self::s(&self.play_id);
        let play_name = Self::s(&self.play_name);
        let v = match self.event.as_str() {
            "play_start" => json!({
                "status": "OK",
                "host": self.launcher,
                "session": self.session,
                "playbook_name": play_name,
                "playbook_id": play_id,
                "ansible_type": "start",
            }),
            "task" => json!({
                "status": Self::s(&self.status),
                "host": self.launcher,
                "ansible_host": Self::s(&self.host),
                "session": self.session,
                "ansible_type": "task",
                "playbook_name": play_name,
                "playbook_id": play_id,
                "ansible_task": Self::s(&self.task),
                "ansible_result": result_value,
            }),
            "stats" => json!({
                "host": self.launcher,
                "ansible_host": Self::s(&self.host),
                "playbook_id": play_id,
                "playbook_name": play_name,
                "stats": self.stats.clone().unwrap_or(Value::Null),
            }),
            _ => json!({
                "playbook_id": play_id,
                "playbook_name": play_name,
                "status": Self::s(&self.status),
            }),
        };
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    /// CloudEvents `type`: `ansible.play.start`, `ansible.task.ok`, ...
    fn kind(&self) -> String {
        match self.event.as_str() {
            "play_start" => "ansible.play.start".into(),
            "task" => format!("ansible.task.{}", Self::s(&self.status).to_lowercase()),
            "stats" => "ansible.stats".into(),
            _ => "ansible.playbook.finish".into(),
        }
    }
}

impl Publishable for PluginEvent {
    fn topic(&self) -> String {
        let uuid = Self::s(&self.play_id);
        let host = Self::s(&self.host);
        let status = Self::s(&self.status);
        let rest: Vec<&str> = match self.event.as_str() {
            "play_start" => vec!["action", "start"],
            "task" => vec!["task", host, status],
            "stats" => vec!["stats", host],
            _ => vec!["action", "finish", status],
        };
        crate::topic::ansible_playbook(uuid, &rest)
    }

    fn raw(&self) -> Vec<u8> {
        let result = Value::String(Self::s(&self.result).to_owned());
        serde_json::to_vec(&self.payload(result)).expect("a JSON map always serializes")
    }

    fn cloudevent(&self, source: &str, received: OffsetDateTime) -> CloudEvent {
        let mut raw = Value::Object(self.payload(Value::String(Self::s(&self.result).to_owned())));
        let id = raw_id(&mut raw);
        let result = self
            .result
            .as_deref()
            .map(|r| serde_json::from_str(r).unwrap_or_else(|_| Value::String(r.to_owned())))
            .unwrap_or(Value::Null);
        let mut data = self.payload(result);
        if self.event == "task" {
            data.insert("changed".into(), self.changed.into());
            data.insert("ignored".into(), self.ignored.into());
            data.insert("item".into(), self.item.into());
            if let Some(a) = &self.action {
                data.insert("action".into(), a.clone().into());
            }
        }
        if self.event == "finish" && self.dropped > 0 {
            data.insert("dropped_events".into(), self.dropped.into());
        }
        let time = crate::envelope::unix_seconds(self.time).unwrap_or(received);
        let subject = self.host.clone().or_else(|| self.play_id.clone());
        let data = serde_json::value::to_raw_value(&data).expect("a JSON map always serializes");
        CloudEvent::new(id, source, self.kind(), time, subject, data)
    }
}

/// The event's id, of its raw payload `data` with `ansible_result` made an
/// object (as readers get it in both modes; the original plugin sent a
/// JSON string inside the JSON), which `data` is left as.
fn raw_id(data: &mut Value) -> String {
    if let Some(Value::String(s)) = data.get("ansible_result") {
        if let Ok(v) = serde_json::from_str::<Value>(s) {
            data["ansible_result"] = v;
        }
    }
    crate::envelope::stable_id("ansible", data.to_string().as_bytes())
}

/// A raw payload read back by its topic levels (`ansible/playbook/<uuid>/`
/// `action/start` | `task/<host>/<STATUS>` | `stats/<host>` |
/// `action/finish/<STATUS>`, from the family's level on): the attributes
/// the bridge gives in CloudEvents mode, and the payload as readers get it.
pub(crate) fn read_raw(
    levels: &[&str],
    data: &Value,
) -> Result<(crate::envelope::Attributes, Value), &'static str> {
    let kind = match levels.get(3..).unwrap_or_default() {
        ["action", "start", ..] => "ansible.play.start".to_owned(),
        ["action", "finish", ..] => "ansible.playbook.finish".to_owned(),
        ["task", _, status, ..] => format!("ansible.task.{}", status.to_lowercase()),
        ["stats", ..] => "ansible.stats".to_owned(),
        _ => return Err("not an ansible playbook topic"),
    };
    if !data.is_object() {
        return Err("ansible payload is not a JSON object");
    }
    let mut data = data.clone();
    let id = raw_id(&mut data);
    let subject = data
        .get("ansible_host")
        .or_else(|| data.get("playbook_id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let attrs = crate::envelope::Attributes {
        kind,
        id: Some(id),
        subject,
        time: None,
    };
    Ok((attrs, data))
}

/// A published ansible event as a reader gets it (the payload, with
/// `ansible_result` as an object in both payload modes).
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedAnsible {
    /// The payload, `ansible_result` as an object.
    pub value: Value,
}

impl PublishedAnsible {
    /// Wraps a published payload.
    pub fn new(value: Value) -> PublishedAnsible {
        PublishedAnsible { value }
    }

    fn s(&self, key: &str) -> Option<&str> {
        self.value.get(key).and_then(Value::as_str)
    }

    /// OK, FAILED, UNREACHABLE, SKIPPED (a task); OK or FAILED (finish).
    pub fn status(&self) -> Option<&str> {
        self.s("status")
    }

    /// The target host (tasks, stats).
    pub fn target(&self) -> Option<&str> {
        self.s("ansible_host")
    }

    /// `TASK: <name>`.
    pub fn task(&self) -> Option<&str> {
        self.s("ansible_task")
    }

    /// The play's uuid.
    pub fn play_id(&self) -> Option<&str> {
        self.s("playbook_id")
    }

    /// The task result (an object).
    pub fn result(&self) -> Option<&Value> {
        self.value.get("ansible_result")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: &str = r#"{"event":"task","id":"e1","time":1700000000.5,"session":"s1","launcher":"bastion","play_id":"p-1","play_name":"all","host":"web1","task":"TASK: ping","action":"ping","status":"OK","changed":true,"result":"{\"changed\": true, \"ping\": \"pong\"}"}"#;

    #[test]
    fn task_raw_keeps_the_result_a_string_cloudevents_an_object() {
        let ev = PluginEvent::parse(TASK.as_bytes()).unwrap();
        assert_eq!(ev.topic(), "ansible/playbook/p-1/task/web1/OK");
        let raw: Value = serde_json::from_slice(&ev.raw()).unwrap();
        assert_eq!(
            raw["ansible_result"],
            "{\"changed\": true, \"ping\": \"pong\"}"
        );
        assert_eq!(raw["host"], "bastion");
        assert_eq!(raw["ansible_host"], "web1");
        assert_eq!(raw["ansible_type"], "task");
        assert!(
            raw.get("changed").is_none(),
            "raw has the original keys only"
        );
        let ce = ev.cloudevent("ansible://bastion", OffsetDateTime::UNIX_EPOCH);
        assert_eq!(ce.kind, "ansible.task.ok");
        assert_eq!(ce.subject.as_deref(), Some("web1"));
        let data: Value = serde_json::from_str(ce.data.get()).unwrap();
        assert_eq!(data["ansible_result"]["ping"], "pong");
        assert_eq!(data["changed"], true);
    }

    #[test]
    fn bad_lines_are_errors() {
        assert!(PluginEvent::parse(b"not json").is_err());
        let e = PluginEvent::parse(
            br#"{"event":"task","id":"x","time":1,"session":"s","launcher":"l","play_id":"p"}"#,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "task event without host");
        assert!(PluginEvent::parse(
            br#"{"event":"nope","id":"x","time":1,"session":"s","launcher":"l"}"#
        )
        .is_err());
    }
}
