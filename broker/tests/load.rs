//! No accepted message is lost inside the broker (issue #14). Publishers
//! run at full speed; what is counted is messages, never time:
//!
//! - with queues large enough, 1 → 1 and 10 → 1 deliver every message, at
//!   QoS 0 and QoS 1;
//! - a slow QoS 1 reader with a small queue loses messages only by its
//!   queue policy, each one counted (`queue_full`), while a fast reader of
//!   the same stream that may hold the publisher (`--pushback-user`) gets
//!   every message;
//! - every retained message matching a new subscription is delivered, far
//!   beyond what fits in one write.
//!
//! Every loop is bounded by a message count and a deadline.

use std::time::{Duration, Instant};

use firehose_testkit::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const PUB: (&str, &str) = ("bridge", "s3cret");
const MIRROR: (&str, &str) = ("edge", "m1rror");
const DEADLINE: Duration = Duration::from_secs(90);

fn qos(n: u8) -> QoS {
    if n == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn options(b: &BrokerProc, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", b.mqtt().port());
    o.set_keep_alive(Duration::from_secs(60));
    o.set_inflight(200);
    o
}

/// A subscriber of `filter` counting publishes until `want` or the deadline.
async fn subscriber(
    b: &BrokerProc,
    id: &str,
    filter: &str,
    q: u8,
    want: u64,
) -> tokio::task::JoinHandle<u64> {
    subscriber_as(b, id, None, filter, q, want).await
}

/// [`subscriber`] logged in as `login`.
async fn subscriber_as(
    b: &BrokerProc,
    id: &str,
    login: Option<(&str, &str)>,
    filter: &str,
    q: u8,
    want: u64,
) -> tokio::task::JoinHandle<u64> {
    let mut o = options(b, id);
    if let Some((u, p)) = login {
        o.set_credentials(u, p);
    }
    let (c, mut ev) = AsyncClient::new(o, 1000);
    c.subscribe(filter, qos(q)).await.unwrap();
    // Wait for the SUBACK before anyone publishes.
    let until = Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(until.into(), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            other => panic!("{id}: no SUBACK: {other:?}"),
        }
    }
    tokio::spawn(async move {
        let mut got = 0;
        while got < want {
            match tokio::time::timeout_at(until.into(), ev.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(_)))) => got += 1,
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        drop(c);
        got
    })
}

