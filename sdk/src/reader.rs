//! What a subscriber gets from one MQTT message: an [`Event`] of one shape
//! whatever the bridge's payload mode, plus the typed event ([`Body`]).
//!
//! A CloudEvents payload gives `id`, `source`, `type`, `time`, `subject` and
//! `data` as they are. A raw payload (what germqtt, lpmqtt and the ansible
//! plugin published) is read by its topic: `type` is derived the way the
//! bridges name it in CloudEvents mode (`gerrit.comment-added`,
//! `nova.compute.instance.create.end`, `launchpad.bug`, `ansible.task.ok`),
//! `data` is the payload, and the id is the one the bridge would have given
//! (so deduplication works across modes). Nothing here fails: a payload
//! that cannot be read is [`Body::Other`] with the reason.
//!
//! ```
//! let ev = firehose::reader::decode(
//!     "gerrit/openstack/nova/comment-added",
//!     br#"{"type":"comment-added","change":{"project":"openstack/nova","number":12}}"#,
//!     false,
//! );
//! assert_eq!(ev.kind, "gerrit.comment-added");
//! assert_eq!(ev.subject.as_deref(), Some("12"));
//! assert!(matches!(ev.body, firehose::reader::Body::Gerrit(_)));
//! ```

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use crate::ansible::PublishedAnsible;
use crate::envelope::{rfc3339, stable_id};
use crate::gerrit::GerritEvent;
use crate::launchpad::LaunchpadEvent;
use crate::nova::{Notification, ServiceState};
use crate::status::Status;

/// One event, normalized: what `firehose-sub --json` prints and what
/// `--where` and `--format` see.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// The MQTT topic it arrived on.
    pub topic: String,
    /// Unique per source event (the same in both payload modes).
    pub id: Option<String>,
    /// The upstream's URI (CloudEvents payloads only).
    pub source: Option<String>,
    /// `gerrit.comment-added`, `nova.instance.create.end`, `launchpad.bug`,
    /// `ansible.task.failed`, `firehose.status`, `nova.service`, or `mqtt`
    /// for messages that are not firehose events.
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened (RFC 3339), when known.
    pub time: Option<String>,
    /// What it is about: a change, a bug, an instance, a host.
    pub subject: Option<String>,
    /// The event itself (CloudEvents `data`, or the raw payload as JSON;
    /// a string when the payload is not JSON).
    pub data: Value,
    /// A retained message (state, not news).
    pub retained: bool,
    /// The payload exactly as it arrived.
    #[serde(skip)]
    pub payload: Vec<u8>,
    /// The typed event.
    #[serde(skip)]
    pub body: Body,
}

/// The typed event.
#[derive(Debug, Clone)]
pub enum Body {
    /// A gerrit stream event.
    Gerrit(Box<GerritEvent>),
    /// A nova notification.
    Nova(Box<Notification>),
    /// A nova service's retained up/down state.
    NovaService(ServiceState),
    /// A Launchpad notification.
    Launchpad(LaunchpadEvent),
    /// An ansible playbook event.
    Ansible(PublishedAnsible),
    /// A bridge's retained liveness message.
    Status(Box<Status>),
    /// Not a firehose event, or one that could not be read (`reason`).
    Other {
        /// Why it could not be read as the event its topic promised.
        reason: Option<String>,
    },
}

/// Reads one message. The payload is parsed once; the typed event is
/// built from that parse.
pub fn decode(topic: &str, payload: &[u8], retained: bool) -> Event {
    let json: Option<Value> = serde_json::from_slice(payload).ok();
    let mut ev = Event {
        topic: topic.to_owned(),
        id: None,
        source: None,
        kind: "mqtt".to_owned(),
        time: None,
        subject: None,
        data: Value::Null,
        retained,
        payload: payload.to_vec(),
        body: Body::Other { reason: None },
    };
    let json = match json {
        Some(Value::Object(mut m)) if is_cloudevent(&m) => {
            let mut s = |k: &str| match m.remove(k) {
                Some(Value::String(v)) => Some(v),
                _ => None,
            };
            ev.id = s("id");
            ev.source = s("source");
            ev.time = s("time");
            ev.subject = s("subject");
            ev.kind = s("type").unwrap_or_else(|| "mqtt".into());
            ev.data = m.remove("data").unwrap_or(Value::Null);
            ev.body = typed_cloudevent(&ev.kind, &ev.data);
            return ev;
        }
        Some(v) => v,
        None => {
            ev.data = Value::String(String::from_utf8_lossy(payload).into_owned());
            // Not JSON: still an event for readers of the raw payload, but
            // one of ours would have been JSON.
            if starts_with_source(topic).is_some() {
                ev.body = other("payload is not JSON".into());
            }
            return ev;
        }
    };
    ev.data = json;
    let levels: Vec<&str> = topic.split('/').collect();
    let rest = match starts_with_source(topic) {
        Some(start) => &levels[start..],
        None => return ev,
    };
    match rest.first().copied() {
        Some("gerrit") => raw_gerrit(&mut ev),
        Some("nova") if rest.get(2) == Some(&"service") && rest.len() >= 5 => {
            raw_nova_service(&mut ev)
        }
        Some("nova") => raw_nova(&mut ev),
        Some("launchpad") => raw_launchpad(&mut ev),
        Some("ansible") => raw_ansible(&mut ev, rest),
        Some("firehose") if rest.get(1) == Some(&"status") => raw_status(&mut ev),
        _ => {}
    }
    ev
}

