//! What one MQTT message becomes in the store: the normalized event (the
//! SDK's [`Event`]), its key, and the fields indexed for the questions the
//! API answers (an instance's life, a request, a change, a bug, a
//! playbook). Pure: no I/O, unit-tested on the fixtures.

use firehose::envelope::stable_id;
use firehose::reader::{Body, Event};
use serde_json::Value;

/// One event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The event id (the SDK's normalized id, the same in raw and
    /// CloudEvents mode); for a message that is not an event, an id derived
    /// from its topic and bytes.
    pub id: String,
    pub topic: String,
    pub source: Option<String>,
    /// `nova.instance.create.end`, `gerrit.comment-added`, ... or `mqtt`.
    pub kind: String,
    /// The event's own time (RFC 3339), when it says.
    pub time: Option<String>,
    /// The event's own time, Unix milliseconds (for `from`/`to` and
    /// timings).
    pub time_ms: Option<i64>,
    pub subject: Option<String>,
    pub retained: bool,
    /// When the firehose received it, Unix milliseconds.
    pub received_ms: i64,
    /// The payload exactly as it arrived.
    pub payload: Vec<u8>,
    /// False for a payload that is not a firehose event (not JSON, an
    /// unknown family, unreadable for its topic): stored, and counted.
    pub readable: bool,
    pub fields: Indexed,
}

/// The indexed fields; each is empty when the event does not carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Indexed {
    /// nova: `nova/<deployment>/...`.
    pub deployment: Option<String>,
    /// nova: the instance uuid.
    pub instance: Option<String>,
    /// nova: the request id (`req-...`).
    pub request: Option<String>,
    /// gerrit and launchpad: the project.
    pub project: Option<String>,
    /// gerrit: the change number.
    pub change: Option<String>,
    /// launchpad: the bug number.
    pub bug: Option<String>,
    /// ansible: the playbook (play) uuid.
    pub playbook: Option<String>,
}

/// The indexed columns that often repeat the event's subject (a nova
/// event's subject is its instance, a gerrit event's its change...), with
/// the bit that says so in the `same` column. Such a value is stored once,
/// as the subject: half the bytes of an event's keys, and one index less
/// to probe for "every event of X".
pub(crate) const SAME: &[(&str, i64)] = &[
    ("instance", 1),
    ("request", 2),
    ("change_number", 4),
    ("bug", 8),
    ("playbook", 16),
];

/// The bit of `column` in [`SAME`], if it has one.
pub(crate) fn same_bit(column: &str) -> Option<i64> {
    SAME.iter().find(|(c, _)| *c == column).map(|(_, b)| *b)
}

impl Indexed {
    fn slot(&mut self, column: &str) -> Option<&mut Option<String>> {
        match column {
            "instance" => Some(&mut self.instance),
            "request" => Some(&mut self.request),
            "change_number" => Some(&mut self.change),
            "bug" => Some(&mut self.bug),
            "playbook" => Some(&mut self.playbook),
            _ => None,
        }
    }

    /// What is stored: the fields equal to `subject` left out, and the
    /// bits that say which ([`SAME`]).
    pub(crate) fn fold(&self, subject: Option<&str>) -> (Indexed, i64) {
        let mut out = self.clone();
        let mut same = 0;
        for (column, bit) in SAME {
            if let Some(slot) = out.slot(column) {
                if slot.is_some() && slot.as_deref() == subject {
                    *slot = None;
                    same |= bit;
                }
            }
        }
        (out, same)
    }

    /// The fields as they were before [`Indexed::fold`].
    pub(crate) fn unfold(mut self, subject: Option<&str>, same: i64) -> Indexed {
        for (column, bit) in SAME {
            if same & bit != 0 {
                if let Some(slot) = self.slot(column) {
                    *slot = subject.map(str::to_owned);
                }
            }
        }
        self
    }
}

/// The MQTT families the firehose publishes; a message on any other topic
/// is not an event.
fn family_known(kind: &str) -> bool {
    kind != "mqtt"
}

/// Turns one delivered message into what is stored.
pub fn row(ev: &Event, received_ms: i64) -> Row {
    let readable = family_known(&ev.kind) && !matches!(ev.body, Body::Other { .. });
    let id = match &ev.id {
        Some(id) if !id.is_empty() => id.clone(),
        _ => {
            let mut key = ev.topic.as_bytes().to_vec();
            key.push(0);
            key.extend_from_slice(&ev.payload);
            stable_id("mqtt", &key)
        }
    };
    let time_ms = ev
        .time_parsed()
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64);
    Row {
        id,
        topic: ev.topic.clone(),
        source: ev.source.clone(),
        kind: ev.kind.clone(),
        time: ev.time.clone(),
        time_ms,
        subject: ev.subject.clone(),
        retained: ev.retained,
        received_ms,
        payload: ev.payload.to_vec(),
        readable,
        fields: indexed(ev),
    }
}

