//! Limits from the config file: subscriptions per client, topic length and
//! depth, the router's filter table; and the MQTT 5 session timers (session
//! expiry, will delay). Every refusal is answered with its code and counted.

use firehose_testkit::*;

use firehose_testkit::logins::PUBLISHER as BRIDGE;

/// A broker with a password file and `limits` as the `[limits]` table.
fn broker(limits: &str) -> BrokerProc {
    Broker::new().limits(limits).start()
}

fn suback(r: &mut Raw, level: u8) -> Vec<u8> {
    let (t, body) = r.read().expect("SUBACK");
    assert_eq!(t, 0x90, "expected SUBACK");
    suback_codes(level, &body)
}

#[test]
fn subscriptions_per_client_are_capped() {
    let b = broker("max_subscriptions_per_client = 3");
    let (mut r, _) = Raw::connect(b.mqtt(), 4, "many-subs", None);
    r.send(&subscribe_many(4, 1, &["a", "b", "c", "d"]));
    assert_eq!(suback(&mut r, 4), vec![0, 0, 0, 0x80]);
    // Re-subscribing to a filter it already has is not a new subscription.
    r.send(&subscribe_many(4, 2, &["a"]));
    assert_eq!(suback(&mut r, 4), vec![0]);
    let (mut r5, _) = Raw::connect(b.mqtt(), 5, "many-subs-v5", None);
    r5.send(&subscribe_many(5, 1, &["a", "b", "c", "$SYS/#"]));
    assert_eq!(
        suback(&mut r5, 5),
        vec![0, 0, 0, 0x97],
        "v5: quota exceeded"
    );
    assert_eq!(b.dropped("too_many_subscriptions"), 2);
}

#[test]
fn topic_length_and_depth_are_capped() {
    let b = broker("max_topic_length = 20\nmax_topic_levels = 3");
    let (mut sub, _) = Raw::connect(b.mqtt(), 4, "limits-sub", None);
    let long = "x".repeat(21);
    sub.send(&subscribe_many(4, 1, &["a/b/c", "a/b/c/d", &long, "#"]));
    assert_eq!(suback(&mut sub, 4), vec![0, 0x80, 0x80, 0]);
    let (mut sub5, _) = Raw::connect(b.mqtt(), 5, "limits-sub5", None);
    sub5.send(&subscribe_many(5, 1, &["a/b/c/d"]));
    assert_eq!(suback(&mut sub5, 5), vec![0x8F], "v5: topic filter invalid");
    assert_eq!(b.dropped("topic_limit"), 3);

    // Publishes over the limits are dropped and counted; v5 hears 0x90.
    let (mut p5, _) = Raw::connect(b.mqtt(), 5, "limits-pub5", Some(BRIDGE));
    p5.send(&publish(5, b"a/b/c/d", b"too deep", 1, 1));
    let (t, body) = p5.read().expect("PUBACK");
    assert_eq!((t, body[2]), (0x40, 0x90), "v5 PUBACK topic name invalid");
    let (mut p4, _) = Raw::connect(b.mqtt(), 4, "limits-pub4", Some(BRIDGE));
    p4.send(&publish(4, long.as_bytes(), b"too long", 1, 1));
    assert_eq!(
        p4.read().expect("PUBACK").0,
        0x40,
        "v3.1.1 still gets PUBACK"
    );
    p4.send(&publish(4, b"a/b/c", b"fits", 0, 0));
    // The first thing the `#` subscriber sees is the message that fits.
    let (t, body) = sub.read().expect("publish");
    assert_eq!(t & 0xf0, 0x30);
    assert!(body.ends_with(b"fits"), "{body:?}");
    assert_eq!(b.dropped("topic_limit"), 5);
}

#[test]
fn filter_table_is_capped_across_clients() {
    let b = broker("max_filters = 4");
    let (mut one, _) = Raw::connect(b.mqtt(), 4, "filters-1", None);
    one.send(&subscribe_many(4, 1, &["f/1", "f/2", "f/3"]));
    assert_eq!(suback(&mut one, 4), vec![0, 0, 0]);
    let (mut two, _) = Raw::connect(b.mqtt(), 4, "filters-2", None);
    // f/1 exists already; f/4 is the last free slot; f/5 finds the table full.
    // $SYS filters are served by the edge and take no slot.
    two.send(&subscribe_many(4, 1, &["f/1", "f/4", "f/5", "$SYS/#"]));
    assert_eq!(suback(&mut two, 4), vec![0, 0, 0x80, 0]);
    assert_eq!(b.dropped("filter_table_full"), 1);
    // A filter is freed with its last subscriber: once both leave, the
    // table is empty and new filters fit again.
    drop(one);
    drop(two);
    b.wait_metric_at_most("firehose_broker_subscriptions", 0);
    b.wait_metric_at_most("firehose_broker_filters", 0);
    let (mut three, _) = Raw::connect(b.mqtt(), 4, "filters-3", None);
    three.send(&subscribe_many(4, 1, &["f/6", "f/7", "f/8", "f/9"]));
    assert_eq!(suback(&mut three, 4), vec![0, 0, 0, 0]);
    assert_eq!(b.dropped("filter_table_full"), 1);
}

