//! `GET /v1/events`' parameters, read strictly (an unknown or malformed
//! one is a 400 with the reason, never ignored), and turned into one SQL
//! statement for either dialect; plus the JSON shape of a stored event.
//!
//! `since`/`until` are about when the firehose received an event (the
//! cursor's order) and take an RFC 3339 time, a duration back from now
//! (`2h`, `7d`) or a cursor; `from`/`to` filter on the event's own time.

use std::collections::HashMap;

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::fields::same_bit;
use crate::store::{Bind, Stored, CANDIDATE_COLUMNS, SELECT_COLUMNS};

/// At most this many events per page.
pub const MAX_LIMIT: usize = 1000;
/// Events per page unless `limit` says.
pub const DEFAULT_LIMIT: usize = 100;

/// A bound on when an event was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// After (for `since`) or up to (for `until`) this cursor.
    Cursor(i64),
    /// At or after / before this time, Unix ms.
    Ms(i64),
}

/// One `GET /v1/events` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// An MQTT topic filter (`+`, `#`).
    pub topic: Option<String>,
    /// A type, or a prefix ending in `.*` (`nova.instance.*`).
    pub kind: Option<String>,
    pub subject: Option<String>,
    pub since: Option<Received>,
    pub until: Option<Received>,
    /// The event's own time, Unix ms.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Text the payload contains (checked on the rows, as payloads are
    /// stored compressed: see [`Query::wants`]).
    pub text: Option<String>,
    pub limit: usize,
    /// The page after this cursor (`next` of the previous page).
    pub after: Option<i64>,
    /// Indexed fields that must be equal: (column, value).
    pub fields: Vec<(&'static str, String)>,
    /// `payload=true`: each event also carries its exact payload (as
    /// text), so a reader can decode it as if it came from the broker.
    pub payload: bool,
}

/// The indexed fields a query may ask for: (parameter, column).
pub const FIELDS: &[(&str, &str)] = &[
    ("deployment", "deployment"),
    ("instance", "instance"),
    ("request", "request"),
    ("project", "project"),
    ("change", "change_number"),
    ("bug", "bug"),
    ("playbook", "playbook"),
];

pub(crate) const KNOWN: &[&str] = &[
    "topic",
    "type",
    "subject",
    "since",
    "until",
    "from",
    "to",
    "q",
    "limit",
    "after",
    "deployment",
    "instance",
    "request",
    "project",
    "change",
    "bug",
    "playbook",
    "payload",
];

/// A query parameter that cannot be used; the reason is the API's 400
/// answer, naming the parameter and what to give instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadParam(pub String);

