//! Bad input closes only the offending connection, with the reason counted;
//! every crash path of rumqttd 0.20 (docs/rumqttd-0.20.md) has a
//! case here, and a canary subscriber keeps receiving throughout.

use firehose_testkit::*;

use firehose_testkit::logins::PUBLISHER as BRIDGE;

/// Sends `bytes` after a valid v3.1.1 (or v5) CONNECT and expects a close.
fn expect_close(b: &BrokerProc, level: u8, bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let (mut r, ack) = Raw::connect(b.mqtt(), level, "", Some(BRIDGE));
    assert_eq!(ack[1], 0, "connect refused");
    r.send(bytes);
    r.read_until_closed()
}

#[test]
fn malformed_packets_close_only_that_connection() {
    let b = Broker::new().start();
    let mut canary = Canary::new(&b);
    canary.check(&b, BRIDGE);
    let cases: Vec<(&str, u8, Vec<u8>)> = vec![
        (
            "bad remaining length",
            4,
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
        ),
        (
            "invalid UTF-8 topic",
            4,
            publish(4, b"a/\xff\xfe", b"x", 0, 0),
        ),
        (
            "wildcard + in publish topic",
            4,
            publish(4, b"a/+/b", b"x", 0, 0),
        ),
        (
            "wildcard # in publish topic",
            4,
            publish(4, b"a/#", b"x", 0, 0),
        ),
        ("reserved flags on SUBSCRIBE", 4, {
            let mut p = subscribe(4, 1, "a", 0);
            p[0] = 0x80;
            p
        }),
        ("reserved flags on PINGREQ", 4, vec![0xc1, 0]),
        ("publish QoS 3", 4, vec![0x36, 5, 0, 1, b'a', 0, 1]),
        ("second CONNECT", 4, connect(4, "again", 60, true, None)),
        ("client sends CONNACK (v3.1.1)", 4, vec![0x20, 2, 0, 0]),
        ("client sends CONNACK (v5)", 5, vec![0x20, 3, 0, 0, 0]),
        ("client sends SUBACK (v5)", 5, vec![0x90, 4, 0, 1, 0, 0]),
        ("client sends UNSUBACK (v5)", 5, vec![0xb0, 4, 0, 1, 0, 0]),
        ("client sends PINGRESP", 4, vec![0xd0, 0]),
        ("packet type 0", 4, vec![0x00, 0]),
        ("AUTH from v5 client", 5, vec![0xf0, 0]),
        (
            "topic length beyond packet",
            4,
            vec![0x30, 4, 0, 50, b'a', b'b'],
        ),
    ];
    let before = b.dropped("malformed");
    for (i, (name, level, bytes)) in cases.iter().enumerate() {
        let seen = expect_close(&b, *level, bytes);
        // v5 clients are told why with a DISCONNECT before the close.
        if *level == 5 {
            assert!(
                seen.iter().any(|(t, _)| *t == 0xe0),
                "{name}: no DISCONNECT for v5"
            );
        }
        b.wait_metric(
            "firehose_broker_dropped_total{reason=\"malformed\"}",
            before + i as u64 + 1,
        );
        canary.check(&b, BRIDGE);
    }
}

#[test]
fn packet_before_connect_and_garbage() {
    let b = Broker::new().start();
    let mut canary = Canary::new(&b);
    for bytes in [
        publish(4, b"a", b"x", 0, 0),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0x10, 0x05, 0, 3, b'F', b'O', b'O'],
        vec![0x11, 0x02, 0, 0],
    ] {
        let mut r = Raw::open(b.mqtt());
        r.send(&bytes);
        assert!(r.read_until_closed().is_empty(), "no CONNACK for garbage");
        canary.check(&b, BRIDGE);
    }
    assert!(b.dropped("malformed") >= 4);
}

#[test]
fn truncated_packet_then_close() {
    let b = Broker::new().start();
    let mut canary = Canary::new(&b);
    for _ in 0..3 {
        let (mut r, _) = Raw::connect(b.mqtt(), 4, "", Some(BRIDGE));
        let p = publish(4, b"canary/x", b"cut off", 0, 0);
        r.send(&p[..p.len() - 3]);
        drop(r);
        canary.check(&b, BRIDGE);
    }
}

