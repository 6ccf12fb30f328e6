//! MQTT 3.1, 3.1.1 and 5 on the same port; keepalive rules; every refusal
//! gets its CONNACK code.

use firehose_testkit::logins::PUBLISHER;
use firehose_testkit::*;

#[test]
fn three_versions_on_one_port() {
    let b = BrokerProc::start(&[]);
    for (level, id) in [(3u8, "v31"), (4, "v311"), (5, "v5")] {
        let (mut r, ack) = Raw::connect(b.mqtt(), level, id, None);
        let code = ack[1];
        assert_eq!(code, 0, "level {level} refused: {ack:?}");
        r.send(&subscribe(level, 1, "x/#", 0));
        assert_eq!(r.read().unwrap().0, 0x90, "SUBACK for level {level}");
        r.send(&[0xc0, 0]);
        assert_eq!(r.read().unwrap().0, 0xd0, "PINGRESP for level {level}");
    }
}

#[test]
fn refusals_have_connack_codes() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[PUBLISHER], &["--max-keepalive", "100"]);
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        ("unknown level", connect(7, "x", 60, true, None), 0x01),
        (
            "bad password v3.1.1",
            connect(4, "x", 60, true, Some(("bridge", "wrong"))),
            0x04,
        ),
        (
            "unknown user v3.1.1",
            connect(4, "x", 60, true, Some(("Bridge", PUBLISHER.1))),
            0x04,
        ),
        (
            "bad password v5",
            connect(5, "x", 60, true, Some(("bridge", "wrong"))),
            0x86,
        ),
        (
            "empty id, persistent, v3.1.1",
            connect(4, "", 60, false, None),
            0x02,
        ),
        ("empty id v3.1", connect(3, "", 60, true, None), 0x02),
        // A client id the broker refuses, answered in each client's own
        // version (a v3 CONNACK to a v5 client reads as a protocol error).
        (
            "id too long v3.1.1",
            connect(4, &"i".repeat(300), 60, true, None),
            0x02,
        ),
        (
            "id too long v5",
            connect(5, &"i".repeat(300), 60, true, None),
            0x85,
        ),
        (
            "keepalive above max, v3.1.1",
            connect(4, "k", 200, true, None),
            0x02,
        ),
    ];
    for (name, bytes, code) in cases {
        let mut r = Raw::open(b.mqtt());
        r.send(&bytes);
        let seen = r.read_until_closed();
        assert_eq!(seen.len(), 1, "{name}: {seen:?}");
        assert_eq!(seen[0].0, 0x20, "{name}: CONNACK");
        assert_eq!(seen[0].1[1], code, "{name}");
    }
    assert_eq!(b.dropped("bad_credentials"), 3);
}

#[test]
fn anonymous_refused_with_no_anonymous() {
    let b = BrokerProc::start(&["--no-anonymous"]);
    for (level, code) in [(4u8, 0x05u8), (5, 0x87)] {
        let mut r = Raw::open(b.mqtt());
        r.send(&connect(level, "anon", 60, true, None));
        let seen = r.read_until_closed();
        assert_eq!(seen[0].1[1], code);
    }
    assert_eq!(b.dropped("not_authorized"), 2);
}

#[test]
fn server_busy_over_max_connections() {
    let b = BrokerProc::start(&["--max-connections", "2", "--reserved-connections", "0"]);
    let (_a, _) = Raw::connect(b.mqtt(), 4, "a", None);
    let (_c, _) = Raw::connect(b.mqtt(), 4, "c", None);
    let mut r = Raw::open(b.mqtt());
    r.send(&connect(5, "d", 60, true, None));
    let seen = r.read_until_closed();
    assert_eq!(seen[0].1[1], 0x89, "v5 server busy");
    let mut r = Raw::open(b.mqtt());
    r.send(&connect(4, "e", 60, true, None));
    let seen = r.read_until_closed();
    assert_eq!(seen[0].1[1], 0x03, "v3.1.1 server unavailable");
}

