//! What the history tests share: the fixtures as a bridge publishes them,
//! a running firehose-history and its API.
#![allow(dead_code)] // each test binary uses its own part

use std::collections::BTreeSet;
use std::path::Path;

use firehose_testkit::*;
use serde_json::Value;

pub use firehose_testkit::logins::PUBLISHER as BRIDGE;

/// The demo's events: what the four bridges publish for the fixtures
/// (raw mode), as (topic, payload, retain).
pub fn fixtures() -> Vec<(String, Vec<u8>, bool)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/demo/events.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("fixture line");
            let payload = match &v["payload"] {
                Value::String(s) => s.as_bytes().to_vec(),
                other => serde_json::to_vec(other).expect("payload"),
            };
            (
                v["topic"].as_str().expect("topic").to_owned(),
                payload,
                v["retain"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// The ids the store must hold: one per distinct event.
pub fn distinct_ids(events: &[(String, Vec<u8>, bool)]) -> BTreeSet<String> {
    events
        .iter()
        .map(|(t, p, r)| {
            let ev = firehose::reader::decode(t, p, *r);
            firehose_history::fields::row(&ev, 0).id
        })
        .collect()
}

pub type History = HistoryProc;

pub fn start_history(broker: &BrokerProc, db: &str) -> History {
    start_history_with(broker, db, &[])
}

pub fn start_history_with(broker: &BrokerProc, db: &str, extra: &[&str]) -> History {
    start_history_on(broker, db, "127.0.0.1:0", extra)
}

/// firehose-history with its API on `http`.
pub fn start_history_on(broker: &BrokerProc, db: &str, http: &str, extra: &[&str]) -> History {
    HistoryProc::start(
        &format!("mqtt://127.0.0.1:{}", broker.port()),
        db,
        http,
        extra,
    )
}

pub fn metric(h: &History, name: &str) -> u64 {
    metric_at(h.http, &format!("firehose_history_{name}"))
        .unwrap_or_else(|body| panic!("no {name} in /metrics:\n{body}"))
}

pub fn get_json(h: &History, path: &str) -> (u16, Value) {
    let (status, body) = http_get(h.http, path);
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"));
    (status, v)
}

/// Every event through `GET /v1/events` pages of `limit`.
pub fn all_pages(h: &History, query: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10_000 {
        let mut path = format!("/v1/events?limit={limit}{query}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let (status, v) = get_json(h, &path);
        assert_eq!(status, 200, "GET {path}: {v}");
        out.extend(v["events"].as_array().expect("events").iter().cloned());
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => return out,
        }
    }
    panic!("paging did not end");
}

pub fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
