//! firehose-history against the real broker, on SQLite: every fixture of
//! every source stored once with its indexed fields, a `kill -9` of the
//! ingester mid-stream loses nothing and stores nothing twice, a second
//! copy of each event (a redundant bridge) is counted, not stored, and the
//! API pages through it all without a gap or a duplicate.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

mod common;

use common::*;
use firehose_testkit::*;
use serde_json::Value;

#[test]
fn on_sqlite_every_event_is_stored_once_across_a_kill_and_a_redundant_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("history.db").display());
    stored_once_across_a_kill_and_a_redundant_copy(dir.path(), &db);
}

#[test]
fn on_postgresql_every_event_is_stored_once_across_a_kill_and_a_redundant_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = Postgres::start(dir.path());
    let db = pg.database("history");
    stored_once_across_a_kill_and_a_redundant_copy(dir.path(), &db);
}

/// Two ingesters in one `$share` group into one PostgreSQL: the broker
/// splits the events between them, each is stored once.
#[test]
fn two_ingesters_sharing_one_postgresql_store_every_event_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = Postgres::start(dir.path());
    let db = pg.database("fleet");
    let broker = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let a = start_history_with(
        &broker,
        &db,
        &["--share", "history", "--session", "history-a"],
    );
    let b = start_history_with(
        &broker,
        &db,
        &["--share", "history", "--session", "history-b"],
    );
    let events = fixtures();
    let ids = distinct_ids(&events);
    let mut publisher = Publisher::new(broker.mqtt(), BRIDGE);
    for (t, p, r) in &events {
        publisher.publish(t, p, *r);
    }
    let seen = |h: &History| metric(h, "stored_total") + metric(h, "duplicates_total");
    wait_until(
        WAIT,
        || seen(&a) + seen(&b) >= events.len() as u64,
        || {
            format!(
                "{} deliveries between the two ({} + {})",
                events.len(),
                seen(&a),
                seen(&b)
            )
        },
    );
    assert_eq!(
        metric(&a, "stored_total") + metric(&b, "stored_total"),
        ids.len() as u64,
        "each event stored by one of them"
    );
    assert!(
        seen(&a) > 0 && seen(&b) > 0,
        "the group split the events: {} / {}",
        seen(&a),
        seen(&b)
    );
    let got: Vec<String> = all_pages(&a, "", 1000)
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(got.len(), ids.len(), "nothing twice");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), ids);
}

