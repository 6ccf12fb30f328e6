//! Sessions: persistent sessions keep QoS 1 messages while the client is
//! away (bounded by max_queued_messages, what arrives beyond dropped and counted),
//! takeover by client id, and UNSUBSCRIBE answered right after a resume.

use firehose_testkit::*;

use firehose_testkit::logins::PUBLISHER as BRIDGE;

fn broker(extra: &[&str]) -> BrokerProc {
    Broker::new().args(extra).start()
}

fn persistent(b: &BrokerProc, id: &str) -> (Raw, bool) {
    let mut r = Raw::open(b.mqtt());
    r.send(&connect(4, id, 60, false, None));
    let (t, body) = r.read().expect("CONNACK");
    assert_eq!(t, 0x20);
    assert_eq!(body[1], 0);
    (r, body[0] & 1 == 1)
}

fn publish_n(b: &BrokerProc, topic: &str, n: usize) {
    let (mut p, _) = Raw::connect(b.mqtt(), 4, "publisher", Some(BRIDGE));
    for i in 0..n {
        p.send(&publish(
            4,
            topic.as_bytes(),
            format!("m{i}").as_bytes(),
            1,
            (i + 1) as u16,
        ));
        assert_eq!(p.read().unwrap().0, 0x40, "PUBACK");
    }
}

/// Reads `n` QoS 1 publishes, acking each; returns the payloads.
fn receive(r: &mut Raw, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let (t, body) = r.read().expect("publish");
        if t & 0xf0 != 0x30 {
            continue;
        }
        let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
        let qos = (t >> 1) & 3;
        let mut off = 2 + tl;
        if qos > 0 {
            let pkid = [body[off], body[off + 1]];
            off += 2;
            r.send(&[0x40, 2, pkid[0], pkid[1]]);
        }
        got.push(String::from_utf8_lossy(&body[off..]).into_owned());
    }
    got
}

#[test]
fn persistent_session_gets_what_was_published_while_away() {
    let b = broker(&[]);
    let (mut r, present) = persistent(&b, "keeper");
    assert!(!present);
    r.send(&subscribe(4, 1, "events/#", 1));
    assert_eq!(r.read().unwrap().1, vec![0, 1, 1], "granted QoS 1");
    drop(r);
    b.wait_metric("firehose_broker_clients_connected", 0);
    publish_n(&b, "events/x", 50);
    let (mut r, present) = persistent(&b, "keeper");
    assert!(present, "session present");
    let got = receive(&mut r, 50);
    assert_eq!(got, (0..50).map(|i| format!("m{i}")).collect::<Vec<_>>());
    // UNSUBSCRIBE after resume is honoured (rumqttd ignores it), and a
    // filter never subscribed still gets its UNSUBACK.
    r.send(&packet(0xa2, &[&[0, 9][..], &[0, 8], b"events/#"].concat()));
    assert_eq!(r.read().unwrap(), (0xb0, vec![0, 9]));
    r.send(&packet(0xa2, &[&[0, 10][..], &[0, 5], b"never"].concat()));
    assert_eq!(r.read().unwrap(), (0xb0, vec![0, 10]));
    publish_n(&b, "events/y", 1);
    r.send(&[0xc0, 0]);
    assert_eq!(
        r.read().unwrap().0,
        0xd0,
        "only PINGRESP: nothing delivered after unsubscribe"
    );
}