/// `publishers` authenticated clients each publishing `n` messages to
/// `load/<i>` as fast as the client goes; returns once all were sent (and,
/// at QoS 1, acknowledged).
async fn publish_load(b: &BrokerProc, publishers: usize, n: u64, q: u8, size: usize) {
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let mut o = options(b, &format!("pub-{p}"));
        o.set_credentials(PUB.0, PUB.1);
        let (c, mut ev) = AsyncClient::new(o, 1000);
        tasks.push(tokio::spawn(async move {
            let sender = tokio::spawn(async move {
                for i in 0..n {
                    let mut payload = vec![b'x'; size];
                    payload[..8].copy_from_slice(&i.to_be_bytes());
                    c.publish(format!("load/{p}"), qos(q), false, payload)
                        .await
                        .unwrap();
                }
                c
            });
            let until = Instant::now() + DEADLINE;
            let mut acked = 0;
            while (q == 0 && !sender.is_finished()) || (q > 0 && acked < n) {
                match tokio::time::timeout_at(until.into(), ev.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                    Ok(Ok(_)) => {}
                    other => panic!("publisher {p}: {other:?}"),
                }
            }
            // Everything queued in the client goes out before its
            // DISCONNECT, which is the last thing it sends.
            let c = sender.await.unwrap();
            // The client's queue may still be full: ask for the DISCONNECT
            // from another task while this one keeps the client going.
            tokio::spawn(async move { c.disconnect().await });
            loop {
                match tokio::time::timeout_at(until.into(), ev.poll()).await {
                    Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) => break,
                    Ok(Ok(_)) => {}
                    other => panic!("publisher {p} while leaving: {other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn full_speed(publishers: usize, n: u64, q: u8) {
    let d = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(
        d.path(),
        &[PUB],
        &[
            "--max-queued-messages",
            "1000000",
            "--max-queued-bytes",
            "1000000000",
        ],
    );
    let want = publishers as u64 * n;
    let sub = subscriber(&b, "reader", "load/#", q, want).await;
    publish_load(&b, publishers, n, q, 256).await;
    let got = sub.await.unwrap();
    assert_eq!(
        got, want,
        "{publishers} → 1 at QoS {q}: every accepted message arrives"
    );
    assert_eq!(b.dropped("queue_full"), 0);
    // Fast fan-in used to log rumqttd's "no-connection id N is already gone"
    // dozens of times; nothing of the kind is an error now.
    assert_eq!(b.count_log(" ERROR "), 0, "{}", b.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_at_full_speed_loses_nothing() {
    full_speed(1, 50_000, 0).await;
    full_speed(1, 20_000, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_to_one_at_full_speed_loses_nothing() {
    full_speed(10, 5_000, 0).await;
    full_speed(10, 2_000, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_drops_are_counted_per_message_while_a_fast_reader_gets_all() {
    let d = tempfile::tempdir().unwrap();
    // The fast reader is one the operator lets hold the publisher (as a
    // mirror edge would be), with no budget: it keeps up with a publisher
    // at full speed; the slow one never holds it.
    let b = BrokerProc::with_users(
        d.path(),
        &[PUB, MIRROR],
        &[
            "--max-queued-messages",
            "200",
            "--pushback-user",
            MIRROR.0,
            "--pushback-budget-ms",
            "1000",
        ],
    );
    const N: u64 = 3_000;
    // The slow reader subscribes at QoS 1 and reads nothing until the end:
    // 20 messages in flight (max_inflight_messages), 200 queued, the rest
    // dropped as they arrive, each one counted.
    let (mut slow, _) = Raw::connect(b.mqtt(), 4, "slow", None);
    slow.send(&subscribe(4, 1, "load/#", 1));
    assert_eq!(slow.read().expect("SUBACK").0, 0x90);
    let fast = subscriber_as(&b, "fast", Some(MIRROR), "load/#", 1, N).await;
    publish_load(&b, 1, N, 1, 512).await;
    assert_eq!(fast.await.unwrap(), N, "the fast reader gets every message");
    let dropped = b.dropped("queue_full");
    let got =
        tokio::task::spawn_blocking(move || slow.drain_publishes(Duration::from_secs(2)) as u64)
            .await
            .unwrap();
    assert!(dropped > 0, "the slow reader's queue overflowed");
    assert_eq!(
        got + dropped,
        N,
        "every message reached the slow reader or was counted against its queue"
    );
    assert_eq!(got, 20 + 200, "in flight + queued");
}

#[test]
fn every_retained_match_is_delivered() {
    let d = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(d.path(), &[PUB], &[]);
    const HOSTS: usize = 1_000;
    let (mut p, ack) = Raw::connect(b.mqtt(), 4, "nova-bridge", Some(PUB));
    assert_eq!(ack, vec![0, 0]);
    for i in 0..HOSTS {
        let topic = format!("nova/cell1/service/nova-compute/host{i}");
        let payload = format!("{{\"state\":\"up\",\"host\":\"host{i}\"}}");
        let mut pk = publish(
            4,
            topic.as_bytes(),
            payload.as_bytes(),
            1,
            (i % 60000 + 1) as u16,
        );
        pk[0] |= 1; // retain
        p.send(&pk);
        assert_eq!(p.read().expect("PUBACK").0, 0x40);
    }
    b.wait_metric("firehose_broker_retained_messages", HOSTS as u64);
    for q in [0u8, 1] {
        let (mut r, _) = Raw::connect(b.mqtt(), 4, &format!("reader-{q}"), None);
        r.send(&subscribe(4, 1, "nova/+/service/nova-compute/#", q));
        assert_eq!(r.read().expect("SUBACK").0, 0x90);
        assert_eq!(
            r.drain_publishes(Duration::from_secs(2)),
            HOSTS,
            "every retained message at QoS {q}"
        );
    }
}

/// `[limits.users.<name>]`: a logged-in user's sessions get their own
/// in-flight window and queue (a history ingester's), while an anonymous
/// reader keeps everyone's: each reader that reads nothing gets exactly
/// its window plus its queue, the rest counted as dropped.
#[test]
fn a_users_own_limits_apply_to_its_sessions_only() {
    const HIST: (&str, &str) = ("history", "h1story");
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("broker.toml");
    std::fs::write(
        &cfg,
        "[limits]\nmax_queued_messages = 200\n\
         [limits.users.history]\nmax_inflight_messages = 50\nmax_queued_messages = 500\n",
    )
    .unwrap();
    let b = BrokerProc::with_users(d.path(), &[PUB, HIST], &["--config", cfg.to_str().unwrap()]);
    let reader = |id: &str, login: Option<(&str, &str)>| {
        let (mut r, ack) = Raw::connect(b.mqtt(), 4, id, login);
        assert_eq!(ack, vec![0, 0], "{id} connected");
        r.send(&subscribe(4, 1, "load/#", 1));
        assert_eq!(r.read().expect("SUBACK").0, 0x90);
        r
    };
    let mut anon = reader("anonymous-reader", None);
    let mut hist = reader("history-reader", Some(HIST));
    const N: usize = 2_000;
    let mut p = Publisher::new(b.mqtt(), PUB);
    for i in 0..N {
        p.publish("load/x", i.to_string().as_bytes(), false);
    }
    let got_anon = anon.drain_publishes(Duration::from_secs(2));
    let got_hist = hist.drain_publishes(Duration::from_secs(2));
    assert_eq!(got_anon, 20 + 200, "everyone's window and queue");
    assert_eq!(got_hist, 50 + 500, "the history user's own");
    assert_eq!(
        b.dropped("queue_full") as usize,
        (N - 220) + (N - 550),
        "the rest counted"
    );
}
