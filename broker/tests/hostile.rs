//! One anonymous reader must never hurt the bus (issue #18). Each test is
//! a pattern a hostile reader can use on the public port, with raw MQTT
//! clients, and asserts what everyone else still gets:
//!
//! - readers that are slow on purpose (MQTT 5 Receive Maximum 1 and an ack
//!   every 90 ms; never acking; never reading) never hold a publisher: no
//!   pushback is counted, a polite reader gets every message, the hostile
//!   ones lose theirs by their own queue limit, counted;
//! - only a reader the operator lists (`--pushback-user`) may hold one;
//! - SUBSCRIBE: a filter repeated 20,000 times in a packet is one
//!   subscription with one copy of each retained message; distinct filters
//!   per packet are capped; a flood of such packets from a client that
//!   never reads leaves the broker serving everyone;
//! - retained messages pass the read ACL, and a SIGHUP reload applies to
//!   readers already connected;
//! - a logged-in user takes its client id back from an anonymous squatter,
//!   and a `$share` group back from anonymous members;
//! - sockets that never send CONNECT are capped per address and in all,
//!   with slots kept for logins;
//! - a client that never reads cannot make `$SYS` output grow;
//! - websocket upgrades from cross-site pages are refused on loopback.
//!
//! Every loop is bounded by a count and a deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use firehose_testkit::*;

use firehose_testkit::logins::PUBLISHER as BRIDGE;
const EDGE: (&str, &str) = ("edge", "edge-secret");

/// Tells the hostile readers' threads the test is done: a flag they check,
/// and a wake-up for the one that only waits.
#[derive(Default)]
struct Stop {
    set: Mutex<bool>,
    changed: Condvar,
}

impl Stop {
    fn set(&self) {
        *self.set.lock().unwrap() = true;
        self.changed.notify_all();
    }

    fn is_set(&self) -> bool {
        *self.set.lock().unwrap()
    }

    /// Returns once set, or at `until`.
    fn wait(&self, until: Instant) {
        let mut set = self.set.lock().unwrap();
        while !*set {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            set = self.changed.wait_timeout(set, left).unwrap().0;
        }
    }
}

/// How a hostile reader treats what it is sent.
#[derive(Clone, Copy)]
enum Manner {
    /// Acknowledges one message, then waits this long.
    AckEvery(Duration),
    /// Reads everything and never acknowledges.
    NeverAck,
    /// Never reads its socket at all.
    NeverRead,
}

/// An MQTT 5 reader of `filter` at QoS 1 with Receive Maximum 1, behaving
/// in `manner` until `stop` (or a minute). Returns its thread.
fn hostile(
    b: &BrokerProc,
    id: &str,
    login: Option<(&str, &str)>,
    filter: &str,
    manner: Manner,
    stop: Arc<Stop>,
) -> std::thread::JoinHandle<()> {
    let mut r = Raw::open(b.mqtt());
    r.send(&connect5_with(id, true, 0, &[0x21, 0, 1], None, login));
    let (t, body) = r.read().expect("CONNACK");
    assert_eq!((t, body.get(1)), (0x20, Some(&0)), "{id} refused");
    r.send(&subscribe(5, 1, filter, 1));
    let (t, _) = r.read().expect("SUBACK");
    assert_eq!(t, 0x90, "{id}: expected SUBACK");
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(60);
        r.s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        while !stop.is_set() && Instant::now() < until {
            match manner {
                // Holds the socket, unread, until the test is done.
                Manner::NeverRead => stop.wait(until),
                Manner::NeverAck => {
                    let _ = r.read();
                }
                Manner::AckEvery(gap) => {
                    if let Some((t, body)) = r.read() {
                        if t & 0xf0 == 0x30 {
                            let id = publish_pkid(&body);
                            if !r.try_send(&[0x40, 2, id[0], id[1]]) {
                                return;
                            }
                            std::thread::sleep(gap);
                        }
                    }
                }
            }
        }
    })
}

