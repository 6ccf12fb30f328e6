//! `--persistence` (issue #19): what the broker promised survives `kill -9`
//! and a clean stop. Real processes: the broker killed and started again on
//! the same store, Debian's mosquitto clients, raw MQTT where the exact
//! packets matter (a publisher cut off mid-stream, packet ids).

use std::collections::BTreeSet;
use std::path::Path;

use firehose_testkit::*;

use firehose_testkit::logins::PUBLISHER as BRIDGE;

fn start(dir: &Path, extra: &[&str]) -> BrokerProc {
    let store = dir.join("store").to_string_lossy().into_owned();
    let mut args = vec!["--persistence", store.as_str()];
    args.extend_from_slice(extra);
    BrokerProc::with_users(dir, &[BRIDGE], &args)
}

/// A v3.1.1 persistent session (clean session 0) for `id`; returns the
/// connection and whether the broker had the session.
fn persistent(b: &BrokerProc, id: &str) -> (Raw, bool) {
    let mut r = Raw::open(b.mqtt());
    r.send(&connect(4, id, 60, false, None));
    let (t, body) = r.expect("CONNACK");
    assert_eq!((t, body[1]), (0x20, 0), "CONNACK accepted");
    (r, body[0] & 1 == 1)
}

/// Reads PUBLISHes (acknowledging QoS 1) until one with payload `end`;
/// returns the payloads before it.
fn read_until(r: &mut Raw, end: &[u8]) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    loop {
        let (t, body) = r.expect("a PUBLISH");
        if t >> 4 != 3 {
            continue;
        }
        let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
        let qos = (t >> 1) & 3;
        let start = 2 + tl + if qos > 0 { 2 } else { 0 };
        if qos == 1 {
            let id = publish_pkid(&body);
            r.send(&[0x40, 2, id[0], id[1]]);
        }
        let payload = body[start..].to_vec();
        if payload == end {
            return got;
        }
        got.push(payload);
    }
}

/// The issue's first test: a bridge publishes 10,000 QoS 1 events for a
/// persistent reader that is offline; the broker is killed (-9) in the
/// middle, with publishes in flight. Started again on its store, the
/// reader gets every event the broker had PUBACKed.
#[test]
fn kill_9_loses_no_acknowledged_event_for_an_offline_reader() {
    let dir = tempfile::tempdir().unwrap();
    // The reader's queue holds all of them (an ingester is given room).
    let room = ["--max-queued-messages", "20000"];
    let b = start(dir.path(), &room);
    let (mut reader, present) = persistent(&b, "history");
    assert!(!present);
    reader.send(&subscribe(4, 1, "load/#", 1));
    assert_eq!(reader.expect("SUBACK").0, 0x90);
    reader.send(&[0xe0, 0]);
    drop(reader);
    b.wait_metric_at_most("firehose_broker_clients_connected", 0);

    let (mut p, ack) = Raw::connect(b.mqtt(), 4, "bridge-load", Some(BRIDGE));
    assert_eq!(ack, vec![0, 0]);
    let total = 10_000u32;
    let window = 100u32;
    let kill_at = 5_000u32;
    let mut acked = BTreeSet::new();
    let pkid = |i: u32| (i % 60_000 + 1) as u16;
    let mut next = 0u32;
    'outer: while next < total {
        let end = (next + window).min(total);
        for i in next..end {
            if !p.try_send(&publish(
                4,
                b"load/event",
                i.to_string().as_bytes(),
                1,
                pkid(i),
            )) {
                break 'outer;
            }
        }
        if next >= kill_at {
            // A window is on its way: the broker dies now.
            b.signal("KILL");
        }
        for _ in next..end {
            let Some((t, body)) = p.read() else {
                break 'outer;
            };
            assert_eq!(t, 0x40, "PUBACK");
            let id = u16::from_be_bytes([body[0], body[1]]);
            let i = (next..end)
                .find(|i| pkid(*i) == id)
                .expect("a PUBACK of this window");
            acked.insert(i);
        }
        next = end;
    }
    assert!(
        acked.len() >= kill_at as usize,
        "{} acknowledged before the kill",
        acked.len()
    );
    assert!(acked.len() < total as usize, "the kill came before the end");
    drop(p);
    drop(b);

    let b = start(dir.path(), &room);
    b.wait_log("persistent store restored");
    let (mut reader, present) = persistent(&b, "history");
    assert!(present, "the reader's session survived");
    Publisher::new(b.mqtt(), BRIDGE).publish("load/event", b"end", false);
    let got: BTreeSet<u32> = read_until(&mut reader, b"end")
        .iter()
        .map(|p| String::from_utf8_lossy(p).parse().expect("an event number"))
        .collect();
    let missing: Vec<&u32> = acked.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(b.dropped("queue_full"), 0);
}