#[test]
fn oversized_packet_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pw = passwd_file(dir.path(), &[BRIDGE]);
    let b = BrokerProc::start(&[
        "--passwd",
        pw.to_str().unwrap(),
        "--max-packet-size",
        "1024",
    ]);
    let mut canary = Canary::new(&b);
    let big = vec![b'x'; 4096];
    let seen = expect_close(&b, 5, &publish(5, b"canary/x", &big, 0, 0));
    assert!(
        seen.iter()
            .any(|(t, body)| *t == 0xe0 && body.first() == Some(&0x95)),
        "v5 gets 0x95 packet too large: {seen:?}"
    );
    assert_eq!(b.dropped("packet_too_large"), 1);
    canary.check(&b, BRIDGE);
}

/// Crash path 1: a blocked subscriber with id X, a takeover by a second
/// connection with id X that leaves, then the first drains.
#[test]
fn takeover_of_a_blocked_subscriber() {
    let b = Broker::new().start();
    let mut canary = Canary::new(&b);
    // A subscriber that never reads.
    let (mut slow, _) = Raw::connect(b.mqtt(), 4, "dup-id", None);
    slow.send(&subscribe(4, 1, "flood/#", 0));
    let (mut p, _) = Raw::connect(b.mqtt(), 4, "flooder", Some(BRIDGE));
    let payload = vec![b'z'; 8192];
    for _ in 0..600 {
        p.send(&publish(4, b"flood/x", &payload, 0, 0));
    }
    // Takeover by the same id, which then leaves.
    let (mut t, ack) = Raw::connect(b.mqtt(), 4, "dup-id", None);
    assert_eq!(ack, vec![0, 0]);
    t.send(&[0xe0, 0]);
    drop(t);
    // The first connection drains what it has (it was closed by the takeover).
    let _ = slow.read_until_closed();
    canary.check(&b, BRIDGE);
    let (_again, ack) = Raw::connect(b.mqtt(), 4, "dup-id", None);
    assert_eq!(ack, vec![0, 0]);
    canary.check(&b, BRIDGE);
}

/// Crash path 2: a v5 publish with properties forwarded to a v4
/// subscriber, and v5 clients sending server-only packets, then reconnects
/// with the same id.
#[test]
fn v5_properties_reach_v4_subscriber() {
    let b = Broker::new().start();
    let (mut sub4, _) = Raw::connect(b.mqtt(), 4, "v4-sub", None);
    sub4.send(&subscribe(4, 1, "props/#", 0));
    assert_eq!(sub4.read().unwrap().0, 0x90);
    let (mut p5, _) = Raw::connect(b.mqtt(), 5, "v5-pub", Some(BRIDGE));
    // PUBLISH QoS 0 with a content-type property (0x03) and a user property (0x26).
    let mut body = Vec::new();
    body.extend_from_slice(&[0, 7]);
    body.extend_from_slice(b"props/a");
    let props: Vec<u8> = [
        vec![0x03, 0, 4],
        b"text".to_vec(),
        vec![0x26, 0, 1, b'k', 0, 1, b'v'],
    ]
    .concat();
    body.push(props.len() as u8);
    body.extend_from_slice(&props);
    body.extend_from_slice(b"with-props");
    p5.send(&packet(0x30, &body));
    let (t, got) = sub4.read().expect("v4 subscriber still connected");
    assert_eq!(t & 0xf0, 0x30);
    assert!(got.ends_with(b"with-props"));
    // Panic triggers of path 2, then the same id again on the same listener.
    for _ in 0..3 {
        let seen = expect_close(&b, 5, &[0x20, 3, 0, 0, 0]);
        assert!(seen.iter().any(|(t, _)| *t == 0xe0));
        let (_r, ack) = Raw::connect(b.mqtt(), 5, "v5-pub", Some(BRIDGE));
        assert_eq!(ack[1], 0);
    }
    let mut canary = Canary::new(&b);
    canary.check(&b, BRIDGE);
}