/// A polite QoS 1 reader of `filter`: counts PUBLISHes (acking each, and
/// telling `progress` the count) until `want` arrived or 60 s passed;
/// returns how many did.
fn polite(
    b: &BrokerProc,
    id: &str,
    filter: &str,
    want: usize,
    progress: std::sync::mpsc::Sender<usize>,
) -> std::thread::JoinHandle<usize> {
    let (mut r, _) = Raw::connect(b.mqtt(), 4, id, None);
    r.send(&subscribe(4, 1, filter, 1));
    assert_eq!(r.read().expect("SUBACK").0, 0x90);
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(60);
        let mut got = 0;
        while got < want && Instant::now() < until {
            let Some((t, body)) = r.read() else { break };
            if t & 0xf0 == 0x30 {
                got += 1;
                let id = publish_pkid(&body);
                r.send(&[0x40, 2, id[0], id[1]]);
                let _ = progress.send(got);
            }
        }
        got
    })
}

#[test]
fn readers_slow_on_purpose_never_hold_a_publisher() {
    let d = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(d.path(), &[BRIDGE], &["--max-queued-messages", "100"]);
    let stop = Arc::new(Stop::default());
    let mut threads = Vec::new();
    for (i, manner) in [
        Manner::AckEvery(Duration::from_millis(90)),
        Manner::NeverAck,
        Manner::NeverRead,
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("hostile-{i}");
        threads.push(hostile(&b, &id, None, "load/#", manner, stop.clone()));
    }
    const N: usize = 2000;
    let (progress, polite_got) = std::sync::mpsc::channel();
    let fair = polite(&b, "polite", "load/#", N, progress);
    let mut p = Publisher::new(b.mqtt(), BRIDGE);
    // In steps of 50 that the polite reader takes before the next: however
    // loaded the machine, its own queue (100) never overflows, so what it
    // gets depends on the broker alone, never on the hostile readers.
    for step in 0..N / 50 {
        for i in 0..50 {
            p.publish(&format!("load/{}", (step * 50 + i) % 7), &[b'x'; 64], false);
        }
        let want = (step + 1) * 50;
        let mut got = 0;
        while got < want {
            got = polite_got
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("the polite reader got {got} of {want} in time"));
        }
    }
    assert_eq!(
        fair.join().unwrap(),
        N,
        "the polite reader got every message"
    );
    stop.set();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        b.metric("firehose_broker_pushback_waits_total"),
        0,
        "no publisher was held for a reader that is not in pushback_users"
    );
    // The hostile readers lost what did not fit their own queues, counted.
    assert!(
        b.dropped("queue_full") >= (N - 100 - 20) as u64,
        "queue_full {}",
        b.dropped("queue_full")
    );
}

#[test]
fn only_a_listed_user_may_hold_a_publisher() {
    let d = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(
        d.path(),
        &[BRIDGE, EDGE],
        &["--max-queued-messages", "100", "--pushback-user", "edge"],
    );
    let stop = Arc::new(Stop::default());
    // The same slow manner, once anonymous and once as the listed user.
    let anon = hostile(
        &b,
        "anon",
        None,
        "load/#",
        Manner::AckEvery(Duration::from_millis(10)),
        stop.clone(),
    );
    const N: usize = 1000;
    let mut p = Publisher::new(b.mqtt(), BRIDGE);
    for i in 0..N {
        p.publish(&format!("load/{i}"), &[b'x'; 64], false);
    }
    assert_eq!(b.metric("firehose_broker_pushback_waits_total"), 0);
    let edge = hostile(
        &b,
        "edge-mirror",
        Some(EDGE),
        "load/#",
        Manner::AckEvery(Duration::from_millis(10)),
        stop.clone(),
    );
    // Until the listed reader held the publisher once (bounded: however
    // slow the machine, 20 rounds of N give its acks time to count).
    for _ in 0..20 {
        for i in 0..N {
            p.publish(&format!("load/{i}"), &[b'x'; 64], false);
        }
        if b.metric("firehose_broker_pushback_waits_total") > 0 {
            break;
        }
    }
    assert!(
        b.metric("firehose_broker_pushback_waits_total") > 0,
        "the listed reader's full queue held the publisher (within its budget)"
    );
    stop.set();
    anon.join().unwrap();
    edge.join().unwrap();
}

