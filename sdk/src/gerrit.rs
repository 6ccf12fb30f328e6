//! `gerrit stream-events` output: one JSON object per line.
//!
//! Parsed leniently, because what Gerrit prints changed over the years:
//! `change.number` is a string on 2.x and an integer later, old events lack
//! `eventCreatedOn`, the webhooks plugin writes `"project": {"name": ...}`.
//! Unknown event types are fine: they are published under their own name.

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
#[derive(Debug, Clone)]
pub struct GerritEvent {
    text: Box<RawValue>,
    value: Value,
    kind: String,
}

/// The `type` of an event object.
fn kind_of(value: &Value) -> Result<String, ParseError> {
    if !value.is_object() {
        return Err(ParseError::NotObject);
    }
    value
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .ok_or(ParseError::NoType)
}

impl GerritEvent {
    /// Parses one line (without its newline; a trailing `\r` is ignored).
    pub fn parse(line: &[u8]) -> Result<GerritEvent, ParseError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let s = std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?;
        let text: Box<RawValue> =
            serde_json::from_str(s.trim_end()).map_err(|e| ParseError::NotJson(e.to_string()))?;
        let value: Value =
            serde_json::from_str(text.get()).map_err(|e| ParseError::NotJson(e.to_string()))?;
        let kind = kind_of(&value)?;
        Ok(GerritEvent { text, value, kind })
    }

    /// An event already parsed as JSON (a reader's payload): no second
    /// parse, the text is written back from the value.
    pub fn from_value(value: Value) -> Result<GerritEvent, ParseError> {
        let kind = kind_of(&value)?;
        let text = serde_json::value::to_raw_value(&value)
            .map_err(|e| ParseError::NotJson(e.to_string()))?;
        Ok(GerritEvent { text, value, kind })
    }

    /// The event type, e.g. `comment-added`.
    pub fn event_type(&self) -> &str {
        &self.kind
    }

    /// The whole event as JSON.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The event exactly as gerrit printed it.
    pub fn text(&self) -> &str {
        self.text.get()
    }

    /// The project, as germqtt found it: top-level `project` (a string, or
    /// an object with `name` from the webhooks plugin), else
    /// `change.project`, else `refUpdate.project`; `project-created` names
    /// it in `projectName`. Empty when the event has none.
    pub fn project(&self) -> String {
        let v = &self.value;
        let name = |p: &Value| match p {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("name").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        };
        v.get("project")
            .and_then(name)
            .or_else(|| v.pointer("/change/project").and_then(name))
            .or_else(|| v.pointer("/refUpdate/project").and_then(name))
            .or_else(|| {
                v.get("projectName")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_default()
    }

    /// The change number, whether gerrit wrote it as a string or an integer.
    pub fn change_number(&self) -> Option<String> {
        match self.value.pointer("/change/number")? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// When the event happened: `eventCreatedOn` (epoch seconds, number or
    /// string), when present.
    pub fn created(&self) -> Option<OffsetDateTime> {
        let secs = match self.value.get("eventCreatedOn")? {
            Value::Number(n) => n.as_i64()?,
            Value::String(s) => s.parse().ok()?,
            _ => return None,
        };
        OffsetDateTime::from_unix_timestamp(secs).ok()
    }

    /// What the event is about: the change number, else the ref name, else
    /// the project.
    pub fn subject(&self) -> Option<String> {
        self.change_number()
            .or_else(|| {
                self.value
                    .pointer("/refUpdate/refName")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .or_else(|| Some(self.project()).filter(|p| !p.is_empty()))
    }

    /// `gerrit/<project>/<event-type>`.
    pub fn topic(&self) -> String {
        topic::gerrit(&self.project(), &self.kind)
    }

    /// Stable id: derived from the line, so two bridges on the same gerrit
    /// give the same event the same id.
    pub fn id(&self) -> String {
        stable_id("gerrit", self.text().as_bytes())
    }

    /// The CloudEvents envelope. `received` is used when the event does not
    /// say when it happened.
    pub fn to_cloudevent(&self, source: &str, received: OffsetDateTime) -> CloudEvent {
        CloudEvent::new(
            self.id(),
            source,
            format!("gerrit.{}", self.kind),
            self.created().unwrap_or(received),
            self.subject(),
            self.text.clone(),
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
        self.value
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
        .find_map(|k| self.value.get(*k).and_then(Account::from))
    }

    /// The change's owner.
    pub fn owner(&self) -> Option<Account> {
        self.value.pointer("/change/owner").and_then(Account::from)
    }

    /// The change's subject line.
    pub fn change_subject(&self) -> Option<&str> {
        self.value
            .pointer("/change/subject")
            .and_then(Value::as_str)
    }

    /// The patch set number, when the event is about one.
    pub fn patchset(&self) -> Option<u32> {
        match self.value.pointer("/patchSet/number")? {
            Value::String(s) => s.parse().ok(),
            Value::Number(n) => n.as_u64().map(|n| n as u32),
            _ => None,
        }
    }

    /// The comment text (`comment-added`).
    pub fn comment(&self) -> Option<&str> {
        self.value.get("comment").and_then(Value::as_str)
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
