//! MQTT 5 flow control and session rules towards a client (issue #11,
//! point 5): the client's Receive Maximum bounds what is in flight, its
//! Maximum Packet Size keeps larger messages from it (counted), topic
//! aliases from the client work up to our maximum (10) and a bad one gets
//! DISCONNECT 0x94, an ACL-denied
//! subscription gets 0x80 in v5 as in v3, and DISCONNECT may change the
//! session expiry (not from 0).

use firehose_testkit::*;

use firehose_testkit::logins::PUBLISHER as BRIDGE;

/// A v5 client with extra CONNECT properties; returns it and the CONNACK
/// session-present flag.
fn v5(b: &BrokerProc, id: &str, clean: bool, expiry: u32, props: &[u8]) -> (Raw, bool) {
    let mut r = Raw::open(b.mqtt());
    r.send(&connect5_with(id, clean, expiry, props, None, Some(BRIDGE)));
    let (t, body) = r.read().expect("CONNACK");
    assert_eq!((t, body[1]), (0x20, 0), "CONNACK success");
    (r, body[0] & 1 == 1)
}

fn subscribed(r: &mut Raw, level: u8, filter: &str, qos: u8) -> Vec<u8> {
    r.send(&subscribe(level, 1, filter, qos));
    let (t, body) = r.read().expect("SUBACK");
    assert_eq!(t, 0x90);
    suback_codes(level, &body)
}

/// (topic, packet id, payload) of a v5 PUBLISH (no properties expected
/// beyond an empty set).
fn publish_of(t: u8, body: &[u8]) -> (String, u16, Vec<u8>) {
    let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
    let topic = String::from_utf8_lossy(&body[2..2 + tl]).into_owned();
    let mut off = 2 + tl;
    let mut pkid = 0;
    if (t >> 1) & 3 > 0 {
        pkid = u16::from_be_bytes([body[off], body[off + 1]]);
        off += 2;
    }
    let plen = body[off] as usize; // one-byte property length here
    (topic, pkid, body[off + 1 + plen..].to_vec())
}

#[test]
fn the_clients_receive_maximum_bounds_what_is_in_flight() {
    let b = Broker::new().start();
    // Receive Maximum 2.
    let (mut r, _) = v5(&b, "rm", true, 0, &[0x21, 0, 2]);
    assert_eq!(subscribed(&mut r, 5, "rm/#", 1), [1]);
    let mut p = Publisher::new(b.mqtt(), BRIDGE);
    for i in 0..5 {
        p.publish("rm/x", format!("m{i}").as_bytes(), false);
    }
    // All five are queued for us; two come, then nothing more until we ack:
    // the PINGRESP to a PINGREQ sent now comes before any third.
    let mut got = Vec::new();
    for _ in 0..2 {
        let (t, body) = r.read().expect("PUBLISH");
        assert_eq!(t & 0xf0, 0x30);
        got.push(publish_of(t, &body));
    }
    r.send(&[0xC0, 0]);
    assert_eq!(
        r.read().expect("PINGRESP").0,
        0xD0,
        "a third publish went out"
    );
    while got.len() < 5 {
        // Ack the oldest unacked one; exactly one more may come.
        let ack = got[got.len() - 2].1;
        r.send(&[0x40, 2, (ack >> 8) as u8, ack as u8]);
        let (t, body) = r.read().expect("PUBLISH");
        assert_eq!(t & 0xf0, 0x30);
        got.push(publish_of(t, &body));
    }
    let payloads: Vec<String> = got
        .iter()
        .map(|g| String::from_utf8_lossy(&g.2).into_owned())
        .collect();
    assert_eq!(payloads, ["m0", "m1", "m2", "m3", "m4"]);
}

#[test]
fn the_clients_maximum_packet_size_keeps_larger_messages_from_it() {
    let b = Broker::new().start();
    // Maximum Packet Size 100 bytes.
    let (mut r, _) = v5(&b, "mp", true, 0, &[0x27, 0, 0, 0, 100]);
    assert_eq!(subscribed(&mut r, 5, "mp/#", 0), [0]);
    let mut p = Publisher::new(b.mqtt(), BRIDGE);
    p.publish("mp/big", &[b'x'; 200], false);
    p.publish("mp/small", b"ok", false);
    let (t, body) = r.read().expect("PUBLISH");
    let (topic, _, payload) = publish_of(t, &body);
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("mp/small", b"ok".as_slice())
    );
    assert_eq!(b.dropped("too_large_for_client"), 1);
    // Nothing else is on its way.
    r.send(&[0xC0, 0]);
    assert_eq!(r.read().expect("PINGRESP").0, 0xD0);
}

/// A v5 PUBLISH QoS 0 body with a topic alias property.
fn aliased(topic: &str, alias: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&[3, 0x23, (alias >> 8) as u8, alias as u8]);
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