/// Publishes `n` retained messages `r/<i>` through an authenticated client.
fn retain_many(b: &BrokerProc, n: usize) {
    let mut p = Publisher::new(b.mqtt(), BRIDGE);
    for i in 0..n {
        p.publish(&format!("r/{i}"), &[b'v'; 100], true);
    }
}

#[test]
fn a_repeated_filter_is_one_subscription_with_one_copy_of_each_retained_message() {
    let d = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(d.path(), &[BRIDGE], &[]);
    retain_many(&b, 50);
    let (mut r, _) = Raw::connect(b.mqtt(), 4, "repeat", None);
    let filters = vec!["#"; 20_000];
    r.send(&subscribe_many(4, 1, &filters));
    let (t, body) = r.read().expect("SUBACK");
    assert_eq!(t, 0x90);
    assert_eq!(
        suback_codes(4, &body),
        vec![0; 20_000],
        "every copy granted"
    );
    // A marker after the retained set: everything before it is counted.
    let mut p = Publisher::new(b.mqtt(), BRIDGE);
    p.publish("marker", b"end", false);
    let mut retained = 0;
    loop {
        let (t, body) = r.read().expect("the retained set, then the marker");
        if t & 0xf0 != 0x30 {
            continue;
        }
        if body.ends_with(b"end") {
            break;
        }
        retained += 1;
    }
    assert_eq!(
        retained, 50,
        "one copy of each retained message, not 20,000"
    );
    assert_eq!(b.metric("firehose_broker_subscriptions"), 1);

    // Distinct filters per packet are capped; copies of one count once.
    let (mut v5, _) = Raw::connect(b.mqtt(), 5, "distinct", None);
    let distinct: Vec<String> = (0..120).map(|i| format!("d/{i}")).collect();
    let mut packet: Vec<&str> = vec!["a/#"; 300];
    packet.extend(distinct.iter().map(String::as_str));
    v5.send(&subscribe_many(5, 1, &packet));
    let (t, body) = v5.read().expect("SUBACK");
    assert_eq!(t, 0x90);
    let codes = suback_codes(5, &body);
    assert_eq!(codes.len(), 420);
    assert!(codes[..300].iter().all(|c| *c == 0), "the repeated filter");
    assert!(
        codes[300..399].iter().all(|c| *c == 0),
        "99 more distinct ones"
    );
    assert!(
        codes[399..].iter().all(|c| *c == 0x97),
        "the rest: quota exceeded"
    );
    assert_eq!(b.dropped("too_many_subscriptions"), 21);
}

#[test]
fn a_subscribe_flood_from_a_client_that_never_reads_leaves_the_broker_serving() {
    let d = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(d.path(), &[BRIDGE], &[]);
    retain_many(&b, 2000);
    let mut canary = Canary::new(&b);
    let before = b.rss_kib();
    let mut flood = Raw::open(b.mqtt());
    flood.send(&connect(4, "flood", 60, true, None));
    for i in 0..5u16 {
        let last = format!("flood/{i}");
        let mut filters = vec!["#"; 20_000];
        filters.push(&last);
        flood.send(&subscribe_many(4, i + 1, &filters));
    }
    // canary/#, then `#` and flood/0..4: every packet was handled.
    b.wait_metric("firehose_broker_subscriptions", 7);
    canary.check(&b, BRIDGE);
    let grown = b.rss_kib().saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "5 SUBSCRIBEs of 20,000 x # with 2,000 retained cost {grown} KiB"
    );
    drop(flood);
}

