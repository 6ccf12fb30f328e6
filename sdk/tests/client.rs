//! The SDK's client against the real broker: typed events from a filter;
//! a broker restart survived (reconnect + resubscribe); a shared
//! subscription splits work across two consumers with nothing delivered
//! twice; dedup drops the second copy of an event (here the same gerrit
//! event in both payload modes, as two redundant bridges would send it);
//! liveness from retained status topics.

use std::collections::BTreeSet;
use std::time::Duration;

use firehose::reader::Body;
use firehose::{Client, Filter, Publishable};
use firehose_testkit::*;

use firehose_testkit::logins::PUBLISHER;

use firehose_testkit_events::{gerrit_events, publish_gerrit, Modes};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn next(sub: &mut firehose::client::Subscription) -> firehose::reader::Event {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("an event within the wait")
        .expect("the client is alive")
}

#[test]
fn typed_events_and_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pw = passwd_file(dir.path(), &[PUBLISHER]);
    let port = free_port();
    let mut b = BrokerProc::on_port(port, &pw, &[]);
    rt().block_on(async {
        let client = Client::connect(&format!("mqtt://127.0.0.1:{port}"))
            .await
            .unwrap();
        let mut qtbase = client
            .subscribe(Filter::gerrit().project("qt/qtbase"))
            .await
            .unwrap();
        let mut merged = client
            .subscribe(Filter::gerrit().event("change-merged"))
            .await
            .unwrap();
        assert!(client.wait_connected(WAIT).await);
        // Both subscriptions reach the broker before anything is published.
        b.wait_metric("firehose_broker_subscriptions", 2);
        // Half raw, half CloudEvents: the reader sees the same.
        let mut p = Publisher::new(b.mqtt(), PUBLISHER);
        let events = publish_gerrit(&mut p, Modes::Alternating);
        let want_qtbase = events.iter().filter(|g| g.project() == "qt/qtbase").count();
        for _ in 0..want_qtbase {
            let ev = next(&mut qtbase).await;
            assert!(ev.topic.starts_with("gerrit/qt/qtbase/"), "{}", ev.topic);
            match &ev.body {
                Body::Gerrit(g) => assert_eq!(g.project(), "qt/qtbase"),
                other => panic!("{other:?}"),
            }
        }
        let want_merged = events
            .iter()
            .filter(|g| g.event_type() == "change-merged")
            .count();
        let mut projects = BTreeSet::new();
        for _ in 0..want_merged {
            let ev = next(&mut merged).await;
            assert_eq!(ev.kind, "gerrit.change-merged");
            projects.insert(ev.topic.clone());
        }
        assert!(projects.len() > 1, "across projects: {projects:?}");

        // The broker restarts (it keeps no sessions): the client comes back
        // and subscribes again by itself.
        drop(p);
        b.signal("TERM");
        assert!(b.wait_exit().success());
        let mut st = client.state();
        tokio::time::timeout(
            WAIT,
            st.wait_for(|s| matches!(s, firehose::client::ConnectionState::Down(_))),
        )
        .await
        .expect("the client saw the broker go")
        .unwrap();
        let b2 = BrokerProc::on_port(port, &pw, &[]);
        assert!(client.wait_connected(Duration::from_secs(40)).await);
        wait_until(
            WAIT,
            || b2.metric("firehose_broker_subscriptions") >= 2,
            || "the client to subscribe again".into(),
        );
        let mut p = Publisher::new(b2.mqtt(), PUBLISHER);
        let g = events.iter().find(|g| g.project() == "qt/qtbase").unwrap();
        p.publish(&g.topic(), &g.raw(), false);
        let ev = next(&mut qtbase).await;
        assert_eq!(ev.kind, format!("gerrit.{}", g.event_type()));
    });
}

