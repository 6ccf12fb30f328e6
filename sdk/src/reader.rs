//! What a subscriber gets from one MQTT message: an [`Event`] of one shape
//! whatever the bridge's payload mode, plus the typed event ([`Body`]).
//!
//! A CloudEvents payload gives `id`, `source`, `type`, `time`, `subject` and
//! `data` as they are. A raw payload (what germqtt, lpmqtt and the ansible
//! plugin published) is read by its topic: `type` is derived the way the
//! bridges name it in CloudEvents mode (`gerrit.comment-added`,
//! `nova.compute.instance.create.end`, `launchpad.bug`, `ansible.task.ok`),
//! `data` is the payload, and the id is the one the bridge would have given
//! (so deduplication works across modes). Zuul's own reports are read
//! by their topic root (`zuul/` unless a [`Decoder`] says otherwise).
//! Nothing here fails: a payload that cannot be read is [`Body::Other`]
//! with the reason.
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

use std::borrow::Cow;
use std::ops::Range;
use std::sync::OnceLock;

use bytes::Bytes;
use serde::ser::{Serialize, SerializeStruct, Serializer};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use time::OffsetDateTime;

use crate::ansible::PublishedAnsible;
use crate::envelope::Attributes;
use crate::gerrit::GerritEvent;
use crate::launchpad::LaunchpadEvent;
use crate::nova::{Notification, ServiceState};
use crate::status::Status;
use crate::subunit::{PublishedRun, PublishedTest, FAMILY};
use crate::zuul::ZuulReport;

/// One event, normalized: what `firehose-sub --json` prints and what
/// `--where` and `--format` see (serialized as `topic`, `id`, `source`,
/// `type`, `time`, `subject`, `data`, `retained`).
///
/// The common fields are read when the message arrives, without building
/// a JSON tree; [`Event::data`] builds the tree the first time it is asked
/// for, so a reader that routes by type, subject or typed accessors does
/// not pay for it.
#[derive(Debug, Clone)]
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
    pub kind: String,
    /// When it happened (RFC 3339), when known.
    pub time: Option<String>,
    /// What it is about: a change, a bug, an instance, a host.
    pub subject: Option<String>,
    /// A retained message (state, not news).
    pub retained: bool,
    /// The payload exactly as it arrived.
    pub payload: Bytes,
    /// The typed event.
    pub body: Body,
    data: Data,
}

/// Where the event's `data` is, and its tree once built.
#[derive(Debug, Clone)]
struct Data {
    span: Span,
    value: OnceLock<Value>,
}

#[derive(Debug, Clone)]
enum Span {
    /// JSON at this range of the payload.
    Json(Range<usize>),
    /// The payload is not JSON: `data` is its text.
    Text,
    /// A CloudEvent without `data`.
    Null,
}

impl Event {
    /// The event itself: CloudEvents `data`, or the raw payload as JSON (a
    /// string when the payload is not JSON). Built on first use.
    pub fn data(&self) -> &Value {
        self.data.value.get_or_init(|| match &self.data.span {
            Span::Json(r) => {
                serde_json::from_slice(&self.payload[r.clone()]).unwrap_or(Value::Null)
            }
            Span::Text => Value::String(String::from_utf8_lossy(&self.payload).into_owned()),
            Span::Null => Value::Null,
        })
    }

    /// `data` as JSON text, exactly as it arrived when it was JSON (no tree
    /// built).
    pub fn data_json(&self) -> Cow<'_, str> {
        match (&self.data.span, self.data.value.get()) {
            (Span::Json(r), None) => String::from_utf8_lossy(&self.payload[r.clone()]),
            _ => Cow::Owned(self.data().to_string()),
        }
    }

    /// `data`'s JSON text, when it is JSON.
    fn data_text(&self) -> Option<&str> {
        match &self.data.span {
            Span::Json(r) => std::str::from_utf8(&self.payload[r.clone()]).ok(),
            _ => None,
        }
    }

    /// [`Event::time`] parsed, when it is RFC 3339.
    pub fn time_parsed(&self) -> Option<OffsetDateTime> {
        let t = self.time.as_deref()?;
        OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Event", 8)?;
        st.serialize_field("topic", &self.topic)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("source", &self.source)?;
        st.serialize_field("type", &self.kind)?;
        st.serialize_field("time", &self.time)?;
        st.serialize_field("subject", &self.subject)?;
        st.serialize_field("data", self.data())?;
        st.serialize_field("retained", &self.retained)?;
        st.end()
    }
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
    /// A processed test-result stream (`firehose-subunit`).
    Subunit(PublishedRun),
    /// One finished test of a run (`firehose-subunit --per-test`).
    SubunitTest(PublishedTest),
    /// A Zuul pipeline item's report (Zuul's MQTT reporter).
    Zuul(Box<ZuulReport>),
    /// A bridge's retained liveness message.
    Status(Box<Status>),
    /// Not a firehose event, or one that could not be read (`reason`).
    Other {
        /// Why it could not be read as the event its topic promised.
        reason: Option<String>,
    },
}