#[test]
fn retained_messages_pass_the_read_acl_and_a_reload_applies_to_connected_readers() {
    let d = tempfile::tempdir().unwrap();
    let acl = d.path().join("acl");
    std::fs::write(
        &acl,
        "topic read #\ntopic deny secret/#\nuser bridge\ntopic readwrite #\n",
    )
    .unwrap();
    let acl_s = acl.to_string_lossy().into_owned();
    let b = BrokerProc::with_users(d.path(), &[BRIDGE], &["--acl", &acl_s]);
    let mut p = Publisher::new(b.mqtt(), BRIDGE);
    p.publish("secret/x", b"hidden", true);
    p.publish("public/y", b"shown", true);
    let (mut r, _) = Raw::connect(b.mqtt(), 4, "reader", None);
    r.send(&subscribe(4, 1, "#", 0));
    assert_eq!(r.read().expect("SUBACK").0, 0x90);
    p.publish("marker", b"end", false);
    let mut seen = Vec::new();
    loop {
        let (t, body) = r.read().expect("publishes, then the marker");
        if t & 0xf0 != 0x30 {
            continue;
        }
        if body.ends_with(b"end") {
            break;
        }
        seen.push(String::from_utf8_lossy(&body).into_owned());
    }
    assert_eq!(
        seen.len(),
        1,
        "only the readable retained message: {seen:?}"
    );
    assert!(seen[0].ends_with("shown"));
    assert_eq!(b.dropped("acl_read"), 1);

    // A second reader that reads everything; then the ACL takes some away.
    let (mut all, _) = Raw::connect(b.mqtt(), 4, "reader-all", None);
    std::fs::write(&acl, "topic read #\nuser bridge\ntopic readwrite #\n").unwrap();
    b.signal("HUP");
    b.wait_log("password and ACL files reloaded");
    all.send(&subscribe(4, 1, "#", 0));
    assert_eq!(all.read().expect("SUBACK").0, 0x90);
    let mut got = 0;
    while got < 2 {
        let (t, _) = all.read().expect("both retained messages, now readable");
        got += usize::from(t & 0xf0 == 0x30);
    }
    std::fs::write(
        &acl,
        "topic read #\ntopic deny public/#\nuser bridge\ntopic readwrite #\n",
    )
    .unwrap();
    b.signal("HUP");
    b.wait_log_count("password and ACL files reloaded", 2);
    p.publish("public/z", b"now denied", false);
    p.publish("marker", b"end", false);
    loop {
        let (t, body) = all.read().expect("the marker");
        if t & 0xf0 != 0x30 {
            continue;
        }
        assert!(
            !body.ends_with(b"now denied"),
            "the reload applies to a reader connected before it"
        );
        if body.ends_with(b"end") {
            break;
        }
    }
}