/// Issue #19 point 4: beyond `queue_memory` (64 KiB by default), what is
/// queued for an offline persistent reader is on disk only. Twenty offline
/// readers are owed 300 real nova notifications each (over 12 MB in all);
/// the broker holds at most 64 KiB of each in memory, and every reader
/// gets all of them, in order, on its return: half before a `kill -9`,
/// half after it (restored from disk, still paged).
#[test]
fn offline_queues_cost_disk_not_memory() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path(), &[]);
    let ids: Vec<String> = (0..20).map(|i| format!("ingester-{i}")).collect();
    for id in &ids {
        let (mut r, present) = persistent(&b, id);
        assert!(!present);
        r.send(&subscribe(4, 1, "nova/#", 1));
        assert_eq!(r.expect("SUBACK").0, 0x90);
        r.send(&[0xe0, 0]);
    }
    b.wait_metric_at_most("firehose_broker_clients_connected", 0);
    let lines = fixture_lines("nova/versioned.jsonl");
    let topic = "nova/prod/instance/3f6c";
    let mut p = Publisher::new(b.mqtt(), BRIDGE);
    let mut sent = Vec::new();
    for i in 0..300 {
        let payload = format!("{i:03} {}", lines[i % lines.len()]);
        p.publish(topic, payload.as_bytes(), false);
        sent.push(payload.into_bytes());
    }
    p.publish(topic, b"end", false);
    let owed: u64 = sent.iter().map(|s| (s.len() + topic.len()) as u64).sum();
    let memory = 64 * 1024 + 4096;
    let readers = ids.len() as u64;
    let held = b.metric("firehose_broker_queued_bytes");
    assert!(
        held <= readers * memory,
        "{held} bytes in memory for {readers} offline queues of {owed} bytes each"
    );
    assert!(
        owed > 10 * memory,
        "the test owes each reader far more than its memory share"
    );
    let paged = b.metric("firehose_broker_store_paged");
    assert!(paged >= readers * 250, "{paged} deliveries on disk only");

    let check = |b: &BrokerProc, id: &str| {
        let (mut r, present) = persistent(b, id);
        assert!(present, "{id}: the session is there");
        let got = read_until(&mut r, b"end");
        assert_eq!(got.len(), sent.len(), "{id}: every event");
        assert!(got == sent, "{id}: every event, in order, byte for byte");
        r.send(&[0xe0, 0]);
    };
    for id in &ids[..10] {
        check(&b, id);
    }
    b.wait_metric_at_most("firehose_broker_clients_connected", 1);
    b.signal("KILL");
    drop(p);
    drop(b);

    let b = start(dir.path(), &[]);
    b.wait_log("persistent store restored");
    let held = b.metric("firehose_broker_queued_bytes");
    assert!(held <= readers * memory, "restored: {held} bytes in memory");
    for id in &ids[10..] {
        check(&b, id);
    }
    assert_eq!(b.dropped("store_damage"), 0);
    assert_eq!(b.dropped("queue_full"), 0);
}

/// Retained state (a bridge's status, nova's service states) and a
/// delayed will survive `kill -9`; the will fires after the restart.
#[test]
fn retained_states_and_a_delayed_will_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path(), &[]);
    let mut p = Publisher::new(b.mqtt(), BRIDGE);
    p.publish("firehose/bridge/nova/status", b"online", true);
    let service = fixture_lines("nova/versioned.jsonl").remove(0);
    p.publish(
        "nova/prod/service/nova-compute/h1",
        service.as_bytes(),
        true,
    );
    p.publish("firehose/bridge/gerrit/status", b"online", true);
    p.publish("firehose/bridge/gerrit/status", b"", true);
    // A bridge with a will, delayed 6 s (long enough for the restart),
    // that loses its connection.
    let mut w = Raw::open(b.mqtt());
    w.send(&connect5(
        "gerrit-bridge",
        true,
        300,
        Some(("firehose/bridge/gerrit/will", "offline", 6)),
        Some(BRIDGE),
    ));
    assert_eq!(w.expect("CONNACK").0, 0x20);
    drop(w);
    b.wait_metric_at_most("firehose_broker_clients_connected", 1);
    b.signal("KILL");
    drop(p);
    drop(b);

    let b = start(dir.path(), &[]);
    let will = Sub::spawn(
        &b,
        &["-t", "firehose/bridge/gerrit/will", "-C", "1", "-W", "30"],
    );
    let (code, out, err) =
        Sub::spawn(&b, &["-t", "firehose/#", "-t", "nova/#", "-v", "-W", "2"]).output();
    assert!(code == 0 || err.contains("Timed out"), "{err}");
    assert!(out.contains("firehose/bridge/nova/status online"), "{out}");
    assert!(out.contains("nova/prod/service/nova-compute/h1 "), "{out}");
    assert!(
        !out.contains("firehose/bridge/gerrit/status"),
        "a deleted retained message stays deleted: {out}"
    );
    let (code, out, err) = will.output();
    assert_eq!((code, out.trim()), (0, "offline"), "{err}");
}

