//! Launchpad notifications as lpmqtt published them (`launchpad/<project>/
//! <event-type>/<bug-number>`, a JSON dict of strings), and as the
//! CloudEvents envelope carries them (that dict plus every task of the bug).
//! `firehose-launchpad` builds them from mail; readers get them back from
//! either payload.

use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::envelope::stable_id;
use crate::{CloudEvent, Publishable};

/// One Launchpad notification, ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchpadEvent {
    /// lpmqtt's dict (raw mode's payload).
    pub fields: Map<String, Value>,
    /// Every `X-Launchpad-Bug` header (one per affected project, package
    /// or series), parsed; CloudEvents mode adds them as `tasks`.
    pub tasks: Vec<Map<String, Value>>,
    /// `Message-ID`, without angle brackets (CloudEvents `id`).
    pub message_id: Option<String>,
    /// The mail's `Date`.
    pub date: Option<OffsetDateTime>,
}

impl LaunchpadEvent {
    /// A field as a string (`bug-number`, `project`, `status`, ...).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    /// The CloudEvents `type`'s suffix: the event type, or `notification`.
    /// `bug`, `code-review`, ...; `notification` when the mail said none.
    pub fn event_type(&self) -> &str {
        self.get("event-type").unwrap_or("notification")
    }
}

/// The event id of a Launchpad event, derived from its raw (lpmqtt)
/// payload: the same in both payload modes (a reader of a raw payload
/// computes it from the bytes it got) and for redundant bridges reading the
/// same mail. (The Message-ID is not in the raw payload, so it cannot be.)
pub fn event_id(raw_payload: &[u8]) -> String {
    stable_id("launchpad", raw_payload)
}

impl Publishable for LaunchpadEvent {
    /// `launchpad/<project>/<event-type>/<bug-number>`, stopping at the first
    /// missing piece.
    fn topic(&self) -> String {
        crate::topic::launchpad(
            self.get("project"),
            self.get("event-type"),
            self.get("bug-number"),
        )
    }

    fn raw(&self) -> Vec<u8> {
        serde_json::to_vec(&self.fields)
            .expect("a map of strings and lists of strings always serializes")
    }

    fn cloudevent(&self, source: &str, received: OffsetDateTime) -> CloudEvent {
        let mut data = self.fields.clone();
        if !self.tasks.is_empty() {
            let tasks = self.tasks.iter().cloned().map(Value::Object).collect();
            data.insert("tasks".into(), Value::Array(tasks));
        }
        let data = serde_json::value::to_raw_value(&data)
            .expect("a map of strings and lists always serializes");
        let id = event_id(&self.raw());
        CloudEvent::new(
            id,
            source,
            self.kind(),
            self.date.unwrap_or(received),
            self.get("bug-number").map(str::to_owned),
            data,
        )
    }
}

impl LaunchpadEvent {
    /// From a published payload: lpmqtt's dict (raw), or the CloudEvents
    /// `data` (the dict plus `tasks`).
    pub fn from_payload(data: &Value) -> Option<LaunchpadEvent> {
        let mut fields = data.as_object()?.clone();
        let tasks = match fields.remove("tasks") {
            Some(Value::Array(t)) => t
                .into_iter()
                .filter_map(|t| match t {
                    Value::Object(o) => Some(o),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Some(LaunchpadEvent {
            fields,
            tasks,
            message_id: None,
            date: None,
        })
    }

    /// CloudEvents `type`: `launchpad.<event type>`.
    pub fn kind(&self) -> String {
        format!("launchpad.{}", self.event_type())
    }

    /// What a reader of lpmqtt's payload `raw` gets: the envelope's
    /// attributes (the time is the mail's, which the payload does not
    /// carry).
    pub(crate) fn attributes(&self, raw: &[u8]) -> crate::envelope::Attributes {
        crate::envelope::Attributes {
            kind: self.kind(),
            id: Some(event_id(raw)),
            subject: self.bug_number().map(str::to_owned),
            time: self.date.map(crate::envelope::rfc3339),
        }
    }

    /// The bug number, for bug mail.
    pub fn bug_number(&self) -> Option<&str> {
        self.get("bug-number")
    }

    /// The project (or distribution) the notification is about.
    pub fn project(&self) -> Option<&str> {
        self.get("project")
    }
}
