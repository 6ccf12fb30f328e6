//! QoS 2 end to end (issue #11, point 4): granted as asked, received and
//! sent with PUBREC/PUBREL/PUBCOMP, exactly once across a reconnect in the
//! middle of the handshake (PUBLISH re-sent with DUP before PUBREC, PUBREL
//! re-sent after it), with raw clients, with paho-mqtt through a proxy that
//! cuts the connection mid-handshake, and with Debian's mosquitto clients.

use firehose_testkit::*;

use firehose_testkit::logins::PUBLISHER as BRIDGE;

fn r_subscribe(r: &mut Raw) {
    r.send(&subscribe(4, 1, "q2/#", 2));
    let (t, body) = r.read().expect("SUBACK");
    assert_eq!(
        (t, suback_codes(4, &body)),
        (0x90, vec![2]),
        "QoS 2 granted"
    );
}

/// The next packet: (first byte, packet id for PUBLISH/PUBREL, payload).
fn next(r: &mut Raw) -> (u8, u16, Vec<u8>) {
    let (t, body) = r.read().expect("a packet");
    match t >> 4 {
        3 => {
            let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
            let pkid = u16::from_be_bytes([body[2 + tl], body[3 + tl]]);
            (t, pkid, body[4 + tl..].to_vec())
        }
        _ => (t, u16::from_be_bytes([body[0], body[1]]), Vec::new()),
    }
}

fn persistent(b: &BrokerProc) -> (Raw, bool) {
    let mut r = Raw::open(b.mqtt());
    r.send(&connect(4, "q2-reader", 60, false, None));
    let (t, body) = r.read().expect("CONNACK");
    assert_eq!((t, body[1]), (0x20, 0));
    (r, body[0] & 1 == 1)
}

#[test]
fn qos2_exactly_once_across_reconnects_mid_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let (mut r, _) = persistent(&b);
    r_subscribe(&mut r);
    // The publisher sends QoS 2 (PUBLISH, PUBREC, PUBREL, PUBCOMP).
    let (mut p, _) = Raw::connect(b.mqtt(), 4, "q2-pub", Some(BRIDGE));
    p.send(&publish(4, b"q2/a", b"one", 2, 7));
    assert_eq!(next(&mut p).0, 0x50, "PUBREC");
    p.send(&[0x62, 2, 0, 7]);
    assert_eq!(next(&mut p).0, 0x70, "PUBCOMP");
    // The reader gets it at QoS 2 and leaves before answering.
    let (t, pkid, payload) = next(&mut r);
    assert_eq!((t & 0xf6, payload.as_slice()), (0x34, b"one".as_slice()));
    drop(r);
    b.wait_metric_at_most("firehose_broker_clients_connected", 1);
    // Back: the same PUBLISH, DUP set. Now PUBREC, and leave before PUBCOMP.
    let (mut r, present) = persistent(&b);
    assert!(present);
    let (t, again, payload) = next(&mut r);
    assert_eq!(
        (t & 0xfe, again, payload.as_slice()),
        (0x3c, pkid, b"one".as_slice()),
        "DUP re-send"
    );
    r.send(&[0x50, 2, (pkid >> 8) as u8, pkid as u8]);
    let (t, rel, _) = next(&mut r);
    assert_eq!((t, rel), (0x62, pkid), "PUBREL");
    drop(r);
    b.wait_metric_at_most("firehose_broker_clients_connected", 1);
    // Back again: PUBREL, not the message; PUBCOMP ends it.
    let (mut r, _) = persistent(&b);
    let (t, rel, _) = next(&mut r);
    assert_eq!((t, rel), (0x62, pkid), "PUBREL re-sent, not the PUBLISH");
    r.send(&[0x70, 2, (pkid >> 8) as u8, pkid as u8]);
    // Nothing else: the next packet is the answer to a PINGREQ.
    r.send(&[0xC0, 0]);
    assert_eq!(r.read().expect("PINGRESP").0, 0xD0);
}

#[test]
fn mosquitto_clients_at_qos2() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    for v in ["mqttv311", "mqttv5"] {
        let topic = format!("q2/{v}");
        let sub = Sub::spawn(
            &b,
            &["-V", v, "-q", "2", "-t", &topic, "-C", "3", "-W", "20"],
        );
        b.wait_metric("firehose_broker_subscriptions", 1);
        for i in 0..3 {
            let out = mosquitto_pub(
                &b,
                &[
                    "-V",
                    v,
                    "-q",
                    "2",
                    "-u",
                    BRIDGE.0,
                    "-P",
                    BRIDGE.1,
                    "-t",
                    &topic,
                    "-m",
                    &format!("m{i}"),
                ],
            );
            assert!(out.status.success(), "{out:?}");
        }
        let (code, out, _) = sub.output();
        assert_eq!((code, out.as_str()), (0, "m0\nm1\nm2\n"), "{v}");
        b.wait_metric_at_most("firehose_broker_subscriptions", 0);
    }
}

/// An anonymous v3.1.1 client's QoS 2 publishes are refused (ACL), yet
/// each goes through the whole handshake (3.1.1 has no reason codes), and
/// the broker remembers nothing for them: a thousand packet ids left
/// without PUBREL, then PUBRELs, all answered; nothing is routed.
#[test]
fn refused_qos2_from_a_v3_client_completes_without_being_routed() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let (mut r, _) = Raw::connect(b.mqtt(), 4, "q2-reader", None);
    r_subscribe(&mut r);
    let (mut p, _) = Raw::connect(b.mqtt(), 4, "q2-anon", None);
    for id in 1..=1000u16 {
        p.send(&publish(4, b"q2/anon", b"no", 2, id));
        assert_eq!(next(&mut p), (0x50, id, Vec::new()), "PUBREC {id}");
    }
    for id in [1u16, 500, 1000] {
        p.send(&[0x62, 2, (id >> 8) as u8, id as u8]);
        assert_eq!(next(&mut p).0, 0x70, "PUBCOMP {id}");
    }
    assert_eq!(b.dropped("acl_publish"), 1000);
    // Nothing reached the reader: the first thing it gets is a bridge's.
    let (mut bridge, _) = Raw::connect(b.mqtt(), 4, "q2-bridge", Some(BRIDGE));
    bridge.send(&publish(4, b"q2/ok", b"yes", 1, 1));
    let (_, _, payload) = next(&mut r);
    assert_eq!(payload, b"yes");
}

/// The same with a real client: paho-mqtt's v5 client with persistent
/// sessions, a proxy cutting its connection once right after a PUBLISH or
/// a PUBREC went through, both directions (`paho_qos2_cut.py` says how).
#[test]
fn paho_qos2_exactly_once_across_cuts_mid_handshake() {
    paho_cuts(&[]);
}

/// The same with the persistent store syncing before every acknowledgement
/// (issue #19): PUBRECs wait for the store, in order, and exactly once holds.
#[test]
fn paho_qos2_exactly_once_across_cuts_with_fsync_always() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").to_string_lossy().into_owned();
    paho_cuts(&["--persistence", &store, "--fsync", "always"]);
}

fn paho_cuts(extra: &[&str]) {
    let python = require_paho();
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], extra);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/paho_qos2_cut.py");
    run_checks(
        std::process::Command::new(&python).arg(&script).args([
            "127.0.0.1",
            &b.port(),
            BRIDGE.0,
            BRIDGE.1,
        ]),
        &[
            "to-client-after-publish",
            "to-client-after-pubrec",
            "from-client-after-publish",
            "from-client-after-pubrec",
            "all",
        ],
    );
}