/// Parses an RFC 3339 time, or a duration back from `now_ms`.
fn time_or_duration(name: &str, v: &str, now_ms: i64) -> Result<i64, BadParam> {
    if let Ok(t) = OffsetDateTime::parse(v, &Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    humantime::parse_duration(v)
        .map(|d| now_ms - d.as_millis() as i64)
        .map_err(|_| {
            BadParam(format!("{name}={v:?}: give an RFC 3339 time (2026-12-01T10:00:00Z), a duration back from now (2h, 7d) or a cursor"))
        })
}

fn received(name: &str, v: &str, now_ms: i64) -> Result<Received, BadParam> {
    if let Ok(c) = v.parse::<i64>() {
        return Ok(Received::Cursor(c));
    }
    time_or_duration(name, v, now_ms).map(Received::Ms)
}

fn cursor(name: &str, v: &str) -> Result<i64, BadParam> {
    v.parse().map_err(|_| {
        BadParam(format!(
            "{name}={v:?}: a cursor is the number given as `cursor` or `next`"
        ))
    })
}

impl Query {
    /// Reads the query string's parameters.
    pub fn parse(params: &HashMap<String, String>, now_ms: i64) -> Result<Query, BadParam> {
        if let Some(k) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(BadParam(format!(
                "unknown parameter {k:?}; known: {}",
                KNOWN.join(", ")
            )));
        }
        let get = |k: &str| params.get(k).filter(|v| !v.is_empty()).cloned();
        let topic = get("topic");
        if let Some(t) = &topic {
            firehose::filter::check(t).map_err(|e| BadParam(format!("topic={e}")))?;
        }
        let limit = match get("limit") {
            None => DEFAULT_LIMIT,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => return Err(BadParam(format!("limit={v:?}: give 1 to {MAX_LIMIT}"))),
            },
        };
        Ok(Query {
            topic,
            kind: get("type"),
            subject: get("subject"),
            since: get("since")
                .map(|v| received("since", &v, now_ms))
                .transpose()?,
            until: get("until")
                .map(|v| received("until", &v, now_ms))
                .transpose()?,
            from_ms: get("from")
                .map(|v| time_or_duration("from", &v, now_ms))
                .transpose()?,
            to_ms: get("to")
                .map(|v| time_or_duration("to", &v, now_ms))
                .transpose()?,
            text: get("q"),
            limit,
            after: get("after").map(|v| cursor("after", &v)).transpose()?,
            fields: FIELDS
                .iter()
                .filter_map(|(p, col)| get(p).map(|v| (*col, v)))
                .collect(),
            payload: match get("payload").as_deref() {
                None | Some("false") => false,
                Some("true") => true,
                Some(v) => return Err(BadParam(format!("payload={v:?}: give true or false"))),
            },
        })
    }

    /// The `WHERE` terms of this query (the topic filter only as far as SQL
    /// can check it, the text not at all: see [`Query::wants`]), with their
    /// values, numbered from `$1`.
    pub(crate) fn conditions(&self, after: Option<i64>) -> (Vec<String>, Vec<Bind>) {
        let mut w = Vec::new();
        let mut binds = Vec::new();
        let mut bind = |b: Bind| {
            binds.push(b);
            binds.len()
        };
        if let Some(t) = &self.topic {
            match literal_prefix(t) {
                Prefix::Exact(s) => w.push(format!("topic = ${}", bind(Bind::Text(s)))),
                Prefix::Starts(s) if !s.is_empty() => w.push(format!(
                    "topic LIKE ${} ESCAPE '\\'",
                    bind(Bind::Text(format!("{}%", like_escape(&s))))
                )),
                Prefix::Starts(_) => {}
            }
        }
        if let Some(k) = &self.kind {
            match k.strip_suffix('*') {
                Some(prefix) => w.push(format!(
                    "kind LIKE ${} ESCAPE '\\'",
                    bind(Bind::Text(format!("{}%", like_escape(prefix))))
                )),
                None => w.push(format!("kind = ${}", bind(Bind::Text(k.clone())))),
            }
        }
        if let Some(s) = &self.subject {
            w.push(format!("subject = ${}", bind(Bind::Text(s.clone()))));
        }
        for (col, v) in &self.fields {
            let n = bind(Bind::Text(v.clone()));
            // A value equal to the subject is stored as the subject.
            w.push(match same_bit(col) {
                Some(bit) => format!("({col} = ${n} OR (subject = ${n} AND (same & {bit}) <> 0))"),
                None => format!("{col} = ${n}"),
            });
        }
        match self.since {
            Some(Received::Cursor(c)) => w.push(format!("seq > ${}", bind(Bind::Int(c)))),
            Some(Received::Ms(ms)) => w.push(format!("received_ms >= ${}", bind(Bind::Int(ms)))),
            None => {}
        }
        match self.until {
            Some(Received::Cursor(c)) => w.push(format!("seq <= ${}", bind(Bind::Int(c)))),
            Some(Received::Ms(ms)) => w.push(format!("received_ms < ${}", bind(Bind::Int(ms)))),
            None => {}
        }
        if let Some(ms) = self.from_ms {
            w.push(format!("event_time_ms >= ${}", bind(Bind::Int(ms))));
        }
        if let Some(ms) = self.to_ms {
            w.push(format!("event_time_ms < ${}", bind(Bind::Int(ms))));
        }
        if let Some(c) = after {
            w.push(format!("seq > ${}", bind(Bind::Int(c))));
        }
        (w, binds)
    }

    /// The statement for up to `rows` candidate rows after cursor `after`
    /// (the topic filter's wildcards are checked again on the rows:
    /// [`Query::wants`]).
    pub(crate) fn sql(&self, after: Option<i64>, rows: usize) -> (String, Vec<Bind>) {
        self.sql_of(SELECT_COLUMNS, after, rows)
    }

    /// As [`Query::sql`], for the columns a candidate needs to be checked
    /// ([`CANDIDATE_COLUMNS`]): a scan that discards most rows converts
    /// four columns of each, not twenty.
    pub(crate) fn candidates_sql(&self, after: Option<i64>, rows: usize) -> (String, Vec<Bind>) {
        self.sql_of(CANDIDATE_COLUMNS, after, rows)
    }

    fn sql_of(&self, columns: &str, after: Option<i64>, rows: usize) -> (String, Vec<Bind>) {
        let (w, mut binds) = self.conditions(after);
        binds.push(Bind::Int(rows as i64));
        let n = binds.len();
        let mut text = format!("SELECT {columns} FROM events");
        if !w.is_empty() {
            text.push_str(" WHERE ");
            text.push_str(&w.join(" AND "));
        }
        text.push_str(&format!(" ORDER BY seq LIMIT ${n}"));
        (text, binds)
    }

    /// Whether a candidate row matches what SQL could not check (the
    /// topic filter's `+` and `#` levels, the text in the payload).
    pub(crate) fn wants(&self, topic: &str, payload: &[u8]) -> bool {
        self.topic
            .as_deref()
            .is_none_or(|f| firehose::filter::topic_matches(f, topic))
            && self
                .text
                .as_deref()
                .is_none_or(|t| memchr::memmem::find(payload, t.as_bytes()).is_some())
    }

    /// Whether every row SQL returns is a match ([`Query::wants`] has
    /// nothing to check), so a page needs only as many rows as it shows.
    pub(crate) fn exact(&self) -> bool {
        self.text.is_none()
            && self
                .topic
                .as_deref()
                .is_none_or(|t| !t.contains(['+', '#']))
    }
}

