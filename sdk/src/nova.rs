//! Nova notifications as oslo.messaging puts them on RabbitMQ.
//!
//! Two body shapes: the `messagingv2` envelope
//! `{"oslo.version": "2.0", "oslo.message": "<JSON text>"}` and the bare
//! message of the old `messaging` driver. Inside: `message_id`,
//! `publisher_id`, `event_type`, `priority`, `payload`, `timestamp`
//! (`YYYY-MM-DD HH:MM:SS[.ffffff]`, UTC), plus `_unique_id` and `_context_*`
//! keys. Versioned payloads are nova objects (`nova_object.name`,
//! `nova_object.data`, ...); legacy ones are flat dicts.

use serde_json::value::RawValue;
use serde_json::Value;
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::envelope::{stable_id, CloudEvent};
use crate::topic;

/// Why a body is not a nova notification.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The body is not JSON.
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not an object.
    #[error("body is JSON but not an object")]
    NotObject,
    /// `oslo.message` is not a JSON object in a string.
    #[error("oslo.message is not a JSON object in a string: {0}")]
    BadEnvelope(String),
    /// The notification has no `event_type`.
    #[error("notification has no event_type")]
    NoEventType,
}

/// Which body shape it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// `messagingv2`: `{"oslo.version": "2.0", "oslo.message": "..."}`.
    Oslo2,
    /// `messaging` (1.0): the message itself.
    Bare,
}

/// One nova notification.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The inner message exactly as nova wrote it.
    text: Box<RawValue>,
    value: Value,
    event_type: String,
    /// How the message sat on RabbitMQ (oslo 2.0 envelope or bare).
    pub envelope: Envelope,
}

/// The `event_type` of a notification's inner message.
fn event_type_of(value: &Value) -> Result<String, ParseError> {
    value
        .get("event_type")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or(ParseError::NoEventType)
}

impl Notification {
    /// A notification's inner message already parsed as JSON (what the
    /// bridge publishes): no second parse.
    pub fn from_value(value: Value) -> Result<Notification, ParseError> {
        if !value.is_object() {
            return Err(ParseError::NotObject);
        }
        let event_type = event_type_of(&value)?;
        let text = serde_json::value::to_raw_value(&value)
            .map_err(|e| ParseError::NotJson(e.to_string()))?;
        Ok(Notification {
            text,
            value,
            event_type,
            envelope: Envelope::Bare,
        })
    }