/// A CloudEvents 1.x envelope.
fn is_cloudevent(m: &serde_json::Map<String, Value>) -> bool {
    matches!(m.get("specversion"), Some(Value::String(v)) if v.starts_with('1'))
}

/// Where the firehose levels start: `--base-topic` puts levels before the
/// bridge's own, so the first level that names a source.
fn starts_with_source(topic: &str) -> Option<usize> {
    topic
        .split('/')
        .position(|l| matches!(l, "gerrit" | "nova" | "launchpad" | "ansible" | "firehose"))
}

/// The typed event inside a CloudEvents envelope, by its type.
fn typed_cloudevent(kind: &str, data: &Value) -> Body {
    let (family, _) = kind.split_once('.').unwrap_or((kind, ""));
    match family {
        "gerrit" => match GerritEvent::from_value(data.clone()) {
            Ok(g) => Body::Gerrit(Box::new(g)),
            Err(e) => other(format!("gerrit data: {e}")),
        },
        "nova" => match Notification::from_value(data.clone()) {
            Ok(n) => Body::Nova(Box::new(n)),
            Err(e) => other(format!("nova data: {e}")),
        },
        "launchpad" => match LaunchpadEvent::from_payload(data) {
            Some(l) => Body::Launchpad(l),
            None => other("launchpad data is not an object".into()),
        },
        "ansible" => Body::Ansible(PublishedAnsible::new(data.clone())),
        _ => Body::Other { reason: None },
    }
}

fn raw_gerrit(ev: &mut Event) {
    match GerritEvent::from_value(ev.data.clone()) {
        Ok(g) => {
            ev.kind = format!("gerrit.{}", g.event_type());
            // The id the bridge gives: derived from the line as published.
            ev.id = Some(stable_id("gerrit", &ev.payload));
            ev.subject = g.subject();
            ev.time = g.created().map(rfc3339);
            ev.body = Body::Gerrit(Box::new(g));
        }
        Err(e) => ev.body = other(format!("gerrit payload: {e}")),
    }
}

fn raw_nova(ev: &mut Event) {
    match Notification::from_value(ev.data.clone()) {
        Ok(n) => {
            ev.kind = format!("nova.{}", n.event_type());
            ev.id = Some(n.message_id());
            ev.subject = n.instance_uuid();
            ev.time = n.timestamp().map(rfc3339);
            ev.body = Body::Nova(Box::new(n));
        }
        Err(e) => ev.body = other(format!("nova payload: {e}")),
    }
}

fn raw_nova_service(ev: &mut Event) {
    match serde_json::from_value::<ServiceState>(ev.data.clone()) {
        Ok(s) => {
            ev.kind = "nova.service".into();
            ev.subject = Some(format!("{}/{}", s.binary, s.host));
            ev.time = s.updated.clone();
            ev.body = Body::NovaService(s);
        }
        Err(e) => ev.body = other(format!("nova service state: {e}")),
    }
}

fn raw_launchpad(ev: &mut Event) {
    match LaunchpadEvent::from_payload(&ev.data) {
        Some(l) => {
            ev.kind = format!("launchpad.{}", l.event_type());
            ev.id = Some(stable_id("launchpad", ev.data.to_string().as_bytes()));
            ev.subject = l.bug_number().map(str::to_owned);
            ev.body = Body::Launchpad(l);
        }
        None => ev.body = other("launchpad payload is not a JSON object".into()),
    }
}

fn raw_ansible(ev: &mut Event, levels: &[&str]) {
    // ansible/playbook/<uuid>/action/start | task/<host>/<STATUS> |
    // stats/<host> | action/finish/<STATUS>
    let kind = match levels.get(3..).unwrap_or_default() {
        ["action", "start", ..] => "ansible.play.start".to_owned(),
        ["action", "finish", ..] => "ansible.playbook.finish".to_owned(),
        ["task", _, status, ..] => format!("ansible.task.{}", status.to_lowercase()),
        ["stats", ..] => "ansible.stats".to_owned(),
        _ => {
            ev.body = other("not an ansible playbook topic".into());
            return;
        }
    };
    if !ev.data.is_object() {
        ev.body = other("ansible payload is not a JSON object".into());
        return;
    }
    // The original plugin sent the result as a JSON string inside the
    // JSON: readers get it as an object, as in CloudEvents mode.
    if let Some(Value::String(s)) = ev.data.get("ansible_result") {
        if let Ok(v) = serde_json::from_str::<Value>(s) {
            ev.data["ansible_result"] = v;
        }
    }
    ev.kind = kind;
    ev.id = Some(stable_id("ansible", ev.data.to_string().as_bytes()));
    ev.subject = ev
        .data
        .get("ansible_host")
        .or_else(|| ev.data.get("playbook_id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    ev.body = Body::Ansible(PublishedAnsible::new(ev.data.clone()));
}

fn raw_status(ev: &mut Event) {
    match serde_json::from_value::<Status>(ev.data.clone()) {
        Ok(s) => {
            ev.kind = "firehose.status".into();
            ev.subject = Some(ev.topic.clone());
            ev.body = Body::Status(Box::new(s));
        }
        Err(e) => ev.body = other(format!("status payload: {e}")),
    }
}

fn other(reason: String) -> Body {
    Body::Other {
        reason: Some(reason),
    }
}

/// When the event happened, parsed.
impl Event {
    /// [`Event::time`] parsed, when it is RFC 3339.
    pub fn time_parsed(&self) -> Option<OffsetDateTime> {
        let t = self.time.as_deref()?;
        OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
    }
}