enum Prefix {
    Exact(String),
    Starts(String),
}

/// The part of a filter before its first wildcard.
fn literal_prefix(f: &str) -> Prefix {
    match f.find(['+', '#']) {
        None => Prefix::Exact(f.to_owned()),
        Some(i) => Prefix::Starts(f[..i].to_owned()),
    }
}

fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// RFC 3339 of Unix ms.
pub fn rfc3339_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// A stored event in the shape `firehose-sub --json` prints, plus
/// `received` and `cursor` (and, when asked, `payload`).
pub fn event_json_with(s: &Stored, payload: bool) -> Value {
    let mut v = event_json(s);
    if payload {
        v["payload"] = match std::str::from_utf8(&s.row.payload) {
            Ok(t) => json!(t),
            // Firehose payloads are JSON or text; bytes that are not UTF-8
            // are shown lossily, and said so.
            Err(_) => {
                v["payload_lossy"] = json!(true);
                json!(String::from_utf8_lossy(&s.row.payload))
            }
        };
    }
    v
}

/// A stored event in the shape `firehose-sub --json` prints, plus
/// `received` and `cursor`.
pub fn event_json(s: &Stored) -> Value {
    let r = &s.row;
    let ev = firehose::reader::decode(&r.topic, &r.payload, r.retained);
    let mut v = serde_json::to_value(&ev).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        // What was read at ingest (with its Zuul root) is what it is.
        o.insert("id".into(), json!(r.id));
        o.insert("type".into(), json!(r.kind));
        o.insert("subject".into(), json!(r.subject));
        o.insert("time".into(), json!(r.time));
        o.insert("received".into(), json!(rfc3339_ms(r.received_ms)));
        o.insert("cursor".into(), json!(s.cursor.to_string()));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<Query, BadParam> {
        let m = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Query::parse(&m, 10_000_000)
    }

    #[test]
    fn parameters_are_read_strictly_and_say_what_is_wrong() {
        assert!(q(&[("topik", "a")])
            .unwrap_err()
            .0
            .contains("unknown parameter"));
        assert!(q(&[("limit", "0")]).unwrap_err().0.contains("1 to 1000"));
        assert!(q(&[("limit", "5000")]).is_err());
        assert!(q(&[("since", "yesterday")])
            .unwrap_err()
            .0
            .contains("RFC 3339"));
        assert!(q(&[("topic", "a/#/b")])
            .unwrap_err()
            .0
            .contains("MQTT topic filter"));
        assert!(q(&[("topic", "a/b+")]).is_err());
        assert!(q(&[("after", "x")]).unwrap_err().0.contains("cursor"));
        let ok = q(&[
            ("since", "2h"),
            ("until", "42"),
            ("from", "2026-12-01T10:00:00Z"),
        ])
        .unwrap();
        assert_eq!(ok.since, Some(Received::Ms(10_000_000 - 7_200_000)));
        assert_eq!(ok.until, Some(Received::Cursor(42)));
        assert_eq!(ok.from_ms, Some(1_796_119_200_000));
        assert_eq!(ok.limit, DEFAULT_LIMIT);
    }

    #[test]
    fn a_query_is_one_statement_with_every_value_bound() {
        let query = q(&[
            ("topic", "nova/+/compute/#"),
            ("type", "nova.instance.*"),
            ("q", "50%_off"),
        ])
        .unwrap();
        let (text, binds) = query.sql(Some(7), 11);
        assert!(text.contains("topic LIKE $1"), "{text}");
        assert!(text.contains("kind LIKE $2"), "{text}");
        assert!(
            !text.contains("WHERE payload") && !text.contains("50%"),
            "text is checked on the rows: {text}"
        );
        assert!(text.ends_with("seq > $3 ORDER BY seq LIMIT $4"), "{text}");
        assert_eq!(
            binds,
            vec![
                Bind::Text("nova/%".into()),
                Bind::Text("nova.instance.%".into()),
                Bind::Int(7),
                Bind::Int(11)
            ]
        );
        assert!(!query.exact());
        let instance = q(&[("instance", "i-1"), ("project", "p")])
            .unwrap()
            .sql(None, 1)
            .0;
        assert!(
            instance.contains("(instance = $1 OR (subject = $1 AND (same & 1) <> 0))"),
            "{instance}"
        );
        assert!(instance.contains("project = $2"), "{instance}");
        let exact = q(&[("topic", "a_b/c")]).unwrap().sql(None, 1).0;
        assert!(exact.contains("topic = $1"), "{exact}");
        let all = q(&[("topic", "#")]).unwrap().sql(None, 1).0;
        assert!(!all.contains("WHERE"), "{all}");
        assert_eq!(like_escape("a_b%c\\"), "a\\_b\\%c\\\\");
    }
}