fn stored_once_across_a_kill_and_a_redundant_copy(dir: &Path, db: &str) {
    let broker = BrokerProc::with_users(dir, &[BRIDGE], &[]);
    let db = db.to_owned();
    let events = fixtures();
    let ids = distinct_ids(&events);
    // The demo repeats retained states and status messages: 476 messages,
    // 154 distinct events.
    assert!(ids.len() >= 150, "the fixtures hold {} events", ids.len());

    let h = start_history(&broker, &db);
    let mut publisher = Publisher::new(broker.mqtt(), BRIDGE);
    let half = events.len() / 2;
    for (t, p, r) in &events[..half] {
        publisher.publish(t, p, *r);
    }
    // kill -9 while it ingests; the rest arrives while it is away and is
    // kept by the broker in its persistent session.
    h.proc_.signal("KILL");
    for (t, p, r) in &events[half..] {
        publisher.publish(t, p, *r);
    }
    // A redundant bridge: every event a second time.
    for (t, p, r) in &events {
        publisher.publish(t, p, *r);
    }
    drop(h);
    let h = start_history(&broker, &db);
    wait_until(
        WAIT,
        || {
            http_get(h.http, "/v1/events?limit=1000")
                .1
                .matches("\"cursor\"")
                .count()
                >= ids.len()
        },
        || format!("{} events stored; logs:\n{}", ids.len(), h.proc_.logs()),
    );
    let stored = all_pages(&h, "", 97);
    let got: Vec<String> = stored
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect();
    let unique: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(got.len(), unique.len(), "nothing stored twice");
    assert_eq!(unique, ids, "every event stored");
    let cursors: Vec<i64> = stored
        .iter()
        .map(|e| {
            e["cursor"]
                .as_str()
                .and_then(|c| c.parse().ok())
                .expect("cursor")
        })
        .collect();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "pages in cursor order"
    );
    // The second copies reached this ingester (after the restart) and
    // were counted, not stored.
    wait_until(
        WAIT,
        || metric(&h, "duplicates_total") > 0,
        || {
            format!(
                "duplicates counted; metrics:\n{}",
                http_get(h.http, "/metrics").1
            )
        },
    );

    // The indexed fields, read here from the fixtures' JSON on our own:
    // for each field, the events the API finds by a value are exactly the
    // fixtures that carry it.
    let distinct: Vec<(String, Value)> = {
        let mut seen = BTreeSet::new();
        events
            .iter()
            .filter_map(|(t, p, r)| {
                let id = firehose_history::fields::row(&firehose::reader::decode(t, p, *r), 0).id;
                let v: Value = serde_json::from_slice(p).ok()?;
                seen.insert(id).then(|| (t.clone(), v))
            })
            .collect()
    };
    let text = |v: &Value| match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    type Path = fn(&str, &Value) -> Option<Value>;
    let fields: [(&str, Path); 5] = [
        ("change", |t, v| {
            t.starts_with("gerrit/")
                .then(|| v["change"]["number"].clone())
        }),
        ("request", |t, v| {
            t.starts_with("nova/")
                .then(|| v["_context_request_id"].clone())
        }),
        ("bug", |t, v| {
            t.starts_with("launchpad/").then(|| v["bug-number"].clone())
        }),
        ("playbook", |t, v| {
            t.starts_with("ansible/").then(|| v["playbook_id"].clone())
        }),
        ("instance", |t, v| {
            let p = &v["payload"];
            let versioned = p["nova_object.name"].as_str()?.starts_with("Instance");
            t.starts_with("nova/").then(|| {
                if versioned {
                    p["nova_object.data"]["uuid"].clone()
                } else {
                    Value::Null
                }
            })
        }),
    ];
    for (field, path) in fields {
        let mut values: Vec<String> = distinct
            .iter()
            .filter_map(|(t, v)| path(t, v).as_ref().and_then(text))
            .collect();
        values.dedup();
        assert!(!values.is_empty(), "the fixtures carry some {field}");
        for value in values.iter().take(3) {
            let want: BTreeSet<String> = distinct
                .iter()
                .filter(|(t, v)| path(t, v).as_ref().and_then(text).as_deref() == Some(value))
                .map(|(t, v)| {
                    let p = serde_json::to_vec(v).unwrap();
                    firehose_history::fields::row(&firehose::reader::decode(t, &p, false), 0).id
                })
                .collect();
            let found: BTreeSet<String> =
                all_pages(&h, &format!("&{field}={}", percent(value)), 1000)
                    .iter()
                    .map(|e| e["id"].as_str().unwrap().to_owned())
                    .collect();
            assert_eq!(found, want, "{field}={value}");
        }
    }
    // Payloads are kept compressed and come back byte for byte; a text
    // search finds exactly the events whose payload holds the text.
    let mut sent: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for (t, p, r) in &events {
        let id = firehose_history::fields::row(&firehose::reader::decode(t, p, *r), 0).id;
        sent.entry(id).or_default().push(p.clone());
    }
    let with_payload = all_pages(&h, "&payload=true", 97);
    assert_eq!(with_payload.len(), ids.len());
    for e in &with_payload {
        let id = e["id"].as_str().expect("id");
        let bytes = e["payload"].as_str().expect("payload").as_bytes();
        assert!(e.get("payload_lossy").is_none(), "{e}");
        assert!(
            sent[id].iter().any(|p| p == bytes),
            "{id}: the payload as it was published"
        );
    }
    for text in ["instance.create", "\"bug-number\"", "no such text anywhere"] {
        let want: BTreeSet<&String> = sent
            .iter()
            .filter(|(_, ps)| ps.iter().any(|p| String::from_utf8_lossy(p).contains(text)))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(want.is_empty(), text.starts_with("no such"), "q={text}");
        let found: Vec<String> = all_pages(&h, &format!("&q={}", percent(text)), 7)
            .iter()
            .map(|e| e["id"].as_str().expect("id").to_owned())
            .collect();
        assert_eq!(found.iter().collect::<BTreeSet<_>>(), want, "q={text}");
        assert_eq!(found.len(), want.len(), "q={text}: each once");
    }
    let by_type = |t: &str| all_pages(&h, &format!("&type={t}"), 1000);
    assert!(!by_type("nova.*").is_empty());
    let gerrit = all_pages(&h, "&topic=gerrit/%23", 1000);
    assert!(!gerrit.is_empty());
    assert!(gerrit
        .iter()
        .all(|e| e["topic"].as_str().unwrap().starts_with("gerrit/")));
    let created = all_pages(&h, "&topic=gerrit/%2B/patchset-created", 7);
    assert!(!created.is_empty());
    assert!(created
        .iter()
        .all(|e| e["type"] == "gerrit.patchset-created"));
    assert!(!by_type("launchpad.*").is_empty());
    assert!(!by_type("ansible.*").is_empty());

    // One event by id, as firehose-sub --json shows it plus received/cursor.
    let one = &stored[0];
    let id = one["id"].as_str().unwrap();
    let (status, v) = get_json(&h, &format!("/v1/events/{}", percent(id)));
    assert_eq!(status, 200, "{v}");
    for k in [
        "topic", "id", "type", "data", "retained", "received", "cursor",
    ] {
        assert!(v.get(k).is_some(), "{k} in {v}");
    }
    assert_eq!(get_json(&h, "/v1/events/no-such-id").0, 404);
    let (status, v) = get_json(&h, "/v1/events?limit=0");
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("limit"), "{v}");
    assert!(metric(&h, "bad_requests_total") >= 1);
}