fn s(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The indexed fields of one event, from its typed body.
pub fn indexed(ev: &Event) -> Indexed {
    let mut f = Indexed::default();
    match &ev.body {
        Body::Nova(n) => {
            f.deployment = ev.topic.split('/').nth(1).map(str::to_owned);
            f.instance = n.instance_uuid();
            let v = n.value();
            f.request = s(v.get("_context_request_id"))
                .or_else(|| s(n.object_data().and_then(|d| d.get("request_id"))))
                .or_else(|| s(n.payload().get("request_id")));
        }
        Body::NovaService(_) => {
            f.deployment = ev.topic.split('/').nth(1).map(str::to_owned);
        }
        Body::Gerrit(g) => {
            let p = g.project();
            f.project = (!p.is_empty()).then_some(p);
            f.change = g.change_number();
        }
        Body::Launchpad(l) => {
            f.project = l.get("project").map(str::to_owned);
            f.bug = l.get("bug-number").map(str::to_owned);
        }
        Body::Ansible(a) => {
            f.playbook = s(a.value.get("playbook_id"))
                .or_else(|| ev.topic.split('/').nth(2).map(str::to_owned));
        }
        Body::Subunit(_) => {
            // gearman-subunit/<host>/<project...>/<change>
            let levels: Vec<&str> = ev.topic.split('/').collect();
            let at = levels
                .iter()
                .position(|l| *l == firehose::subunit::FAMILY)
                .unwrap_or(0);
            if levels.len() >= at + 4 {
                f.project = Some(levels[at + 2..levels.len() - 1].join("/"));
                f.change = levels.last().map(|c| (*c).to_owned());
            }
        }
        Body::Zuul(z) => {
            f.project = (!z.project.is_empty()).then(|| z.project.clone());
            f.change = z.change.clone();
        }
        Body::SubunitTest(t) => {
            f.project = s(t.value.get("project"));
            f.change = s(t.value.get("build_change"));
        }
        Body::Status(_) | Body::Other { .. } => {}
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use firehose::reader::decode;

    #[test]
    fn a_nova_notification_is_indexed_by_deployment_instance_and_request() {
        let payload = br#"{"event_type":"compute.instance.create.end","message_id":"m-1","timestamp":"2026-11-30 10:00:00.123456","_context_request_id":"req-42","publisher_id":"compute.host1","payload":{"instance_id":"inst-9","state":"active"}}"#;
        let ev = decode("nova/prod/compute/instance/create/end", payload, false);
        let r = row(&ev, 5);
        assert!(r.readable);
        assert_eq!(r.id, "m-1");
        assert_eq!(r.fields.deployment.as_deref(), Some("prod"));
        assert_eq!(r.fields.instance.as_deref(), Some("inst-9"));
        assert_eq!(r.fields.request.as_deref(), Some("req-42"));
        assert!(r.time_ms.is_some(), "nova's timestamp is read");
        assert_eq!(r.payload, payload);
    }

    #[test]
    fn a_gerrit_event_is_indexed_by_project_and_change() {
        let ev = decode(
            "gerrit/openstack/nova/comment-added",
            br#"{"type":"comment-added","change":{"project":"openstack/nova","number":12},"eventCreatedOn":1700000000}"#,
            false,
        );
        let f = row(&ev, 1).fields;
        assert_eq!(f.project.as_deref(), Some("openstack/nova"));
        assert_eq!(f.change.as_deref(), Some("12"));
    }

    #[test]
    fn a_test_run_is_indexed_by_project_and_change() {
        let ev = decode(
            "gearman-subunit/worker-1/openstack/nova/123456",
            br#"{"status": "success", "build_uuid": "5f0c", "source_url": "https://logs/x"}"#,
            false,
        );
        let r = row(&ev, 1);
        assert!(r.readable);
        assert_eq!(r.kind, "subunit.run.success");
        assert_eq!(r.fields.project.as_deref(), Some("openstack/nova"));
        assert_eq!(r.fields.change.as_deref(), Some("123456"));
    }

    #[test]
    fn a_field_equal_to_the_subject_is_kept_once_and_comes_back() {
        let f = Indexed {
            deployment: Some("prod".into()),
            instance: Some("inst-9".into()),
            request: Some("req-1".into()),
            ..Indexed::default()
        };
        let (kept, same) = f.fold(Some("inst-9"));
        assert_eq!(same, 1);
        assert_eq!(kept.instance, None);
        assert_eq!(kept.request.as_deref(), Some("req-1"), "not the subject");
        assert_eq!(kept.clone().unfold(Some("inst-9"), same), f);
        assert_eq!(f.fold(None), (f.clone(), 0), "no subject: all kept");
        assert_eq!(same_bit("change_number"), Some(4));
        assert_eq!(same_bit("project"), None);
    }

    #[test]
    fn what_is_not_an_event_is_kept_with_an_id_of_its_bytes() {
        let a = row(&decode("random/topic", b"not json", false), 1);
        let b = row(&decode("random/topic", b"not json", false), 2);
        let c = row(&decode("random/topic", b"other bytes", false), 3);
        assert!(!a.readable);
        assert_eq!(a.id, b.id, "the same message twice is one");
        assert_ne!(a.id, c.id);
        let broken = row(&decode("gerrit/p/comment-added", b"{broken", false), 1);
        assert!(!broken.readable, "unreadable for its topic");
    }
}