    /// Parses an AMQP message body.
    pub fn parse(body: &[u8]) -> Result<Notification, ParseError> {
        let outer: Value =
            serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
        let obj = outer.as_object().ok_or(ParseError::NotObject)?;
        let (text, envelope) = match obj.get("oslo.message") {
            Some(Value::String(inner)) => {
                let raw: Box<RawValue> = serde_json::from_str(inner)
                    .map_err(|e| ParseError::BadEnvelope(e.to_string()))?;
                (raw, Envelope::Oslo2)
            }
            Some(_) => return Err(ParseError::BadEnvelope("not a string".into())),
            None => {
                let s =
                    std::str::from_utf8(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
                let raw: Box<RawValue> = serde_json::from_str(s.trim())
                    .map_err(|e| ParseError::NotJson(e.to_string()))?;
                (raw, Envelope::Bare)
            }
        };
        let value: Value = match envelope {
            Envelope::Bare => outer,
            Envelope::Oslo2 => serde_json::from_str(text.get())
                .map_err(|e| ParseError::BadEnvelope(e.to_string()))?,
        };
        if !value.is_object() {
            return Err(ParseError::BadEnvelope(
                "the message is not an object".into(),
            ));
        }
        let event_type = event_type_of(&value)?;
        Ok(Notification {
            text,
            value,
            event_type,
            envelope,
        })
    }

    /// `compute.instance.create.end`, `instance.create.end`, `service.update`, ...
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The inner message as JSON.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The inner message exactly as nova wrote it (raw mode's payload).
    pub fn text(&self) -> &str {
        self.text.get()
    }

    /// `message_id`, or an id derived from the message when it has none.
    pub fn message_id(&self) -> String {
        self.value
            .get("message_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| stable_id("nova", self.text().as_bytes()))
    }

    /// The payload.
    pub fn payload(&self) -> &Value {
        self.value.get("payload").unwrap_or(&Value::Null)
    }

    /// The versioned payload's `nova_object.data`, if it is a nova object.
    pub fn object_data(&self) -> Option<&Value> {
        self.payload().get("nova_object.data")
    }

    /// The versioned payload's `nova_object.name`.
    pub fn object_name(&self) -> Option<&str> {
        self.payload()
            .get("nova_object.name")
            .and_then(Value::as_str)
    }

    /// When nova sent it (`timestamp`, UTC), when readable.
    pub fn timestamp(&self) -> Option<OffsetDateTime> {
        let ts = self.value.get("timestamp")?.as_str()?;
        parse_timestamp(ts)
    }

    /// The instance it is about: a versioned `Instance*Payload`'s uuid, or
    /// a legacy payload's `instance_id` / `instance_uuid`.
    pub fn instance_uuid(&self) -> Option<String> {
        if let (Some(name), Some(data)) = (self.object_name(), self.object_data()) {
            if name.starts_with("Instance") {
                return data.get("uuid").and_then(Value::as_str).map(str::to_owned);
            }
            return None;
        }
        let p = self.payload();
        p.get("instance_id")
            .or_else(|| p.get("instance_uuid"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// `nova/<deployment>/<event type, dots as levels>`.
    pub fn topic(&self, deployment: &str) -> String {
        topic::nova(deployment, &self.event_type)
    }

    /// The CloudEvents envelope: `id` = message_id, `type` =
    /// `nova.<event_type>`, `time` from the timestamp, `subject` = the
    /// instance uuid, `data` = the inner message.
    pub fn to_cloudevent(&self, source: &str, received: OffsetDateTime) -> CloudEvent {
        CloudEvent::new(
            self.message_id(),
            source,
            self.kind(),
            self.timestamp().unwrap_or(received),
            self.instance_uuid(),
            self.text.clone(),
        )
    }

    /// CloudEvents `type`: `nova.<event type>`.
    pub fn kind(&self) -> String {
        format!("nova.{}", self.event_type)
    }

    /// What a reader of the raw notification gets: the envelope's
    /// attributes.
    pub(crate) fn attributes(&self) -> crate::envelope::Attributes {
        crate::envelope::Attributes {
            kind: self.kind(),
            id: Some(self.message_id()),
            subject: self.instance_uuid(),
            time: self.timestamp().map(crate::envelope::rfc3339),
        }
    }

    /// For `service.*` notifications with a `ServiceStatusPayload`: the
    /// service's state, to keep as a retained message.
    pub fn service_status(&self) -> Option<ServiceStatus> {
        if !self.event_type.starts_with("service.")
            || self.object_name() != Some("ServiceStatusPayload")
        {
            return None;
        }
        let d = self.object_data()?;
        let s = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_owned);
        let b = |k: &str| d.get(k).and_then(Value::as_bool).unwrap_or(false);
        Some(ServiceStatus {
            host: s("host")?,
            binary: s("binary")?,
            deleted: self.event_type == "service.delete",
            disabled: b("disabled"),
            disabled_reason: s("disabled_reason"),
            forced_down: b("forced_down"),
            last_seen_up: s("last_seen_up"),
            uuid: s("uuid"),
            updated: self.timestamp(),
        })
    }
}

/// The state of one nova service, from `service.create/update/delete`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    /// The service's host.
    pub host: String,
    /// `nova-compute`, `nova-scheduler`, ...
    pub binary: String,
    /// `service.delete`: the service is gone.
    pub deleted: bool,
    /// Takes no new work (still up).
    pub disabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// Told it is down.
    pub forced_down: bool,
    /// When nova last heard from it.
    pub last_seen_up: Option<String>,
    /// The service's uuid.
    pub uuid: Option<String>,
    /// When the notification was sent.
    pub updated: Option<OffsetDateTime>,
}

impl ServiceStatus {
    /// "up" unless nova was told it is down (`forced_down`) or it was
    /// deleted. `disabled` only means it takes no new work: it is still up.
    pub fn state(&self) -> &'static str {
        if self.deleted || self.forced_down {
            "down"
        } else {
            "up"
        }
    }

    /// `nova/<deployment>/service/<binary>/<host>`.
    pub fn topic(&self, deployment: &str) -> String {
        topic::nova_service(deployment, &self.binary, &self.host)
    }

    /// The retained JSON: state, disabled, forced_down, last_seen_up, ...
    pub fn to_json(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "state": self.state(),
            "host": self.host,
            "binary": self.binary,
            "disabled": self.disabled,
            "disabled_reason": self.disabled_reason,
            "forced_down": self.forced_down,
            "last_seen_up": self.last_seen_up,
            "deleted": self.deleted,
            "uuid": self.uuid,
            "updated": self.updated.map(crate::envelope::rfc3339),
        });
        serde_json::to_vec(&v)
            .expect("a json! value of strings and bools always serializes (never empty: an empty retained payload would delete the state)")
    }
}

/// A nova service's retained state as published on
/// `nova/<deployment>/service/<binary>/<host>` ([`ServiceStatus::to_json`]),
/// read back by subscribers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceState {
    /// `up` or `down`.
    pub state: String,
    /// The service's host.
    pub host: String,
    /// `nova-compute`, `nova-scheduler`, ...
    pub binary: String,
    #[serde(default)]
    /// Takes no new work (still up).
    pub disabled: bool,
    #[serde(default)]
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    #[serde(default)]
    /// Told it is down.
    pub forced_down: bool,
    #[serde(default)]
    /// When nova last heard from it.
    pub last_seen_up: Option<String>,
    #[serde(default)]
    /// The service was deleted.
    pub deleted: bool,
    #[serde(default)]
    /// The service's uuid.
    pub uuid: Option<String>,
    /// When nova said so (RFC 3339).
    #[serde(default)]
    pub updated: Option<String>,
}