#[test]
fn topic_aliases_from_the_client_are_set_used_and_bounded() {
    let b = Broker::new().start();
    let (mut sub, _) = v5(&b, "alias-reader", true, 0, &[]);
    assert_eq!(subscribed(&mut sub, 5, "al/#", 0), [0]);
    let (mut r, _) = v5(&b, "alias", true, 0, &[]);
    // Alias 1 set with the topic, then used alone (empty topic).
    r.send(&aliased("al/one", 1, b"first"));
    r.send(&aliased("", 1, b"second"));
    // Alias 1 moved to another topic.
    r.send(&aliased("al/two", 1, b"third"));
    r.send(&aliased("", 1, b"fourth"));
    let got: Vec<(String, Vec<u8>)> = (0..4)
        .map(|_| {
            let (t, body) = sub.read().expect("PUBLISH");
            let (topic, _, payload) = publish_of(t, &body);
            (topic, payload)
        })
        .collect();
    let want: Vec<(String, Vec<u8>)> = [
        ("al/one", "first"),
        ("al/one", "second"),
        ("al/two", "third"),
        ("al/two", "fourth"),
    ]
    .iter()
    .map(|(t, p)| (t.to_string(), p.as_bytes().to_vec()))
    .collect();
    assert_eq!(got, want, "the reader gets full topics");
    // Beyond our maximum (10), or 0: DISCONNECT 0x94 (MQTT-3.3.2-9/10).
    for bad in [11u16, 0] {
        let (mut r, _) = v5(&b, "alias-bad", true, 0, &[]);
        r.send(&aliased("al/x", bad, b"no"));
        let (t, body) = r.read().expect("DISCONNECT");
        assert_eq!((t, body[0]), (0xE0, 0x94), "alias {bad} is invalid");
    }
    // A topic over the length limit is refused (counted) and its alias
    // never set: using it is a protocol error.
    let (mut r, _) = v5(&b, "alias-long", true, 0, &[]);
    let long = format!("al/{}", "x".repeat(1100));
    r.send(&aliased(&long, 2, b"no"));
    r.send(&aliased("", 2, b"no"));
    let (t, body) = r.read().expect("DISCONNECT");
    assert_eq!((t, body[0]), (0xE0, 0x82), "alias of a refused topic");
    assert_eq!(b.dropped("topic_limit"), 1);
    // An alias used before it was set: protocol error.
    let (mut r, _) = v5(&b, "alias-unset", true, 0, &[]);
    r.send(&aliased("", 3, b"no"));
    let (t, body) = r.read().expect("DISCONNECT");
    assert_eq!((t, body[0]), (0xE0, 0x82), "unset alias");
    // Aliases belong to one connection: a new one starts without them.
    drop(r);
    let (mut r, _) = v5(&b, "alias", true, 0, &[]);
    r.send(&aliased("", 1, b"no"));
    let (t, body) = r.read().expect("DISCONNECT");
    assert_eq!((t, body[0]), (0xE0, 0x82), "alias of an old connection");
}

#[test]
fn a_denied_subscription_gets_0x80_in_v5_and_v3() {
    let b = Broker::new()
        .acl("topic read public/#\n\nuser bridge\ntopic readwrite #\n")
        .start();
    let mut r5 = Raw::open(b.mqtt());
    r5.send(&connect5("anon5", true, 0, None, None));
    assert_eq!(r5.read().expect("CONNACK").0, 0x20);
    assert_eq!(subscribed(&mut r5, 5, "secret/#", 0), [0x80]);
    assert_eq!(subscribed(&mut r5, 5, "public/#", 0), [0]);
    let (mut r3, _) = Raw::connect(b.mqtt(), 4, "anon3", None);
    assert_eq!(subscribed(&mut r3, 4, "secret/#", 0), [0x80]);
}

#[test]
fn disconnect_may_change_the_session_expiry_but_not_from_zero() {
    let b = Broker::new().start();
    // CONNECT asks for an hour; DISCONNECT says 0: the session ends.
    let (mut r, _) = v5(&b, "dx", false, 3600, &[]);
    assert_eq!(subscribed(&mut r, 5, "dx/#", 1), [1]);
    r.send(&packet(0xE0, &[0, 5, 0x11, 0, 0, 0, 0]));
    drop(r);
    b.wait_metric_at_most("firehose_broker_clients_connected", 0);
    let (_r, present) = v5(&b, "dx", false, 3600, &[]);
    assert!(!present, "DISCONNECT with expiry 0 ended the session");
    drop(_r);
    // CONNECT without expiry; DISCONNECT asking for one: a protocol error.
    let (mut r, _) = v5(&b, "dz", true, 0, &[]);
    r.send(&packet(0xE0, &[0, 5, 0x11, 0, 0, 1, 0]));
    let (t, body) = r.read().expect("DISCONNECT");
    assert_eq!((t, body[0]), (0xE0, 0x82));
}

