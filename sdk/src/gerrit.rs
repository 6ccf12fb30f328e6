//! `gerrit stream-events` output: one JSON object per line.
//!
//! Parsed leniently, because what Gerrit prints changed over the years:
//! `change.number` is a string on 2.x and an integer later, old events lack
//! `eventCreatedOn`, the webhooks plugin writes `"project": {"name": ...}`.
//! Unknown event types are fine: they are published under their own name.

use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use time::OffsetDateTime;

use crate::envelope::{stable_id, CloudEvent};
use crate::topic;

/// Why a line is not a gerrit event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The line is not UTF-8.
    #[error("line is not UTF-8")]
    NotUtf8,
    /// The line is not JSON.
    #[error("line is not JSON: {0}")]
    NotJson(String),
    /// The line is JSON but not an object.
    #[error("line is JSON but not an object")]
    NotObject,
    /// The event has no `type`.
    #[error("event has no \"type\"")]
    NoType,
}

/// One gerrit event, with its original text kept for raw mode and `data`.
///
/// What every event needs (type, project, change number, ref, time) is
/// read once, without building the JSON tree; the whole event as a
/// [`Value`] is built the first time an accessor needs it. A reader that
/// only routes events by type and project never pays for the tree.
#[derive(Debug, Clone)]
pub struct GerritEvent {
    /// Valid JSON (the head parse read all of it).
    text: Box<str>,
    head: Head,
    value: OnceLock<Value>,
}

/// The fields every event is routed and named by.
#[derive(Debug, Clone, Default)]
struct Head {
    kind: String,
    project: String,
    change_number: Option<String>,
    ref_name: Option<String>,
    created: Option<i64>,
}

/// What gerrit may write where a field is expected: scalars of any type
/// are read leniently, nested objects by the few keys used.
#[derive(Debug, Default, serde::Deserialize)]
struct HeadJson {
    #[serde(rename = "type")]
    kind: Option<Value>,
    project: Option<Value>,
    #[serde(rename = "projectName")]
    project_name: Option<Value>,
    change: Option<Part>,
    #[serde(rename = "refUpdate")]
    ref_update: Option<Part>,
    #[serde(rename = "eventCreatedOn")]
    created: Option<Value>,
}

/// `change` or `refUpdate`: the keys the head needs; anything that is not
/// an object reads as empty.
#[derive(Debug, Default)]
struct Part {
    project: Option<Value>,
    number: Option<Value>,
    ref_name: Option<Value>,
}