/// Reads `n` events of a Server-Sent Events stream (HTTP/1.1, chunked),
/// sending `Last-Event-ID` when given: (cursor, event).
fn sse(addr: SocketAddr, path: &str, last_id: Option<&str>, n: usize) -> Vec<(i64, Value)> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let resume = last_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{resume}\r\n"
    )
    .expect("send");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("headers");
        assert!(!line.is_empty(), "stream closed in its headers");
        if line == "\r\n" {
            break;
        }
    }
    let mut text = String::new();
    let mut out = Vec::new();
    let (mut id, mut data) = (None, None);
    while out.len() < n {
        line.clear();
        r.read_line(&mut line).expect("chunk size");
        let size = usize::from_str_radix(line.trim(), 16).expect("chunk size");
        let mut chunk = vec![0; size + 2];
        r.read_exact(&mut chunk).expect("chunk");
        text.push_str(std::str::from_utf8(&chunk[..size]).expect("utf-8"));
        while let Some(i) = text.find('\n') {
            let l: String = text.drain(..=i).collect();
            let l = l.trim_end_matches('\n');
            if let Some(v) = l.strip_prefix("id:") {
                id = Some(v.trim().parse::<i64>().expect("cursor id"));
            } else if let Some(v) = l.strip_prefix("data:") {
                data = Some(serde_json::from_str::<Value>(v.trim()).expect("event json"));
            } else if l.is_empty() {
                if let (Some(i), Some(d)) = (id.take(), data.take()) {
                    out.push((i, d));
                }
            }
        }
    }
    out
}

/// The broker killed (-9) and started again on its `--persistence` store
/// while events wait for history in its session (history frozen with
/// SIGSTOP, so some are in flight on the dead connection and the rest
/// queued): after the restart history has every event, each once.
#[test]
fn a_broker_restart_loses_nothing_and_stores_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = passwd_file(dir.path(), &[BRIDGE]);
    let store = dir.path().join("store").to_string_lossy().into_owned();
    // History's queue has room for everything it may be behind by.
    let flags = ["--persistence", &store, "--max-queued-messages", "10000"];
    let broker = BrokerProc::on_port(0, &passwd, &flags);
    let port = broker.mqtt().port();
    let db = format!("sqlite:{}", dir.path().join("history.db").display());
    let h = start_history(&broker, &db);
    let events = fixtures();
    let ids = distinct_ids(&events);
    let (a, b) = (events.len() / 3, 2 * events.len() / 3);
    let mut publisher = Publisher::new(broker.mqtt(), BRIDGE);
    for (t, p, r) in &events[..a] {
        publisher.publish(t, p, *r);
    }
    let first = distinct_ids(&events[..a]).len() as u64;
    wait_until(
        WAIT,
        || metric(&h, "stored_total") >= first,
        || format!("{first} stored; logs:\n{}", h.proc_.logs()),
    );
    h.proc_.signal("STOP");
    for (t, p, r) in &events[a..b] {
        publisher.publish(t, p, *r);
    }
    drop(publisher);
    broker.signal("KILL");
    drop(broker);
    let broker = BrokerProc::on_port(port, &passwd, &flags);
    broker.wait_log("persistent store restored");
    h.proc_.signal("CONT");
    let mut publisher = Publisher::new(broker.mqtt(), BRIDGE);
    for (t, p, r) in &events[b..] {
        publisher.publish(t, p, *r);
    }
    wait_until(
        WAIT,
        || metric(&h, "stored_total") >= ids.len() as u64,
        || {
            format!(
                "{} of {} stored; history:\n{}\nbroker:\n{}",
                metric(&h, "stored_total"),
                ids.len(),
                h.proc_.logs(),
                broker.logs()
            )
        },
    );
    let all = all_pages(&h, "", 1000);
    let got: Vec<String> = all
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect();
    let distinct: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(got.len(), distinct.len(), "no event stored twice");
    assert_eq!(distinct, ids, "every event stored");
    assert!(
        metric(&h, "disconnects_total") >= 1,
        "history lost the killed broker and came back"
    );
}