/// A v5 QoS 1 PUBLISH with a message expiry interval (seconds), or none.
fn publish_expiring(
    topic: &str,
    pkid: u16,
    expiry: Option<u32>,
    retain: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = (topic.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(topic.as_bytes());
    b.extend_from_slice(&pkid.to_be_bytes());
    match expiry {
        Some(e) => {
            b.extend_from_slice(&[5, 0x02]);
            b.extend_from_slice(&e.to_be_bytes());
        }
        None => b.push(0),
    }
    b.extend_from_slice(payload);
    packet(0x32 | u8::from(retain), &b)
}

/// Waits (bounded) until the broker no longer serves the retained message
/// under `probe/`: a fresh reader of `probe/#` gets a marker published
/// after its SUBACK first.
fn wait_expired(b: &BrokerProc, publisher: &mut Raw, probe: &str) {
    let mut n = 0u16;
    poll_every(
        std::time::Duration::from_millis(100),
        WAIT,
        || {
            n += 1;
            let (mut r, _) = v5(b, &format!("{probe}-{n}"), true, 0, &[]);
            subscribed(&mut r, 5, &format!("{probe}/#"), 0);
            let marker = format!("{probe}/marker");
            publisher.send(&publish_expiring(&marker, 100 + n, None, false, b"m"));
            assert_eq!(publisher.read().expect("PUBACK").0, 0x40);
            let (t, body) = r.read().expect("PUBLISH");
            (publish_of(t, &body).0 == marker).then_some(())
        },
        || format!("the retained {probe}/ message to expire"),
    );
}

#[test]
fn message_expiry_drops_what_waited_too_long_and_shortens_the_rest() {
    let b = Broker::new().start();
    // A persistent v5 reader, then away.
    let (mut r, _) = v5(&b, "mx", false, 3600, &[]);
    assert_eq!(subscribed(&mut r, 5, "mx/#", 1), [1]);
    r.send(&packet(0xE0, &[0, 0]));
    drop(r);
    b.wait_metric_at_most("firehose_broker_clients_connected", 0);
    let (mut p, _) = v5(&b, "mx-pub", true, 0, &[]);
    for (i, (expiry, payload)) in [(Some(1), "short"), (None, "keep"), (Some(3600), "long")]
        .into_iter()
        .enumerate()
    {
        p.send(&publish_expiring(
            "mx/t",
            i as u16 + 1,
            expiry,
            false,
            payload.as_bytes(),
        ));
        assert_eq!(p.read().expect("PUBACK").0, 0x40);
    }
    // A retained probe with the same 1 s expiry, published after "short":
    // once the broker no longer serves it, "short" is past its expiry too.
    p.send(&publish_expiring("mx-probe/p", 9, Some(1), true, b"probe"));
    assert_eq!(p.read().expect("PUBACK").0, 0x40);
    wait_expired(&b, &mut p, "mx-probe");
    let (mut r, present) = v5(&b, "mx", false, 3600, &[]);
    assert!(present);
    let mut got = Vec::new();
    for _ in 0..2 {
        let (t, body) = r.read().expect("PUBLISH");
        assert_eq!(t & 0xf0, 0x30);
        let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
        let off = 2 + tl + 2;
        let plen = body[off] as usize;
        let props = &body[off + 1..off + 1 + plen];
        let expiry = (props.first() == Some(&0x02))
            .then(|| u32::from_be_bytes([props[1], props[2], props[3], props[4]]));
        got.push((
            String::from_utf8_lossy(&body[off + 1 + plen..]).into_owned(),
            expiry,
        ));
    }
    assert_eq!(got[0], ("keep".to_owned(), None));
    assert_eq!(got[1].0, "long");
    let left = got[1].1.expect("the expiry is passed on");
    assert!(
        left < 3600 && left > 3000,
        "what is left of it, not 3600: {left}"
    );
    assert_eq!(b.dropped("message_expired"), 1);
}

#[test]
fn overlapping_subscriptions_give_one_copy_with_every_identifier() {
    let b = Broker::new().start();
    let (mut r, _) = v5(&b, "si", true, 0, &[]);
    for (pkid, filter, id) in [(1u16, "si/#", 1u8), (2, "si/+", 2)] {
        // SUBSCRIBE with a subscription identifier property (0x0B).
        let mut body = pkid.to_be_bytes().to_vec();
        body.extend_from_slice(&[2, 0x0B, id]);
        body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
        body.extend_from_slice(filter.as_bytes());
        body.push(1);
        r.send(&packet(0x82, &body));
        assert_eq!(r.read().expect("SUBACK").0, 0x90);
    }
    Publisher::new(b.mqtt(), BRIDGE).publish("si/x", b"hi", false);
    let (t, body) = r.read().expect("PUBLISH");
    assert_eq!(t & 0xf0, 0x30);
    let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
    let off = 2 + tl + 2;
    let plen = body[off] as usize;
    let props = &body[off + 1..off + 1 + plen];
    assert_eq!(props, [0x0B, 1, 0x0B, 2], "both identifiers in one copy");
    r.send(&[0xC0, 0]);
    assert_eq!(r.read().expect("PINGRESP").0, 0xD0, "one copy only");
}