#[test]
fn shared_subscription_splits_work_and_dedup_drops_copies() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[PUBLISHER], &[]);
    let url = format!("mqtt://{}", b.mqtt());
    rt().block_on(async {
        let a = Client::connect(&url).await.unwrap();
        let c = Client::connect(&url).await.unwrap();
        let mut wa = a
            .subscribe(Filter::gerrit().shared("workers"))
            .await
            .unwrap();
        let mut wc = c
            .subscribe(Filter::gerrit().shared("workers"))
            .await
            .unwrap();
        let d = Client::builder(&url).dedup(1000).connect().await.unwrap();
        let mut once = d.subscribe(Filter::gerrit()).await.unwrap();
        for cl in [&a, &c, &d] {
            assert!(cl.wait_connected(WAIT).await);
        }
        wait_until(
            WAIT,
            || b.metric("firehose_broker_subscriptions") >= 3,
            || "three subscriptions".into(),
        );
        // Two redundant bridges: one raw, one CloudEvents, same id.
        let events = publish_gerrit(&mut Publisher::new(b.mqtt(), PUBLISHER), Modes::Both);
        let n = events.len();
        // Dedup: each event once.
        let mut ids = BTreeSet::new();
        for _ in 0..n {
            let ev = next(&mut once).await;
            assert!(ids.insert(ev.id.clone().unwrap()), "twice: {:?}", ev.id);
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(500), once.next())
                .await
                .is_err(),
            "no copies"
        );
        // The pool: 2n messages, each to exactly one worker.
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while got.len() < 2 * n {
            let next = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    Some(e) = wa.next() => ("a", e),
                    Some(e) = wc.next() => ("c", e),
                }
            });
            match next.await {
                Ok(e) => got.push(e),
                Err(_) => break,
            }
        }
        assert_eq!(got.len(), 2 * n, "every message to one worker");
        let by_a = got.iter().filter(|(w, _)| *w == "a").count();
        assert!(
            by_a > 0 && by_a < 2 * n,
            "both workers worked: {by_a} of {}",
            2 * n
        );
    });
}

#[test]
fn liveness_from_retained_status() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[PUBLISHER], &[]);
    let mut p = Publisher::new(b.mqtt(), PUBLISHER);
    let status = |state: &str| {
        format!(
            r#"{{"state":"{state}","version":"firehose-gerrit 0.1.0","host":"h","started":"2026-01-01T00:00:00Z","upstream_connected":true,"counters":{{"read":0,"published":0,"pending":0,"malformed":0,"dropped":0,"reconnects":0}}}}"#
        )
    };
    p.publish(
        "firehose/status/gerrit/review",
        status("up").as_bytes(),
        true,
    );
    p.publish(
        "nova/cell1/service/nova-compute/compute-7",
        br#"{"state":"down","host":"compute-7","binary":"nova-compute","forced_down":true}"#,
        true,
    );
    rt().block_on(async {
        let client = Client::connect(&format!("mqtt://{}", b.mqtt()))
            .await
            .unwrap();
        let live = client.liveness().await.unwrap();
        live.wait_synced(WAIT).await;
        assert_eq!(live.is_up("gerrit", "review"), Some(true));
        assert_eq!(live.is_up("gerrit", "other"), None);
        assert_eq!(
            live.nova_service_is_up("cell1", "nova-compute", "compute-7"),
            Some(false)
        );
        let mut changes = live.changes();
        p.publish(
            "firehose/status/gerrit/review",
            status("down").as_bytes(),
            true,
        );
        let change = tokio::time::timeout(WAIT, changes.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(change, firehose::liveness::Change::Bridge { .. }),
            "{change:?}"
        );
        assert_eq!(live.is_up("gerrit", "review"), Some(false));
    });
}

#[test]
fn persistent_session_keeps_what_arrives_while_away() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[PUBLISHER], &[]);
    let url = format!("mqtt://{}", b.mqtt());
    let events = gerrit_events();
    rt().block_on(async {
        let first = Client::builder(&url)
            .session("sdk-persistent")
            .connect()
            .await
            .unwrap();
        let _sub = first.subscribe(Filter::gerrit()).await.unwrap();
        assert!(first.wait_connected(WAIT).await);
        wait_until(
            WAIT,
            || b.metric("firehose_broker_subscriptions") >= 1,
            || "the subscription".into(),
        );
        first.disconnect().await;
        drop(first);
        wait_until(
            WAIT,
            || b.metric("firehose_broker_clients_connected") == 0,
            || "the client to be gone".into(),
        );
        // Published while nobody is connected: kept in the session.
        let mut p = Publisher::new(b.mqtt(), PUBLISHER);
        for g in &events {
            p.publish(&g.topic(), &g.raw(), false);
        }
        drop(p);
        let sent = b.metric("firehose_broker_publish_sent_total");
        let again = Client::builder(&url)
            .session("sdk-persistent")
            .connect()
            .await
            .unwrap();
        // The resumed session gets what was kept right after CONNACK,
        // before this program subscribes again: the client holds it for
        // the subscription (it used to drop it, depending on timing).
        assert!(again.wait_connected(WAIT).await);
        b.wait_metric(
            "firehose_broker_publish_sent_total",
            sent + events.len() as u64,
        );
        let mut sub = again.subscribe(Filter::gerrit()).await.unwrap();
        let mut ids = BTreeSet::new();
        for _ in 0..events.len() {
            ids.insert(next(&mut sub).await.id.unwrap());
        }
        let want: BTreeSet<String> = events.iter().map(|g| g.id()).collect();
        assert_eq!(ids, want, "every event published while away");
    });
}