/// The CloudEvents attributes, read without building the payload's tree
/// (`data` stays text). Attributes that are not strings are ignored.
#[derive(Deserialize)]
struct Envelope<'a> {
    specversion: Option<Value>,
    id: Option<Value>,
    source: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<Value>,
    time: Option<Value>,
    subject: Option<Value>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

fn string(v: Option<Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// Where `inner` (a slice of `outer`) starts in `outer`.
fn offset(outer: &[u8], inner: &str) -> Range<usize> {
    let start = (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize);
    start..start + inner.len()
}

/// How messages are read, where that depends on the deployment: the topic
/// root Zuul's reporter publishes under (`zuul` unless configured, as
/// `zuul_root` in a reader's config or `--zuul-root`).
///
/// ```
/// use firehose::reader::{Body, Decoder};
/// let d = Decoder::new().zuul_root("ci/zuul");
/// let ev = d.decode("ci/zuul/openstack/check/openstack/nova/12", br#"{"action": "start"}"#, false);
/// assert_eq!(ev.kind, "zuul.buildset.start");
/// assert!(matches!(ev.body, Body::Zuul(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoder {
    zuul_root: Cow<'static, str>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::DEFAULT
    }
}

impl Decoder {
    /// The defaults ([`crate::zuul::ROOT`]).
    pub const DEFAULT: Decoder = Decoder {
        zuul_root: Cow::Borrowed(crate::zuul::ROOT),
    };

    /// The defaults.
    pub fn new() -> Decoder {
        Decoder::DEFAULT
    }

    /// Zuul's reports are the messages under these topic levels
    /// (`zuul`, `ci/zuul`; slashes at either end are ignored).
    pub fn zuul_root(mut self, root: &str) -> Decoder {
        self.zuul_root = Cow::Owned(root.trim_matches('/').to_owned());
        self
    }

    /// The levels after the Zuul root, when `topic` is under it.
    fn under_zuul<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let rest = topic.strip_prefix(&*self.zuul_root)?;
        match rest.strip_prefix('/') {
            Some(r) => Some(r),
            None if rest.is_empty() => Some(rest),
            None => None,
        }
    }

    /// Reads one message (copies the payload; [`Decoder::decode_bytes`]
    /// does not).
    pub fn decode(&self, topic: &str, payload: &[u8], retained: bool) -> Event {
        self.decode_bytes(topic, Bytes::copy_from_slice(payload), retained)
    }

    /// Reads one message. The common fields are read in one pass over the
    /// payload; the typed event is built from its text.
    pub fn decode_bytes(&self, topic: &str, payload: Bytes, retained: bool) -> Event {
        decode_with(self, topic, payload, retained)
    }
}

/// Reads one message with the default [`Decoder`] (copies the payload;
/// [`decode_bytes`] does not).
pub fn decode(topic: &str, payload: &[u8], retained: bool) -> Event {
    Decoder::DEFAULT.decode(topic, payload, retained)
}

/// Reads one message with the default [`Decoder`].
pub fn decode_bytes(topic: &str, payload: Bytes, retained: bool) -> Event {
    Decoder::DEFAULT.decode_bytes(topic, payload, retained)
}