/// One subject's life, the timings, and the stream resumed with
/// `Last-Event-ID` across a disconnect during which events kept coming.
#[test]
fn a_subject_the_timings_and_a_resumed_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let db = format!("sqlite:{}", dir.path().join("history.db").display());
    let h = start_history(&broker, &db);
    let events = fixtures();
    let ids = distinct_ids(&events);
    let mut publisher = Publisher::new(broker.mqtt(), BRIDGE);
    let half = events.len() / 2;
    for (t, p, r) in &events[..half] {
        publisher.publish(t, p, *r);
    }
    // The stream from the start: a first part, then a disconnect.
    let first = sse(h.http, "/v1/stream?since=0", None, 40);
    let last = first.last().expect("events").0.to_string();
    for (t, p, r) in &events[half..] {
        publisher.publish(t, p, *r);
    }
    wait_until(
        WAIT,
        || metric(&h, "stored_total") >= ids.len() as u64,
        || format!("{} stored; logs:\n{}", ids.len(), h.proc_.logs()),
    );
    let all = all_pages(&h, "", 1000);
    let rest = sse(h.http, "/v1/stream", Some(&last), all.len() - first.len());
    let streamed: Vec<i64> = first.iter().chain(&rest).map(|(c, _)| *c).collect();
    let paged: Vec<i64> = all
        .iter()
        .map(|e| e["cursor"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        streamed, paged,
        "the stream resumed with no gap and no duplicate"
    );
    for (c, e) in first.iter().chain(&rest) {
        assert_eq!(e["cursor"].as_str(), Some(c.to_string().as_str()));
    }
    let (status, v) = get_json(&h, "/v1/stream?limit=3");
    assert_eq!(status, 400, "{v}");

    // One instance's life: every event about it, in its own time order,
    // with the gaps.
    let mut per_instance: std::collections::BTreeMap<String, usize> = Default::default();
    for e in &all {
        if let Some(s) = e["subject"].as_str().filter(|_| {
            e["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("nova.instance"))
        }) {
            *per_instance.entry(s.to_owned()).or_default() += 1;
        }
    }
    let (uuid, n) = per_instance
        .iter()
        .max_by_key(|(_, n)| **n)
        .expect("a nova instance");
    assert!(*n >= 2, "an instance with several events");
    let (status, life) = get_json(&h, &format!("/v1/subjects/{uuid}"));
    assert_eq!(status, 200, "{life}");
    let evs = life["events"].as_array().expect("events");
    assert!(
        evs.len() >= *n,
        "{} events about {uuid}, {n} with it as subject",
        evs.len()
    );
    assert!(evs[0]["gap_ms"].is_null());
    assert!(
        evs[1..]
            .iter()
            .all(|e| e["gap_ms"].as_i64().is_some_and(|g| g >= 0)),
        "in time order, with gaps"
    );
    assert_eq!(get_json(&h, "/v1/subjects/no-such-thing").0, 404);

    // Timings: at least one nova operation paired, figures in order.
    let (status, t) = get_json(&h, "/v1/timings?type=nova.*");
    assert_eq!(status, 200, "{t}");
    let ops = t["timings"].as_array().expect("timings");
    assert!(!ops.is_empty(), "the fixtures hold .start/.end pairs: {t}");
    for op in ops {
        let f = |k: &str| op[k].as_i64().expect(k);
        assert!(f("count") >= 1);
        assert!(
            f("min_ms") <= f("p50_ms") && f("p50_ms") <= f("p95_ms") && f("p95_ms") <= f("max_ms"),
            "{op}"
        );
    }
    assert_eq!(get_json(&h, "/v1/timings?topic=x").0, 400);
}

/// `--max-bytes` keeps the newest events under the cap; `--keep` lets
/// none outlive their age; both counted.
#[test]
fn retention_holds_the_store_under_its_caps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let events = fixtures();
    let ids = distinct_ids(&events);
    let cap: u64 = 256 * 1024;
    let sized = start_history_with(
        &broker,
        &format!("sqlite:{}", dir.path().join("sized.db").display()),
        &[
            "--max-bytes",
            "256KiB",
            "--purge-every",
            "100ms",
            "--session",
            "sized",
        ],
    );
    let aged = start_history_with(
        &broker,
        &format!("sqlite:{}", dir.path().join("aged.db").display()),
        &[
            "--keep",
            "1s",
            "--purge-every",
            "100ms",
            "--session",
            "aged",
        ],
    );
    let mut publisher = Publisher::new(broker.mqtt(), BRIDGE);
    for (t, p, r) in &events {
        publisher.publish(t, p, *r);
    }
    let seen = |h: &History| metric(h, "stored_total") + metric(h, "duplicates_total");
    for h in [&sized, &aged] {
        wait_until(
            WAIT,
            || seen(h) >= events.len() as u64,
            || format!("{} deliveries (now {})", events.len(), seen(h)),
        );
    }
    // (An event purged and then sent again is stored again: the demo
    // repeats some, so more than the distinct count may be stored.)
    assert!(metric(&sized, "stored_total") >= ids.len() as u64);
    wait_until(
        WAIT,
        || {
            metric(&sized, "store_bytes") <= cap
                && metric_at(sized.http, "firehose_history_purged_total{reason=\"size\"}")
                    .unwrap_or(0)
                    > 0
        },
        || {
            format!(
                "the store under {cap} B: {}",
                http_get(sized.http, "/metrics").1
            )
        },
    );
    let kept = all_pages(&sized, "", 1000);
    assert!(
        !kept.is_empty() && kept.len() < ids.len(),
        "{} of {} kept",
        kept.len(),
        ids.len()
    );
    // The newest are the ones kept: the last event published only once
    // (a repeated one may be a copy of an old, purged row) is there.
    let id_of = |(t, p, r): &(String, Vec<u8>, bool)| {
        firehose_history::fields::row(&firehose::reader::decode(t, p, *r), 0).id
    };
    let all_ids: Vec<String> = events.iter().map(id_of).collect();
    let last_id = all_ids
        .iter()
        .rev()
        .find(|id| all_ids.iter().filter(|x| x == id).count() == 1)
        .expect("an event published once")
        .clone();
    assert!(
        kept.iter()
            .any(|e| e["id"].as_str() == Some(last_id.as_str())),
        "the newest event is kept"
    );

    wait_until(
        WAIT,
        || all_pages(&aged, "", 1000).is_empty(),
        || "every event past --keep 1s purged".into(),
    );
    assert!(
        metric_at(aged.http, "firehose_history_purged_total{reason=\"age\"}").unwrap_or(0)
            >= ids.len() as u64
    );
}