#[test]
fn a_logged_in_user_takes_its_id_and_its_share_group_back() {
    let d = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(d.path(), &[BRIDGE], &[]);
    // A squatter sits on the bridge's client id with a persistent session.
    let mut squat = Raw::open(b.mqtt());
    squat.send(&connect(4, "firehose-gerrit", 60, false, None));
    assert_eq!(squat.read().expect("CONNACK").1, vec![0, 0]);
    squat.send(&subscribe(4, 1, "gerrit/#", 1));
    assert_eq!(squat.read().expect("SUBACK").0, 0x90);
    let mut bridge = Raw::open(b.mqtt());
    bridge.send(&connect(4, "firehose-gerrit", 60, false, Some(BRIDGE)));
    assert_eq!(
        bridge.read().expect("CONNACK").1,
        vec![0, 0],
        "accepted, and the squatter's session is not resumed"
    );
    b.wait_metric("firehose_broker_dropped_total{reason=\"id_taken_back\"}", 1);
    // The squatter cannot take it again.
    let mut again = Raw::open(b.mqtt());
    again.send(&connect(4, "firehose-gerrit", 60, false, None));
    assert_eq!(
        again.read().expect("CONNACK").1,
        vec![0, 2],
        "identifier rejected"
    );

    // A `$share` group: anonymous members are out once the user joins.
    let (mut anon, _) = Raw::connect(b.mqtt(), 4, "anon-worker", None);
    anon.send(&subscribe(4, 1, "$share/history/nova/#", 0));
    assert_eq!(suback_codes(4, &anon.read().expect("SUBACK").1), vec![0]);
    let (mut worker, _) = Raw::connect(b.mqtt(), 4, "history-1", Some(BRIDGE));
    worker.send(&subscribe(4, 1, "$share/history/nova/#", 0));
    assert_eq!(suback_codes(4, &worker.read().expect("SUBACK").1), vec![0]);
    anon.send(&subscribe(4, 2, "$share/history/nova/#", 0));
    assert_eq!(
        suback_codes(4, &anon.read().expect("SUBACK").1),
        vec![0x80],
        "the group is the user's now"
    );
    let mut p = Publisher::new(b.mqtt(), BRIDGE);
    for i in 0..10 {
        p.publish(&format!("nova/{i}"), b"event", false);
    }
    let mut got = 0;
    while got < 10 {
        let (t, _) = worker.read().expect("every event of the group");
        got += usize::from(t & 0xf0 == 0x30);
    }
    anon.s
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        anon.read().is_none(),
        "the anonymous member got nothing of the group"
    );
    assert_eq!(b.dropped("share_taken_back"), 1);
    assert_eq!(b.dropped("share_other_user"), 1);
}