/// A persistent session's expiry counts from its client's departure, not
/// from the restart: away longer than its expiry, it is gone; within, kept.
#[test]
fn session_expiry_counts_from_the_departure() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start(dir.path(), &["--persistent-client-expiration", "2"]);
    let (mut r, _) = persistent(&b, "short");
    r.send(&subscribe(4, 1, "x/#", 1));
    assert_eq!(r.expect("SUBACK").0, 0x90);
    r.send(&[0xe0, 0]);
    // Logged in: an anonymous session is capped at the v3 expiration.
    let mut r = Raw::open(b.mqtt());
    r.send(&connect5("long", false, 300, None, Some(BRIDGE)));
    assert_eq!(r.expect("CONNACK").0, 0x20);
    r.send(&subscribe(5, 1, "x/#", 1));
    assert_eq!(r.expect("SUBACK").0, 0x90);
    r.send(&[0xe0, 0]);
    b.wait_metric_at_most("firehose_broker_clients_connected", 0);
    b.signal("TERM");
    // Dropping kills: let it finish writing the store first.
    b.wait_exit();
    drop(b);
    // Down for longer than the short expiry (the behaviour under test).
    std::thread::sleep(std::time::Duration::from_secs(3));
    let b = start(dir.path(), &[]);
    b.wait_log("persistent store restored");
    let (_r, present) = persistent(&b, "short");
    assert!(!present, "expired while the broker was down");
    let mut r = Raw::open(b.mqtt());
    r.send(&connect5("long", false, 300, None, Some(BRIDGE)));
    let (t, body) = r.expect("CONNACK");
    assert_eq!(
        (t, body[0] & 1),
        (0x20, 1),
        "kept: 300 s from its departure"
    );
}

/// A store cut in the middle of its last record (a torn write) loses that
/// record only; the broker starts, counts it, and goes on appending.
#[test]
fn a_torn_tail_loses_only_the_torn_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start(dir.path(), &[]);
    for i in 1..=3 {
        let out = mosquitto_pub(
            &b,
            &[
                "-u",
                BRIDGE.0,
                "-P",
                BRIDGE.1,
                "-r",
                "-t",
                &format!("r/{i}"),
                "-m",
                &format!("v{i}"),
            ],
        );
        assert!(out.status.success());
    }
    b.signal("TERM");
    // Dropping kills: let it finish writing the store first.
    b.wait_exit();
    drop(b);
    let log = dir.path().join("store/store.log");
    let len = std::fs::metadata(&log).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len - 5)
        .unwrap();

    let b = start(dir.path(), &[]);
    b.wait_log("cut at the last good one");
    assert_eq!(b.dropped("store_damage"), 1);
    let (_, out, _) = Sub::spawn(&b, &["-t", "r/#", "-v", "-W", "2"]).output();
    assert_eq!(
        out.lines().collect::<BTreeSet<_>>(),
        BTreeSet::from(["r/1 v1", "r/2 v2"]),
        "{out}"
    );
    let ok = mosquitto_pub(
        &b,
        &[
            "-u", BRIDGE.0, "-P", BRIDGE.1, "-r", "-t", "r/4", "-m", "v4",
        ],
    );
    assert!(ok.status.success());
    b.signal("KILL");
    drop(b);
    let b = start(dir.path(), &[]);
    assert_eq!(
        b.dropped("store_damage"),
        0,
        "appended after the cut, not after garbage"
    );
    let (_, out, _) = Sub::spawn(&b, &["-t", "r/#", "-v", "-W", "2"]).output();
    assert_eq!(
        out.lines().collect::<BTreeSet<_>>(),
        BTreeSet::from(["r/1 v1", "r/2 v2", "r/4 v4"]),
        "{out}"
    );
}

/// Starts the broker on `store` expecting it to refuse; returns its stderr.
fn refused(store: &Path) -> String {
    let out = std::process::Command::new(bin("firehose-broker"))
        .args([
            "--mqtt",
            "127.0.0.1:0",
            "--ws",
            "127.0.0.1:0",
            "--persistence",
        ])
        .arg(store)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the broker started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A store from a newer broker is refused with an error that says what to
/// do; a second broker on the same directory is refused too.
#[test]
fn a_newer_store_or_a_second_broker_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start(dir.path(), &[]);
    let store = dir.path().join("store");
    let err = refused(&store);
    assert!(err.contains("in use by another broker"), "{err}");
    b.signal("TERM");
    // Dropping kills: let it finish writing the store first.
    b.wait_exit();
    drop(b);
    let mut bytes = std::fs::read(store.join("store.log")).unwrap();
    bytes[8] = 99;
    std::fs::write(store.join("store.log"), bytes).unwrap();
    let err = refused(&store);
    assert!(
        err.contains("newer firehose-broker") && err.contains("format 99"),
        "{err}"
    );
}