#[test]
fn keepalive_zero_is_legal_and_nonzero_is_enforced() {
    let b = BrokerProc::start(&[]);
    let mut zero = Raw::open(b.mqtt());
    zero.send(&connect(4, "ka0", 0, true, None));
    assert_eq!(zero.read().unwrap().1, vec![0, 0]);
    // keepalive 1 s and silence: closed after 1.5 s (bounded wait, no timing assertion).
    let mut one = Raw::open(b.mqtt());
    one.send(&connect(4, "ka1", 1, true, None));
    assert_eq!(one.read().unwrap().1, vec![0, 0]);
    assert!(one.read_until_closed().is_empty());
    assert_eq!(b.dropped("keepalive_timeout"), 1);
    // The keepalive-0 client is still served.
    zero.send(&[0xc0, 0]);
    assert_eq!(zero.read().unwrap().0, 0xd0);
}

#[test]
fn v5_told_the_server_keepalive() {
    let b = BrokerProc::start(&["--max-keepalive", "30"]);
    let mut r = Raw::open(b.mqtt());
    r.send(&connect(5, "ka", 600, true, None));
    let (t, body) = r.read().unwrap();
    assert_eq!(t, 0x20);
    assert_eq!(body[1], 0);
    // Server Keep Alive property (0x13) = 30.
    let props = &body[3..];
    let pos = props.windows(3).position(|w| w == [0x13, 0, 30]);
    assert!(pos.is_some(), "no server keep alive in {body:?}");
}

#[test]
fn v5_empty_client_id_gets_assigned_id() {
    let b = BrokerProc::start(&[]);
    let mut r = Raw::open(b.mqtt());
    r.send(&connect(5, "", 60, true, None));
    let (_, body) = r.read().unwrap();
    assert_eq!(body[1], 0);
    assert!(
        body.windows(6)
            .any(|w| w.starts_with(&[0x12]) && &w[3..] == b"aut"),
        "assigned id property: {body:?}"
    );
}

#[test]
fn anonymous_readers_cannot_lock_out_publishers() {
    let dir = tempfile::tempdir().unwrap();
    // 3 connections, 1 of them (10%, at least 1) reserved for logged-in users.
    let b = BrokerProc::with_users(
        dir.path(),
        &[PUBLISHER],
        &["--max-connections", "3", "--max-keepalive", "60"],
    );
    // Idle keepalive-0 readers take what anonymous clients may have...
    let (_a, ack) = Raw::connect(b.mqtt(), 4, "idle-a", None);
    assert_eq!(ack[1], 0);
    let (_b, ack) = Raw::connect(b.mqtt(), 4, "idle-b", None);
    assert_eq!(ack[1], 0);
    let (_c, ack) = Raw::connect(b.mqtt(), 4, "idle-c", None);
    assert_eq!(ack[1], 0x03, "the third anonymous client finds no slot");
    // ...and the bridge still gets in.
    let (mut bridge, ack) = Raw::connect(b.mqtt(), 4, "bridge-1", Some(PUBLISHER));
    assert_eq!(ack[1], 0, "the reserved slot is the bridge's");
    bridge.send(&[0xc0, 0]);
    assert_eq!(bridge.read().unwrap().0, 0xd0);
    assert_eq!(b.dropped("max_connections"), 1);
}

#[test]
fn connections_per_address_are_capped_for_anonymous_clients() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[PUBLISHER], &["--max-connections-per-ip", "2"]);
    let (_a, ack) = Raw::connect(b.mqtt(), 4, "a", None);
    assert_eq!(ack[1], 0);
    let (_b, ack) = Raw::connect(b.mqtt(), 5, "b", None);
    assert_eq!(ack[1], 0);
    let (_c, ack) = Raw::connect(b.mqtt(), 5, "c", None);
    assert_eq!(ack[1], 0x89, "v5 server busy for the third from 127.0.0.1");
    let (_d, ack) = Raw::connect(b.mqtt(), 4, "d", Some(PUBLISHER));
    assert_eq!(ack[1], 0, "logged-in users are not capped per address");
    assert_eq!(b.dropped("max_connections_per_ip"), 1);
}

#[test]
fn max_keepalive_holds_v3_clients_that_ask_for_none() {
    let b = BrokerProc::start(&["--max-keepalive", "1"]);
    // keepalive 0 ("never") from a v3.1.1 client: accepted, but held to the
    // cap: silent past 1.5 x 1 s, it is closed (bounded wait, no timing assertion).
    let mut r = Raw::open(b.mqtt());
    r.send(&connect(4, "never", 0, true, None));
    assert_eq!(r.read().unwrap().1, vec![0, 0]);
    assert!(r.read_until_closed().is_empty());
    assert_eq!(b.dropped("keepalive_timeout"), 1);
}