impl ServiceState {
    /// True unless nova was told the service is down or it was deleted.
    pub fn is_up(&self) -> bool {
        self.state == "up"
    }

    /// A reader's attributes of the retained state (never an envelope: it
    /// is state, not an event, so it has no id): `nova.service`, about
    /// `<binary>/<host>`.
    pub(crate) fn attributes(&self) -> crate::envelope::Attributes {
        crate::envelope::Attributes {
            kind: "nova.service".into(),
            id: None,
            subject: Some(format!("{}/{}", self.binary, self.host)),
            time: self.updated.clone(),
        }
    }
}

/// A notification as one deployment publishes it: the topic needs the
/// deployment's name.
pub struct InDeployment<'a> {
    /// The notification.
    pub notification: &'a Notification,
    /// Its deployment's name (the topic's second level).
    pub deployment: &'a str,
}

impl Notification {
    /// This notification, addressed to `deployment`'s topics.
    pub fn in_deployment<'a>(&'a self, deployment: &'a str) -> InDeployment<'a> {
        InDeployment {
            notification: self,
            deployment,
        }
    }
}

impl crate::Publishable for InDeployment<'_> {
    fn topic(&self) -> String {
        self.notification.topic(self.deployment)
    }
    fn raw(&self) -> Vec<u8> {
        self.notification.text().as_bytes().to_vec()
    }
    fn cloudevent(&self, source: &str, received: OffsetDateTime) -> CloudEvent {
        self.notification.to_cloudevent(source, received)
    }
}