fn decode_with(decoder: &Decoder, topic: &str, payload: Bytes, retained: bool) -> Event {
    let mut ev = Event {
        topic: topic.to_owned(),
        id: None,
        source: None,
        kind: "mqtt".to_owned(),
        time: None,
        subject: None,
        retained,
        payload,
        body: Body::Other { reason: None },
        data: Data {
            span: Span::Text,
            value: OnceLock::new(),
        },
    };
    let p = &ev.payload;
    // Only a payload that names `specversion` can be a CloudEvent: raw
    // payloads skip the envelope pass.
    if memchr::memmem::find(p, b"\"specversion\"").is_some() {
        if let Ok(env) = serde_json::from_slice::<Envelope>(p) {
            if matches!(&env.specversion, Some(Value::String(v)) if v.starts_with('1')) {
                ev.data.span = match env.data {
                    Some(d) => Span::Json(offset(p, d.get())),
                    None => Span::Null,
                };
                ev.id = string(env.id);
                ev.source = string(env.source);
                ev.time = string(env.time);
                ev.subject = string(env.subject);
                ev.kind = string(env.kind).unwrap_or_else(|| "mqtt".into());
                ev.body = typed_cloudevent(&ev);
                return ev;
            }
        }
    }
    // Zuul publishes itself, under its root: its project levels may name
    // a source (`openstack/nova`), so this comes before the families.
    if let Some(rest) = decoder.under_zuul(topic) {
        raw_zuul(&mut ev, rest);
        return ev;
    }
    // A raw gerrit event: reading its head checks the whole text is JSON.
    if let Some(text) = std::str::from_utf8(p).ok().map(str::trim) {
        let span = offset(p, text);
        if is_gerrit_topic(topic) {
            if let Ok(g) = GerritEvent::from_text(text) {
                ev.data.span = Span::Json(span);
                raw_gerrit(&mut ev, g);
                return ev;
            }
        }
    }
    match serde_json::from_slice::<&RawValue>(p) {
        Ok(whole) => ev.data.span = Span::Json(offset(p, whole.get())),
        Err(_) => {
            // Not JSON: still an event for readers of the raw payload, but
            // one of ours would have been JSON.
            if starts_with_source(topic).is_some() {
                ev.body = other("payload is not JSON".into());
            }
            return ev;
        }
    }
    let levels: Vec<&str> = topic.split('/').collect();
    let rest = match starts_with_source(topic) {
        Some(start) => &levels[start..],
        None => return ev,
    };
    match rest.first().copied() {
        Some("gerrit") => {
            if let Err(e) = gerrit(&ev) {
                ev.body = other(format!("gerrit payload: {e}"));
            }
        }
        Some("nova") if rest.get(2) == Some(&"service") && rest.len() >= 5 => {
            raw_nova_service(&mut ev)
        }
        Some("nova") => raw_nova(&mut ev),
        Some("launchpad") => raw_launchpad(&mut ev),
        Some("ansible") => raw_ansible(&mut ev, rest),
        Some(FAMILY) => raw_subunit(&mut ev, rest),
        Some("firehose") if rest.get(1) == Some(&"status") => raw_status(&mut ev),
        _ => {}
    }
    ev
}

/// A topic whose first source level is `gerrit`.
fn is_gerrit_topic(topic: &str) -> bool {
    starts_with_source(topic).and_then(|i| topic.split('/').nth(i)) == Some("gerrit")
}

/// Where the firehose levels start: `--base-topic` puts levels before the
/// bridge's own, so the first level that names a source.
fn starts_with_source(topic: &str) -> Option<usize> {
    topic.split('/').position(|l| {
        matches!(
            l,
            "gerrit" | "nova" | "launchpad" | "ansible" | "firehose" | FAMILY
        )
    })
}

/// A gerrit event from `data`'s text.
fn gerrit(ev: &Event) -> Result<GerritEvent, String> {
    let text = ev.data_text().ok_or("not JSON text")?;
    GerritEvent::from_text(text).map_err(|e| e.to_string())
}

/// A nova notification from `data`'s text.
fn nova(ev: &Event) -> Result<Notification, String> {
    let text = ev.data_text().ok_or("not JSON text")?;
    Notification::parse(text.as_bytes()).map_err(|e| e.to_string())
}