/// Connects with MQTT 5 and returns (connection, session present).
fn connect_v5(
    b: &BrokerProc,
    id: &str,
    clean: bool,
    expiry: u32,
    will: Option<(&str, &str, u32)>,
) -> (Raw, bool) {
    let mut r = Raw::open(b.mqtt());
    r.send(&connect5(id, clean, expiry, will, Some(BRIDGE)));
    let (t, body) = r.read().expect("CONNACK");
    assert_eq!((t, body[1]), (0x20, 0), "CONNACK success");
    (r, body[0] & 1 == 1)
}

#[test]
fn v5_session_expiry_ends_the_session() {
    let b = broker("");
    // Long expiry: the session survives a disconnect.
    let (mut r, present) = connect_v5(&b, "expiry-long", false, 3600, None);
    assert!(!present);
    r.send(&subscribe(5, 1, "exp/#", 1));
    assert_eq!(r.read().expect("SUBACK").0, 0x90);
    drop(r);
    b.wait_metric_at_most("firehose_broker_clients_connected", 0);
    let (_r, present) = connect_v5(&b, "expiry-long", false, 3600, None);
    assert!(present, "the session was kept");

    // Expiry of 1 s: the broker ends the session on its own, counts it,
    // and the next connection starts fresh.
    let (mut r, _) = connect_v5(&b, "expiry-short", false, 1, None);
    r.send(&subscribe(5, 1, "exp/#", 1));
    assert_eq!(r.read().expect("SUBACK").0, 0x90);
    drop(r);
    b.wait_metric(
        "firehose_broker_dropped_total{reason=\"session_expired\"}",
        1,
    );
    let (_r, present) = connect_v5(&b, "expiry-short", false, 1, None);
    assert!(!present, "an expired session is gone");
}

#[test]
fn v5_will_delay() {
    let b = broker("");
    let (mut watcher, _) = Raw::connect(b.mqtt(), 4, "will-watcher", None);
    watcher.send(&subscribe(4, 1, "wills/#", 0));
    assert_eq!(watcher.read().expect("SUBACK").0, 0x90);
    let next_payload = |w: &mut Raw| {
        let (t, body) = w.read().expect("publish");
        assert_eq!(t & 0xf0, 0x30);
        let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
        String::from_utf8_lossy(&body[2 + tl..]).into_owned()
    };

    // A long will delay and a client that comes back in time: no will.
    let (r, _) = connect_v5(
        &b,
        "will-back",
        false,
        3600,
        Some(("wills/back", "gone", 3600)),
    );
    drop(r); // no DISCONNECT: a will would fire now without the delay
    b.wait_metric_at_most("firehose_broker_clients_connected", 1);
    let (mut r, present) = connect_v5(&b, "will-back", false, 3600, None);
    assert!(present);
    r.send(&[0xE0, 0]); // normal DISCONNECT
    drop(r);

    // The same when a new connection takes the session over.
    let (mut old, _) = connect_v5(
        &b,
        "will-take",
        false,
        3600,
        Some(("wills/take", "taken", 3600)),
    );
    let (mut r, present) = connect_v5(&b, "will-take", false, 3600, None);
    assert!(present);
    assert!(
        old.read_until_closed().iter().all(|(t, _)| *t == 0xE0),
        "only a DISCONNECT"
    );
    r.send(&[0xE0, 0]);
    drop(r);

    // A will delay longer than the session: the will goes out when the
    // session ends, never before (the expiry is counted first).
    let (r, _) = connect_v5(
        &b,
        "will-expire",
        false,
        1,
        Some(("wills/expire", "expired", 3600)),
    );
    drop(r);
    assert_eq!(next_payload(&mut watcher), "expired");
    assert_eq!(b.dropped("session_expired"), 1);

    // Marker: nothing from "will-back" or "will-take" arrived before or after.
    let (mut p, _) = Raw::connect(b.mqtt(), 4, "will-marker", Some(BRIDGE));
    p.send(&publish(4, b"wills/marker", b"marker", 0, 0));
    assert_eq!(next_payload(&mut watcher), "marker");
}
