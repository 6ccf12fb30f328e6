//! The CloudEvents 1.0 envelope (structured JSON mode) every bridge puts
//! around a source event, unless it runs in raw mode.
//!
//! `data` is kept as the source's own JSON text ([`RawValue`]), so the event
//! inside the envelope is byte-for-byte what the source sent. The `id` is
//! derived from the source event ([`stable_id`]) or taken from it (nova's
//! `message_id`), never random: two bridges reading the same source, or one
//! bridge sending the same event twice, produce the same id, and subscribers
//! can drop duplicates by id.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// A CloudEvents 1.0 event in structured JSON form.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloudEvent {
    /// Always "1.0".
    pub specversion: String,
    /// Stable per source event (see the module doc).
    pub id: String,
    /// URI of the system the event came from, e.g. `ssh://review.example.org:29418`.
    pub source: String,
    /// `<service>.<event type>`, e.g. `gerrit.comment-added`, `nova.instance.create.end`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened (RFC 3339), from the source event when it says.
    pub time: String,
    /// What it is about: a change number, a bug, an instance uuid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Always "application/json".
    pub datacontenttype: String,
    /// The source event, as the source wrote it.
    pub data: Box<RawValue>,
}

impl CloudEvent {
    /// An event with the fixed fields filled in.
    pub fn new(
        id: String,
        source: &str,
        kind: String,
        time: OffsetDateTime,
        subject: Option<String>,
        data: Box<RawValue>,
    ) -> CloudEvent {
        CloudEvent {
            specversion: "1.0".to_owned(),
            id,
            source: source.to_owned(),
            kind,
            time: rfc3339(time),
            subject,
            datacontenttype: "application/json".to_owned(),
            data,
        }
    }

    /// The JSON text of the envelope.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self)
            .expect("a CloudEvent is strings and an already-valid RawValue: it always serializes")
    }
}

/// An event's normalized attributes, as its family's module names them
/// for a reader of the source's own payload (raw mode). The bridge's
/// CloudEvents envelope is built from the same methods of the same module
/// (`kind`, `id`, `subject`), so both modes read back alike; the round
/// trips in `sdk/tests/reader.rs` hold that per family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Attributes {
    /// CloudEvents `type`.
    pub(crate) kind: String,
    pub(crate) id: Option<String>,
    pub(crate) subject: Option<String>,
    /// When it happened (RFC 3339), when the payload says.
    pub(crate) time: Option<String>,
}

/// A stable id for an event that has none of its own: the first 128 bits of
/// SHA-256 over `namespace`, a NUL, and the event's bytes, in hex.
pub fn stable_id(namespace: &str, bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(namespace.as_bytes());
    h.update([0u8]);
    h.update(bytes);
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A time given as seconds since the Unix epoch with a fraction (Python's
/// `time.time()`, as ansible, subunit and Zuul write it).
pub fn unix_seconds(t: f64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos((t * 1e9) as i128).ok()
}

/// RFC 3339 with a `Z` for UTC, as CloudEvents asks.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_fields() {
        let data = RawValue::from_string(r#"{"a":1,"b":"\u0027"}"#.to_owned()).unwrap();
        let t = OffsetDateTime::from_unix_timestamp(1_753_736_174).unwrap();
        let ev = CloudEvent::new(
            stable_id("gerrit", b"x"),
            "ssh://review.example.org:29418",
            "gerrit.comment-added".into(),
            t,
            Some("30623".into()),
            data,
        );
        let json: serde_json::Value = serde_json::from_slice(&ev.to_json()).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "gerrit.comment-added");
        assert_eq!(json["time"], "2025-07-28T20:56:14Z");
        assert_eq!(json["datacontenttype"], "application/json");
        assert_eq!(json["subject"], "30623");
        assert_eq!(json["id"].as_str().unwrap().len(), 32);
        // The data is the source's own text, escapes included.
        assert!(String::from_utf8(ev.to_json())
            .unwrap()
            .contains(r#""data":{"a":1,"b":"\u0027"}"#));
    }

    #[test]
    fn ids_are_stable_and_namespaced() {
        assert_eq!(stable_id("gerrit", b"line"), stable_id("gerrit", b"line"));
        assert_ne!(stable_id("gerrit", b"line"), stable_id("nova", b"line"));
        assert_ne!(stable_id("gerrit", b"line"), stable_id("gerrit", b"line2"));
    }
}