/// QoS 2 across `kill -9`: a publisher and a reader with persistent
/// sessions, the broker killed while a window of QoS 2 publishes is on
/// its way. After the restart the publisher completes what it started as
/// MQTT says (PUBREL for what got a PUBREC, the PUBLISH again with DUP for
/// the rest), and the reader gets every message exactly once: the broker
/// kept the packet ids it had received and what it had queued.
#[test]
fn qos2_exactly_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path(), &["--max-queued-messages", "20000"]);
    let (mut reader, _) = persistent(&b, "q2-reader");
    reader.send(&subscribe(4, 1, "q2/#", 2));
    assert_eq!(reader.expect("SUBACK").0, 0x90);
    reader.send(&[0xe0, 0]);
    drop(reader);
    let pub_connect = || connect(4, "q2-pub", 60, false, Some(BRIDGE));
    let mut p = Raw::open(b.mqtt());
    p.send(&pub_connect());
    assert_eq!(p.expect("CONNACK").0, 0x20);
    let (total, window, kill_at) = (1_000u16, 50u16, 500u16);
    // Packet id i + 1 carries message i; what the broker answered.
    let mut recd = BTreeSet::new();
    let mut done = BTreeSet::new();
    let mut start_at = 0u16;
    'run: while start_at < total {
        let end = (start_at + window).min(total);
        for i in start_at..end {
            p.send(&publish(4, b"q2/m", i.to_string().as_bytes(), 2, i + 1));
        }
        if start_at >= kill_at {
            b.signal("KILL");
        }
        for _ in start_at..end {
            let Some((0x50, body)) = p.read() else {
                break 'run;
            };
            recd.insert(u16::from_be_bytes([body[0], body[1]]) - 1);
        }
        for i in start_at..end {
            if !p.try_send(&[0x62, 2, (i + 1).to_be_bytes()[0], (i + 1).to_be_bytes()[1]]) {
                break 'run;
            }
        }
        for _ in start_at..end {
            let Some((0x70, body)) = p.read() else {
                break 'run;
            };
            done.insert(u16::from_be_bytes([body[0], body[1]]) - 1);
        }
        start_at = end;
    }
    assert!(start_at < total, "the kill came before the end");
    drop(p);
    drop(b);

    let b = start(dir.path(), &["--max-queued-messages", "20000"]);
    let mut p = Raw::open(b.mqtt());
    p.send(&pub_connect());
    let (t, body) = p.expect("CONNACK");
    assert_eq!(
        (t, body[0] & 1),
        (0x20, 1),
        "the publisher's session survived"
    );
    // Finish the interrupted window, then send the rest.
    for i in start_at..total {
        let id = (i + 1).to_be_bytes();
        if done.contains(&i) {
            continue;
        }
        if recd.contains(&i) {
            p.send(&[0x62, 2, id[0], id[1]]);
        } else {
            let mut m = publish(4, b"q2/m", i.to_string().as_bytes(), 2, i + 1);
            if i < start_at + window {
                m[0] |= 0x08; // DUP: sent before the crash
            }
            p.send(&m);
            let (t, _) = p.expect("PUBREC");
            assert_eq!(t, 0x50);
            p.send(&[0x62, 2, id[0], id[1]]);
        }
        assert_eq!(p.expect("PUBCOMP").0, 0x70);
    }
    p.send(&publish(4, b"q2/m", b"end", 2, 2000));
    assert_eq!(p.expect("PUBREC").0, 0x50);
    p.send(&[0x62, 2, 0x07, 0xd0]);
    assert_eq!(p.expect("PUBCOMP").0, 0x70);

    let (mut r, present) = persistent(&b, "q2-reader");
    assert!(present);
    let mut got: std::collections::BTreeMap<String, u32> = Default::default();
    loop {
        let (t, body) = r.expect("a PUBLISH or PUBREL");
        match t >> 4 {
            3 => {
                let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                let id = publish_pkid(&body);
                let payload = String::from_utf8_lossy(&body[2 + tl + 2..]).into_owned();
                r.send(&[0x50, 2, id[0], id[1]]);
                if payload == "end" {
                    break;
                }
                *got.entry(payload).or_default() += 1;
            }
            6 => r.send(&[0x70, 2, body[0], body[1]]),
            _ => {}
        }
    }
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let missing: Vec<u16> = (0..total)
        .filter(|i| !got.contains_key(&i.to_string()))
        .collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
}