#[test]
fn offline_queue_is_bounded_and_what_arrives_beyond_is_dropped() {
    let b = broker(&["--max-queued-messages", "10"]);
    let (mut r, _) = persistent(&b, "small");
    r.send(&subscribe(4, 1, "q/#", 1));
    r.read().unwrap();
    drop(r);
    b.wait_metric("firehose_broker_clients_connected", 0);
    publish_n(&b, "q/x", 25);
    b.wait_metric("firehose_broker_dropped_total{reason=\"queue_full\"}", 15);
    let (mut r, present) = persistent(&b, "small");
    assert!(present);
    let got = receive(&mut r, 10);
    assert_eq!(
        got,
        (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>(),
        "the first 10 are kept, in order (as mosquitto does)"
    );
    assert_eq!(b.dropped("queue_full"), 15);
}

#[test]
fn takeover_closes_the_old_connection() {
    let b = broker(&[]);
    let (mut old, _) = Raw::connect(b.mqtt(), 5, "same-id", None);
    let (mut new, _) = Raw::connect(b.mqtt(), 5, "same-id", None);
    let seen = old.read_until_closed();
    assert_eq!(
        seen.first().map(|p| (p.0, p.1[0])),
        Some((0xe0, 0x8e)),
        "v5 old connection told 0x8E session taken over"
    );
    new.send(&[0xc0, 0]);
    assert_eq!(new.read().unwrap().0, 0xd0);
    // Clean session takeover of a persistent session starts afresh.
    let (p, _) = persistent(&b, "mixed");
    let (mut c, ack) = Raw::connect(b.mqtt(), 4, "mixed", None);
    assert_eq!(ack, vec![0, 0], "no session present for clean session");
    drop(p);
    c.send(&[0xc0, 0]);
    assert_eq!(c.read().unwrap().0, 0xd0);
}

#[test]
fn slow_subscriber_does_not_slow_others() {
    let b = broker(&["--max-queued-messages", "100"]);
    // Never reads.
    let (mut slow, _) = Raw::connect(b.mqtt(), 4, "slow", None);
    slow.send(&subscribe(4, 1, "fast/#", 0));
    let (mut fast, _) = Raw::connect(b.mqtt(), 4, "fast", None);
    fast.send(&subscribe(4, 1, "fast/#", 0));
    assert_eq!(fast.read().unwrap().0, 0x90);
    let (mut p, _) = Raw::connect(b.mqtt(), 4, "pub", Some(BRIDGE));
    let payload = vec![b'p'; 64 * 1024];
    // Rounds of 50: the fast subscriber takes each round in full before the
    // next, while the slow one falls behind by everything.
    for _round in 0..40 {
        for _ in 0..50 {
            p.send(&publish(4, b"fast/x", &payload, 0, 0));
        }
        p.send(&[0xc0, 0]);
        assert_eq!(p.read().unwrap().0, 0xd0, "publisher never blocked");
        let mut count = 0;
        while count < 50 {
            let Some((t, _)) = fast.read() else {
                panic!("fast subscriber starved in round {_round} at {count}; sent={} dropped={}; logs:\n{}", b.metric("firehose_broker_publish_sent_total"), b.dropped("queue_full"), b.logs())
            };
            if t & 0xf0 == 0x30 {
                count += 1;
            }
        }
    }
    b.wait_metric("firehose_broker_dropped_total{reason=\"queue_full\"}", 1);
    drop(slow);
}

#[test]
fn nobody_takes_over_another_users_session() {
    let b = broker(&[]);
    // The bridge's client id is public (it is in its status topic).
    let (mut bridge, ack) = Raw::connect(b.mqtt(), 4, "firehose-gerrit-host1", Some(BRIDGE));
    assert_eq!(ack, vec![0, 0]);
    for level in [4u8, 5] {
        let (_, ack) = Raw::connect(b.mqtt(), level, "firehose-gerrit-host1", None);
        let want = if level == 5 { 0x85 } else { 0x02 };
        assert_eq!(ack[1], want, "anonymous takeover refused (level {level})");
    }
    assert_eq!(b.dropped("takeover_other_user"), 2);
    // The bridge never noticed.
    bridge.send(&[0xc0, 0]);
    assert_eq!(bridge.read().expect("PINGRESP").0, 0xd0);
    // The same user may take its own session over (a reconnecting bridge).
    let (mut again, ack) = Raw::connect(b.mqtt(), 4, "firehose-gerrit-host1", Some(BRIDGE));
    assert_eq!(ack, vec![0, 0]);
    assert!(
        bridge.read_until_closed().is_empty(),
        "old connection closed"
    );
    again.send(&[0xc0, 0]);
    assert_eq!(again.read().expect("PINGRESP").0, 0xd0);
}

#[test]
fn two_clients_fighting_over_an_id_are_slowed_down() {
    let b = broker(&[]);
    let mut refused = 0;
    let mut conns = Vec::new();
    for _ in 0..12 {
        let (r, ack) = Raw::connect(b.mqtt(), 4, "contested", None);
        if ack[1] == 0x02 {
            refused += 1;
        }
        conns.push(r);
    }
    // Five takeovers in the window, then "identifier rejected".
    assert_eq!(refused, 12 - 1 - 5, "takeovers beyond the rate are refused");
    assert_eq!(b.dropped("takeover_rate"), refused);
}

#[test]
fn offline_sessions_share_payloads_and_stay_under_the_global_budget() {
    // 40 offline persistent `#` readers and 10 MB published at QoS 1: before,
    // each session held its own copy (RSS 167 -> 509 MB). Now payloads are
    // shared and the queued total is capped (4 MB here); the largest offline
    // queues lose their oldest first, each message counted.
    let b = broker(&[
        "--max-queued-bytes-total",
        "4000000",
        "--max-queued-messages",
        "100000",
        "--max-queued-bytes",
        "100000000",
    ]);
    for i in 0..40 {
        let mut r = Raw::open(b.mqtt());
        r.send(&connect(4, &format!("reader-{i}"), 60, false, None));
        assert_eq!(r.read().expect("CONNACK").0, 0x20);
        r.send(&subscribe(4, 1, "#", 1));
        assert_eq!(r.read().expect("SUBACK").0, 0x90);
    }
    b.wait_metric_at_most("firehose_broker_clients_connected", 0);
    let rss_before = b.rss_kib();
    let payload = vec![b'x'; 10_000];
    let (mut p, _) = Raw::connect(b.mqtt(), 4, "publisher", Some(BRIDGE));
    for i in 0..1000u16 {
        p.send(&publish(4, b"big/topic", &payload, 1, i + 1));
        assert_eq!(p.read().unwrap().0, 0x40, "PUBACK");
    }
    let queued = b.metric("firehose_broker_queued_bytes");
    assert!(queued <= 4_000_000, "queued {queued} over the budget");
    // 40 x 10 MB were owed; what is not queued was dropped and counted.
    let dropped = b.dropped("queued_bytes_total");
    assert!(dropped > 30_000, "dropped {dropped}");
    assert!(
        b.rss_kib() < rss_before + 60 * 1024,
        "payloads are shared: RSS {} -> {} KiB",
        rss_before,
        b.rss_kib()
    );
    // A reader coming back gets what its queue kept, newest last.
    let (mut r, present) = persistent(&b, "reader-7");
    assert!(present);
    let kept = r.drain_publishes(std::time::Duration::from_secs(2));
    assert!(kept > 0 && kept < 1000, "reader-7 kept {kept}");
}

#[test]
fn anonymous_persistent_sessions_are_capped() {
    let b = broker(&["--max-anonymous-persistent-sessions", "2"]);
    let mut present = Vec::new();
    for i in 0..3 {
        let (r, _) = persistent(&b, &format!("anon-{i}"));
        drop(r);
    }
    b.wait_metric_at_most("firehose_broker_clients_connected", 0);
    for i in 0..3 {
        let (_r, p) = persistent(&b, &format!("anon-{i}"));
        present.push(p);
    }
    assert_eq!(
        present,
        vec![true, true, false],
        "the third got a clean session"
    );
    assert!(b.dropped("persistent_anonymous") >= 1);
    // A logged-in user is not capped.
    let mut r = Raw::open(b.mqtt());
    r.send(&connect(4, "bridge-persistent", 60, false, Some(BRIDGE)));
    assert_eq!(r.read().unwrap().1, vec![0, 0]);
}

#[test]
fn overlapping_subscriptions_get_one_copy() {
    let b = broker(&[]);
    let (mut r, _) = Raw::connect(b.mqtt(), 4, "overlapping", None);
    r.send(&subscribe_many(4, 1, &["ov/#", "ov/+", "ov/x"]));
    assert_eq!(r.read().expect("SUBACK").0, 0x90);
    let (mut other, _) = Raw::connect(b.mqtt(), 4, "plain", None);
    other.send(&subscribe(4, 1, "ov/#", 0));
    assert_eq!(other.read().expect("SUBACK").0, 0x90);
    publish_n(&b, "ov/x", 3);
    assert_eq!(
        r.drain_publishes(std::time::Duration::from_secs(1)),
        3,
        "one copy each (MQTT-3.3.4-2)"
    );
    assert_eq!(other.drain_publishes(std::time::Duration::from_secs(1)), 3);
}