/// A socket from `local` (a 127.0.0.0/8 address) to `to`.
fn socket_from(local: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((local, 0)).into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// True when the broker closed `s` without a word.
fn closed_at_once(mut s: TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

#[test]
fn sockets_without_connect_are_capped_per_address_and_in_all_with_slots_for_logins() {
    let d = tempfile::tempdir().unwrap();
    // Idle sockets must outlive the test's steps, however slow the machine.
    let cfg = d.path().join("broker.toml");
    std::fs::write(
        &cfg,
        "[limits]\nhandshake_timeout_secs = 120\nmax_handshakes = 20\nmax_handshakes_per_ip = 8\n",
    )
    .unwrap();
    let cfg = cfg.to_string_lossy().into_owned();
    let b = BrokerProc::with_users(d.path(), &[BRIDGE], &["--config", &cfg]);
    let to = b.mqtt();
    let (mut watcher, _) = Raw::connect(to, 4, "watcher", None);
    watcher.send(&subscribe(4, 1, "w/#", 0));
    assert_eq!(watcher.read().expect("SUBACK").0, 0x90);
    // One address: 8 idle sockets, then the next is closed at once.
    let mut idle: Vec<TcpStream> = (0..8).map(|_| socket_from([127, 0, 0, 2], to)).collect();
    b.wait_metric("firehose_broker_connections_total", 9);
    assert!(closed_at_once(socket_from([127, 0, 0, 2], to)));
    assert_eq!(b.dropped("handshakes_per_ip"), 1);
    // Other addresses fill the gate up to 18 (20 less the two for logins).
    for last in 3..=4 {
        idle.extend((0..5).map(|_| socket_from([127, 0, 0, last], to)));
    }
    b.wait_metric("firehose_broker_connections_total", 20);
    // The last two slots are for logins: an anonymous CONNECT on one is
    // refused (server unavailable), a bridge's is accepted.
    let mut anon = Raw::from_stream(socket_from([127, 0, 0, 5], to));
    anon.send(&connect(4, "late-reader", 60, true, None));
    assert_eq!(anon.read().expect("CONNACK").1, vec![0, 3]);
    assert_eq!(b.dropped("handshakes"), 1);
    let mut bridge = Raw::from_stream(socket_from([127, 0, 0, 5], to));
    bridge.send(&connect(4, "late-bridge", 60, true, Some(BRIDGE)));
    assert_eq!(bridge.read().expect("CONNACK").1, vec![0, 0]);
    // Two more idle sockets fill the gate: the next is closed at once.
    b.wait_metric("firehose_broker_connections_total", 22);
    // (The metrics page is behind the gate too: not asked while it is full.
    // One accept loop takes sockets in order, so the third comes after both.)
    let last: Vec<TcpStream> = (0..2).map(|_| socket_from([127, 0, 0, 6], to)).collect();
    assert!(closed_at_once(socket_from([127, 0, 0, 6], to)));
    drop(last);
    // The page answers again once the broker saw those two close (a try
    // while the gate was still full is refused and counted too).
    let ws = b.ws.expect("ws listener");
    let sample = "firehose_broker_dropped_total{reason=\"handshakes\"}";
    wait_until(
        WAIT,
        || metric_at(ws, sample).is_ok_and(|n| n >= 2),
        || format!("{sample} to reach 2"),
    );
    // Connected clients are not behind the gate: they go on.
    bridge.send(&publish(4, b"w/1", b"still served", 0, 0));
    let (t, body) = watcher.read().expect("the watcher still reads");
    assert_eq!(t & 0xf0, 0x30);
    assert!(body.ends_with(b"still served"));
    drop(idle);
}

#[test]
fn a_client_that_never_reads_cannot_make_sys_output_grow() {
    let d = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(d.path(), &[BRIDGE], &["--sys-interval", "1"]);
    let mut canary = Canary::new(&b);
    let mut s = TcpStream::connect(b.mqtt()).unwrap();
    s.write_all(&connect(4, "sys-hog", 60, true, None)).unwrap();
    // 20,000 `$SYS/#` subscriptions in a row (each answered with the whole
    // `$SYS` snapshot, ~2 KB: 40 MB, far beyond what the kernel's socket
    // buffers hold), never reading a byte.
    let mut burst = Vec::new();
    for i in 0..20_000u16 {
        burst.extend(subscribe(4, i + 1, "$SYS/#", 0));
    }
    let before = b.rss_kib();
    s.write_all(&burst).unwrap();
    b.wait_metric("firehose_broker_dropped_total{reason=\"sys_backlog\"}", 1);
    canary.check(&b, BRIDGE);
    let grown = b.rss_kib().saturating_sub(before);
    assert!(
        grown < 32 * 1024,
        "a client that never reads cost {grown} KiB"
    );
}

/// Sends a websocket upgrade with `origin` and returns the status code.
fn upgrade_status(ws: SocketAddr, origin: Option<&str>) -> u16 {
    let mut s = TcpStream::connect(ws).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    write!(
        s,
        "GET /mqtt HTTP/1.1\r\nHost: {ws}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n{origin}\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

#[test]
fn websockets_on_loopback_refuse_cross_site_pages() {
    let b = BrokerProc::start(&[]);
    let ws = b.ws.expect("ws listener");
    assert_eq!(upgrade_status(ws, None), 101, "not a browser: allowed");
    assert_eq!(upgrade_status(ws, Some(&format!("http://{ws}"))), 101);
    assert_eq!(upgrade_status(ws, Some("http://localhost:3000")), 101);
    assert_eq!(upgrade_status(ws, Some("https://evil.example")), 403);
    assert_eq!(upgrade_status(ws, Some("null")), 403);
    b.wait_metric("firehose_broker_dropped_total{reason=\"ws_origin\"}", 2);
    let listed = BrokerProc::start(&["--ws-allowed-origins", "https://status.example.org"]);
    let ws = listed.ws.expect("ws listener");
    assert_eq!(upgrade_status(ws, Some("https://status.example.org")), 101);
    assert_eq!(upgrade_status(ws, Some("https://evil.example")), 403);
}