/// `firehose-sub --since 0 --history URL`: what was stored before it
/// started, then what is published while it reads the history and after:
/// every event once, no gap, no duplicate.
#[test]
fn firehose_sub_catches_up_from_history_then_goes_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let db = format!("sqlite:{}", dir.path().join("history.db").display());
    let h = start_history(&broker, &db);
    // Each distinct event once, in order (the demo repeats some).
    let mut seen = BTreeSet::new();
    let unique: Vec<&(String, Vec<u8>, bool)> = fixtures_cached()
        .iter()
        .filter(|(t, p, r)| {
            seen.insert(firehose_history::fields::row(&firehose::reader::decode(t, p, *r), 0).id)
        })
        .collect();
    let before = unique.len() / 2;
    let mut publisher = Publisher::new(broker.mqtt(), BRIDGE);
    for (t, p, _) in &unique[..before] {
        publisher.publish(t, p, false);
    }
    wait_until(
        WAIT,
        || metric(&h, "stored_total") >= before as u64,
        || "the first half stored".into(),
    );
    let sub = Command::new(bin("firehose-sub"))
        .args(["-h", "127.0.0.1", "-p", &broker.port(), "-t", "#", "--json"])
        .args(["--since", "0", "--history", &format!("http://{}", h.http)])
        .args(["-C", &unique.len().to_string(), "-W", "60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("firehose-sub");
    // The rest while it reads the history (and after).
    for (t, p, _) in &unique[before..] {
        publisher.publish(t, p, false);
    }
    let (out, killed) = finish(sub, std::time::Duration::from_secs(90));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !killed && out.status.success(),
        "firehose-sub: {:?}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // What firehose-sub prints has no id for a message that is not an
    // event: those are matched by topic and data.
    let key = |v: &Value| match v["id"].as_str() {
        Some(id) => id.to_owned(),
        None => format!("{} {}", v["topic"], v["data"]),
    };
    let ids: Vec<String> = text
        .lines()
        .map(|l| key(&serde_json::from_str(l).expect("json line")))
        .collect();
    let set: BTreeSet<String> = ids.iter().cloned().collect();
    let want: BTreeSet<String> = unique
        .iter()
        .map(|(t, p, r)| {
            key(&serde_json::to_value(firehose::reader::decode(t, p, *r)).expect("json"))
        })
        .collect();
    assert_eq!(ids.len(), set.len(), "no duplicate");
    assert_eq!(set, want, "no gap: every event, history then live");

    // A bad --since is refused, naming what it takes.
    let (out, _) = finish(
        Command::new(bin("firehose-sub"))
            .args(["-h", "127.0.0.1", "-p", &broker.port(), "-t", "#"])
            .args([
                "--since",
                "last tuesday",
                "--history",
                &format!("http://{}", h.http),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("firehose-sub"),
        std::time::Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("RFC 3339"), "{err}");
}

fn fixtures_cached() -> &'static [(String, Vec<u8>, bool)] {
    static F: std::sync::OnceLock<Vec<(String, Vec<u8>, bool)>> = std::sync::OnceLock::new();
    F.get_or_init(fixtures)
}

/// `firehose-history query events|show|subject|timings`: Stacky's
/// questions from a shell, as tables or JSON; errors name the fix.
#[test]
fn query_answers_from_a_shell() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let db = format!("sqlite:{}", dir.path().join("history.db").display());
    let h = start_history(&broker, &db);
    let events = fixtures_cached();
    let ids = distinct_ids(events);
    let mut publisher = Publisher::new(broker.mqtt(), BRIDGE);
    for (t, p, r) in events {
        publisher.publish(t, p, *r);
    }
    wait_until(
        WAIT,
        || metric(&h, "stored_total") >= ids.len() as u64,
        || "every event stored".into(),
    );
    let url = format!("http://{}", h.http);
    let query = |args: &[&str]| {
        let out = run(Command::new(bin("firehose-history"))
            .args(["query", "--url", &url])
            .args(args));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, table, err) = query(&["events", "--type", "gerrit.*", "--limit", "1000"]);
    assert!(ok, "{err}");
    let gerrit = all_pages(&h, "&type=gerrit.*", 1000);
    assert!(table.starts_with("RECEIVED"), "{table}");
    assert!(
        table.ends_with(&format!("{} events\n", gerrit.len())),
        "{table}"
    );
    assert_eq!(
        table.lines().count(),
        gerrit.len() + 2,
        "a header, a row each, a count"
    );
    let (ok, json, _) = query(&["--json", "events", "--type", "gerrit.*", "--limit", "5"]);
    assert!(ok);
    assert_eq!(
        json.lines().count(),
        5,
        "--limit across pages; one JSON per line"
    );
    let id = gerrit[0]["id"].as_str().unwrap();
    let (ok, shown, _) = query(&["show", id]);
    assert!(ok && shown.contains(id), "{shown}");
    let (ok, t, err) = query(&["timings", "--type", "nova.*"]);
    assert!(
        ok && t.starts_with("OPERATION") && t.contains("operations from"),
        "{t}{err}"
    );
    let change = gerrit[0]["subject"].as_str().unwrap();
    let (ok, life, err) = query(&["subject", change]);
    assert!(
        ok && life.starts_with("TIME") && life.contains(&format!("{change}: ")),
        "{life}{err}"
    );
    let (ok, _, err) = query(&["events", "--field", "instance"]);
    assert!(!ok && err.contains("NAME=VALUE"), "{err}");
    let (ok, _, err) = query(&["events", "--since", "yesterday"]);
    assert!(!ok && err.contains("RFC 3339"), "{err}");
}