/// Python's `str(datetime)`: `YYYY-MM-DD HH:MM:SS[.ffffff]`, taken as UTC;
/// RFC 3339 is accepted too.
pub fn parse_timestamp(ts: &str) -> Option<OffsetDateTime> {
    let with_frac = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]"
    );
    let plain = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    PrimitiveDateTime::parse(ts, &with_frac)
        .or_else(|_| PrimitiveDateTime::parse(ts, &plain))
        .map(PrimitiveDateTime::assume_utc)
        .ok()
        .or_else(|| OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_bodies(name: &str) -> Vec<(String, Vec<u8>)> {
        let path = format!("{}/../fixtures/nova/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(path)
            .expect("fixtures/nova in the repo")
            .lines()
            .map(|l| {
                let m: Value = serde_json::from_str(l).unwrap();
                (
                    m["routing_key"].as_str().unwrap().to_owned(),
                    m["body"].as_str().unwrap().as_bytes().to_vec(),
                )
            })
            .collect()
    }

    #[test]
    fn every_fixture_parses() {
        let mut n = 0;
        for name in ["versioned.jsonl", "legacy.jsonl"] {
            for (_, body) in fixture_bodies(name) {
                let ev = Notification::parse(&body).unwrap_or_else(|e| panic!("{e}"));
                assert!(ev.timestamp().is_some(), "{}", ev.event_type());
                assert!(ev.topic("cell1").starts_with("nova/cell1/"));
                let ce = ev.to_cloudevent("amqp://rabbit/nova", OffsetDateTime::UNIX_EPOCH);
                assert_eq!(ce.id, ev.value()["message_id"].as_str().unwrap());
                n += 1;
            }
        }
        assert_eq!(n, 116);
    }

    #[test]
    fn shapes_topics_subjects() {
        let v2 = br#"{"oslo.version": "2.0", "oslo.message": "{\"message_id\": \"m1\", \"event_type\": \"instance.create.end\", \"timestamp\": \"2025-06-03 14:09:38\", \"payload\": {\"nova_object.name\": \"InstanceCreatePayload\", \"nova_object.data\": {\"uuid\": \"u1\"}}}"}"#;
        let ev = Notification::parse(v2).unwrap();
        assert_eq!(ev.envelope, Envelope::Oslo2);
        assert_eq!(ev.topic("cell1"), "nova/cell1/instance/create/end");
        assert_eq!(ev.instance_uuid().as_deref(), Some("u1"));
        assert_eq!(
            ev.text(),
            r#"{"message_id": "m1", "event_type": "instance.create.end", "timestamp": "2025-06-03 14:09:38", "payload": {"nova_object.name": "InstanceCreatePayload", "nova_object.data": {"uuid": "u1"}}}"#
        );
        let bare = br#"{"message_id": "m2", "event_type": "compute.instance.create.end", "payload": {"instance_id": "u2"}}"#;
        let ev = Notification::parse(bare).unwrap();
        assert_eq!(ev.envelope, Envelope::Bare);
        assert_eq!(ev.topic("cell1"), "nova/cell1/compute/instance/create/end");
        assert_eq!(ev.instance_uuid().as_deref(), Some("u2"));
        assert!(ev.timestamp().is_none());
    }

    #[test]
    fn bad_bodies() {
        assert!(matches!(
            Notification::parse(b"nope"),
            Err(ParseError::NotJson(_))
        ));
        assert_eq!(
            Notification::parse(b"[1]").unwrap_err(),
            ParseError::NotObject
        );
        assert!(matches!(
            Notification::parse(br#"{"oslo.version": "2.0", "oslo.message": "{broken"}"#),
            Err(ParseError::BadEnvelope(_))
        ));
        assert_eq!(
            Notification::parse(br#"{"message_id": "x", "payload": {}}"#).unwrap_err(),
            ParseError::NoEventType
        );
    }

    #[test]
    fn service_status_from_the_fixture() {
        let (_, body) = fixture_bodies("versioned.jsonl")
            .into_iter()
            .find(|(_, b)| String::from_utf8_lossy(b).contains("service.update"))
            .unwrap();
        let s = Notification::parse(&body)
            .unwrap()
            .service_status()
            .unwrap();
        assert_eq!(
            (s.host.as_str(), s.binary.as_str()),
            ("host1", "nova-compute")
        );
        assert_eq!(s.state(), "up");
        assert_eq!(s.topic("cell1"), "nova/cell1/service/nova-compute/host1");
        let json: Value = serde_json::from_slice(&s.to_json()).unwrap();
        assert_eq!(json["last_seen_up"], "2012-10-29T13:42:05Z");
        assert_eq!(json["forced_down"], false);
    }
}