/// The typed event inside a CloudEvents envelope, by its type.
fn typed_cloudevent(ev: &Event) -> Body {
    let (family, _) = ev.kind.split_once('.').unwrap_or((&ev.kind, ""));
    match family {
        "gerrit" => match gerrit(ev) {
            Ok(g) => Body::Gerrit(Box::new(g)),
            Err(e) => other(format!("gerrit data: {e}")),
        },
        "nova" => match nova(ev) {
            Ok(n) => Body::Nova(Box::new(n)),
            Err(e) => other(format!("nova data: {e}")),
        },
        "launchpad" => match LaunchpadEvent::from_payload(ev.data()) {
            Some(l) => Body::Launchpad(l),
            None => other("launchpad data is not an object".into()),
        },
        "ansible" => Body::Ansible(PublishedAnsible::new(ev.data().clone())),
        "zuul" => match ZuulReport::from_slice(ev.data_text().unwrap_or("").as_bytes()) {
            Ok(z) => Body::Zuul(Box::new(z)),
            Err(e) => other(format!("zuul data: {}", crate::report::error_chain(&e))),
        },
        "subunit" if ev.kind.starts_with("subunit.test.") => {
            match PublishedTest::from_value(ev.data()) {
                Some(t) => Body::SubunitTest(t),
                None => other("subunit test data without a test_id or status".into()),
            }
        }
        "subunit" => match PublishedRun::from_value(ev.data()) {
            Some(r) => Body::Subunit(r),
            None => other("subunit data without a status".into()),
        },
        _ => Body::Other { reason: None },
    }
}

/// Sets what a family module read from a raw payload.
fn apply(ev: &mut Event, a: Attributes, body: Body) {
    ev.kind = a.kind;
    ev.id = a.id;
    ev.subject = a.subject;
    ev.time = a.time;
    ev.body = body;
}

fn raw_gerrit(ev: &mut Event, g: GerritEvent) {
    apply(ev, g.attributes(), Body::Gerrit(Box::new(g)));
}

fn raw_nova(ev: &mut Event) {
    match nova(ev) {
        Ok(n) => apply(ev, n.attributes(), Body::Nova(Box::new(n))),
        Err(e) => ev.body = other(format!("nova payload: {e}")),
    }
}

fn raw_nova_service(ev: &mut Event) {
    match serde_json::from_slice::<ServiceState>(ev.data_text().unwrap_or("").as_bytes()) {
        Ok(s) => apply(ev, s.attributes(), Body::NovaService(s)),
        Err(e) => ev.body = other(format!("nova service state: {e}")),
    }
}

fn raw_launchpad(ev: &mut Event) {
    match LaunchpadEvent::from_payload(ev.data()) {
        Some(l) => apply(ev, l.attributes(&ev.payload), Body::Launchpad(l)),
        None => ev.body = other("launchpad payload is not a JSON object".into()),
    }
}

fn raw_ansible(ev: &mut Event, levels: &[&str]) {
    match crate::ansible::read_raw(levels, ev.data()) {
        Ok((a, data)) => {
            apply(ev, a, Body::Ansible(PublishedAnsible::new(data.clone())));
            // `ansible_result` as an object, as in CloudEvents mode.
            ev.data.value = OnceLock::from(data);
        }
        Err(why) => ev.body = other(why.into()),
    }
}

fn raw_subunit(ev: &mut Event, levels: &[&str]) {
    match crate::subunit::read_raw(levels, &ev.payload, ev.data()) {
        Ok((a, run)) => apply(ev, a, Body::Subunit(run)),
        Err(why) => ev.body = other(why.into()),
    }
}

fn raw_zuul(ev: &mut Event, levels: &str) {
    match ZuulReport::from_slice(&ev.payload) {
        Ok(z) => {
            if let Ok(whole) = serde_json::from_slice::<&RawValue>(&ev.payload) {
                ev.data.span = Span::Json(offset(&ev.payload, whole.get()));
            }
            apply(
                ev,
                z.attributes(levels, &ev.payload),
                Body::Zuul(Box::new(z)),
            );
        }
        Err(e) => ev.body = other(format!("zuul payload: {}", crate::report::error_chain(&e))),
    }
}

fn raw_status(ev: &mut Event) {
    match serde_json::from_slice::<Status>(ev.data_text().unwrap_or("").as_bytes()) {
        Ok(s) => {
            let a = Attributes {
                kind: "firehose.status".into(),
                id: None,
                subject: Some(ev.topic.clone()),
                time: None,
            };
            apply(ev, a, Body::Status(Box::new(s)));
        }
        Err(e) => ev.body = other(format!("status payload: {e}")),
    }
}

fn other(reason: String) -> Body {
    Body::Other {
        reason: Some(reason),
    }
}