impl<'de> serde::Deserialize<'de> for Part {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Part, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Part;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Part, A::Error> {
                let mut p = Part::default();
                while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    match k.as_ref() {
                        "project" => p.project = Some(m.next_value()?),
                        "number" => p.number = Some(m.next_value()?),
                        "refName" => p.ref_name = Some(m.next_value()?),
                        _ => {
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(p)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Part, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Part::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<Part, E> {
                Ok(Part::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Part, E> {
                Ok(Part::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Part, E> {
                Ok(Part::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Part, E> {
                Ok(Part::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<Part, E> {
                Ok(Part::default())
            }
            fn visit_unit<E>(self) -> Result<Part, E> {
                Ok(Part::default())
            }
        }
        d.deserialize_any(V)
    }
}

impl HeadJson {
    fn into_head(self) -> Result<Head, ParseError> {
        let kind = match self.kind {
            Some(Value::String(t)) if !t.is_empty() => t,
            _ => return Err(ParseError::NoType),
        };
        let name = |p: &Option<Value>| match p.as_ref()? {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("name").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        };
        let change = self.change.unwrap_or_default();
        let ref_update = self.ref_update.unwrap_or_default();
        let project = name(&self.project)
            .or_else(|| name(&change.project))
            .or_else(|| name(&ref_update.project))
            .or_else(|| match &self.project_name {
                Some(Value::String(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let change_number = match change.number {
            Some(Value::String(s)) => Some(s),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let ref_name = match ref_update.ref_name {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let created = match self.created {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        Ok(Head {
            kind,
            project,
            change_number,
            ref_name,
            created,
        })
    }
}

impl GerritEvent {
    /// Parses one line (without its newline; a trailing `\r` is ignored).
    pub fn parse(line: &[u8]) -> Result<GerritEvent, ParseError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let s = std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?;
        GerritEvent::from_text(s.trim())
    }

    /// An event from its JSON text (a reader's payload, or the `data` of a
    /// CloudEvent): one pass reads the head and checks the whole text is
    /// JSON; the tree is not built.
    pub fn from_text(text: &str) -> Result<GerritEvent, ParseError> {
        if !text.starts_with('{') {
            return match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => Err(ParseError::NotObject),
                Err(e) => Err(ParseError::NotJson(e.to_string())),
            };
        }
        let head: HeadJson =
            serde_json::from_str(text).map_err(|e| ParseError::NotJson(e.to_string()))?;
        Ok(GerritEvent {
            head: head.into_head()?,
            text: text.into(),
            value: OnceLock::new(),
        })
    }

    /// An event already parsed as JSON: the text is written back from the
    /// value.
    pub fn from_value(value: Value) -> Result<GerritEvent, ParseError> {
        if !value.is_object() {
            return Err(ParseError::NotObject);
        }
        let head = HeadJson::deserialize(&value)
            .map_err(|e| ParseError::NotJson(e.to_string()))?
            .into_head()?;
        let text = value.to_string().into();
        Ok(GerritEvent {
            text,
            head,
            value: OnceLock::from(value),
        })
    }

    /// The event type, e.g. `comment-added`.
    pub fn event_type(&self) -> &str {
        &self.head.kind
    }

    /// The whole event as JSON (built on first use).
    pub fn value(&self) -> &Value {
        self.value
            .get_or_init(|| serde_json::from_str(&self.text).unwrap_or(Value::Null))
    }

    /// The event exactly as gerrit printed it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The project, as germqtt found it: top-level `project` (a string, or
    /// an object with `name` from the webhooks plugin), else
    /// `change.project`, else `refUpdate.project`; `project-created` names
    /// it in `projectName`. Empty when the event has none.
    pub fn project(&self) -> String {
        self.head.project.clone()
    }

    /// The change number, whether gerrit wrote it as a string or an integer.
    pub fn change_number(&self) -> Option<String> {
        self.head.change_number.clone()
    }

    /// When the event happened: `eventCreatedOn` (epoch seconds, number or
    /// string), when present.
    pub fn created(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp(self.head.created?).ok()
    }

    /// What the event is about: the change number, else the ref name, else
    /// the project.
    pub fn subject(&self) -> Option<String> {
        self.change_number()
            .or_else(|| self.head.ref_name.clone())
            .or_else(|| Some(self.project()).filter(|p| !p.is_empty()))
    }

    /// `gerrit/<project>/<event-type>`.
    pub fn topic(&self) -> String {
        topic::gerrit(&self.head.project, &self.head.kind)
    }

    /// Stable id: derived from the line, so two bridges on the same gerrit
    /// give the same event the same id.
    pub fn id(&self) -> String {
        stable_id("gerrit", self.text().as_bytes())
    }

    /// CloudEvents `type`: `gerrit.<event type>`.
    pub fn kind(&self) -> String {
        format!("gerrit.{}", self.head.kind)
    }

    /// What a reader of the raw line gets: the envelope's attributes.
    pub(crate) fn attributes(&self) -> crate::envelope::Attributes {
        crate::envelope::Attributes {
            kind: self.kind(),
            id: Some(self.id()),
            subject: self.subject(),
            time: self.created().map(crate::envelope::rfc3339),
        }
    }

    /// The CloudEvents envelope. `received` is used when the event does not
    /// say when it happened.
    pub fn to_cloudevent(&self, source: &str, received: OffsetDateTime) -> CloudEvent {
        CloudEvent::new(
            self.id(),
            source,
            self.kind(),
            self.created().unwrap_or(received),
            self.subject(),
            // Valid JSON by construction: the fallback is never taken.
            RawValue::from_string(self.text.to_string())
                .unwrap_or_else(|_| RawValue::NULL.to_owned()),
        )
    }
}

/// One vote in a `comment-added` (or `patchset-created`) event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The label: `Code-Review`, `Verified`, `Workflow`, ...
    pub label: String,
    /// The vote, e.g. -2..+2 (gerrit writes it as a string).
    pub value: i32,
    /// The previous vote, when the event says.
    pub old_value: Option<i32>,
}

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Full name.
    pub name: Option<String>,
    /// E-mail address.
    pub email: Option<String>,
    /// Gerrit user name.
    pub username: Option<String>,
}

impl Account {
    fn from(v: &Value) -> Option<Account> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        v.is_object().then(|| Account {
            name: s("name"),
            email: s("email"),
            username: s("username"),
        })
    }

    /// The name, else the username, else the email.
    pub fn display(&self) -> &str {
        self.name
            .as_deref()
            .or(self.username.as_deref())
            .or(self.email.as_deref())
            .unwrap_or("")
    }
}

impl GerritEvent {
    /// The votes the event carries (`approvals`).
    pub fn approvals(&self) -> Vec<Approval> {
        let num = |v: Option<&Value>| match v? {
            Value::String(s) => s.trim().parse().ok(),
            Value::Number(n) => n.as_i64().map(|n| n as i32),
            _ => None,
        };
        self.value()
            .get("approvals")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|a| {
                        Some(Approval {
                            label: a.get("type")?.as_str()?.to_owned(),
                            value: num(a.get("value"))?,
                            old_value: num(a.get("oldValue")),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Who acted: the comment's author, the uploader, the submitter, ...
    pub fn actor(&self) -> Option<Account> {
        [
            "author",
            "uploader",
            "submitter",
            "abandoner",
            "restorer",
            "changer",
            "reviewer",
        ]
        .iter()
        .find_map(|k| self.value().get(*k).and_then(Account::from))
    }

    /// The change's owner.
    pub fn owner(&self) -> Option<Account> {
        self.value()
            .pointer("/change/owner")
            .and_then(Account::from)
    }

    /// The change's subject line.
    pub fn change_subject(&self) -> Option<&str> {
        self.value()
            .pointer("/change/subject")
            .and_then(Value::as_str)
    }

    /// The patch set number, when the event is about one.
    pub fn patchset(&self) -> Option<u32> {
        match self.value().pointer("/patchSet/number")? {
            Value::String(s) => s.parse().ok(),
            Value::Number(n) => n.as_u64().map(|n| n as u32),
            _ => None,
        }
    }

    /// The comment text (`comment-added`).
    pub fn comment(&self) -> Option<&str> {
        self.value().get("comment").and_then(Value::as_str)
    }
}

impl crate::Publishable for GerritEvent {
    fn topic(&self) -> String {
        GerritEvent::topic(self)
    }
    fn raw(&self) -> Vec<u8> {
        self.text().as_bytes().to_vec()
    }
    fn cloudevent(&self, source: &str, received: OffsetDateTime) -> CloudEvent {
        self.to_cloudevent(source, received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_and_people() {
        let g = GerritEvent::parse(br#"{"type":"comment-added","change":{"project":"p","number":3,"subject":"Fix","owner":{"name":"O"}},"patchSet":{"number":"2"},"author":{"username":"rev"},"approvals":[{"type":"Code-Review","value":"-1","oldValue":"0"},{"type":"Verified","value":1}],"comment":"nope"}"#).unwrap();
        let a = g.approvals();
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].label.as_str(), a[0].value, a[0].old_value),
            ("Code-Review", -1, Some(0))
        );
        assert_eq!(a[1].value, 1);
        assert_eq!(g.actor().unwrap().display(), "rev");
        assert_eq!(g.owner().unwrap().display(), "O");
        assert_eq!(
            (g.change_subject(), g.patchset(), g.comment()),
            (Some("Fix"), Some(2), Some("nope"))
        );
    }

    #[test]
    fn number_as_string_or_int_and_project_shapes() {
        let a = GerritEvent::parse(br#"{"type":"x","change":{"project":"a/b","number":"12"}}"#)
            .unwrap();
        assert_eq!(a.change_number().as_deref(), Some("12"));
        assert_eq!(a.topic(), "gerrit/a/b/x");
        let b =
            GerritEvent::parse(br#"{"type":"x","project":{"name":"p"},"change":{"number":12}}"#)
                .unwrap();
        assert_eq!(b.change_number().as_deref(), Some("12"));
        assert_eq!(b.topic(), "gerrit/p/x");
        let c =
            GerritEvent::parse(br#"{"type":"project-created","projectName":"new/one"}"#).unwrap();
        assert_eq!(c.topic(), "gerrit/new/one/project-created");
        let d = GerritEvent::parse(
            br#"{"type":"ref-updated","refUpdate":{"project":"r","refName":"refs/heads/m"}}"#,
        )
        .unwrap();
        assert_eq!(d.topic(), "gerrit/r/ref-updated");
        assert_eq!(d.subject().as_deref(), Some("refs/heads/m"));
    }

    #[test]
    fn bad_lines() {
        assert_eq!(
            GerritEvent::parse(b"\xff\xfe").unwrap_err(),
            ParseError::NotUtf8
        );
        assert!(matches!(
            GerritEvent::parse(b"{\"type\":"),
            Err(ParseError::NotJson(_))
        ));
        assert_eq!(
            GerritEvent::parse(b"[1]").unwrap_err(),
            ParseError::NotObject
        );
        assert_eq!(
            GerritEvent::parse(b"{\"a\":1}").unwrap_err(),
            ParseError::NoType
        );
        assert!(GerritEvent::parse(b"{\"type\":\"x\"}\r").is_ok());
    }

    #[test]
    fn every_fixture_line_parses() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/gerrit/stream-events.jsonl"
        );
        let text = std::fs::read(path).expect("fixtures/gerrit/stream-events.jsonl in the repo");
        let mut n = 0;
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let ev = GerritEvent::parse(line)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(line)));
            assert!(ev.topic().starts_with("gerrit/"));
            assert_eq!(ev.text().as_bytes(), line, "text kept byte for byte");
            let ce = ev.to_cloudevent("ssh://gerrit", OffsetDateTime::UNIX_EPOCH);
            assert_eq!(ce.kind, format!("gerrit.{}", ev.event_type()));
            n += 1;
        }
        assert_eq!(n, 26);
    }
}
