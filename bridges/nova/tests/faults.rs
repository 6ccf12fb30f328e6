//! Fault tests with 10,000 notifications: RabbitMQ restarted while they
//! flow, and the broker restarted while they flow. A persistent-session
//! subscriber must see every message_id at least once; the duplicate count
//! is printed. Bounded: every wait has a deadline.

mod common;
use common::*;
use firehose_testkit::*;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

const N: usize = 10_000;

/// `N` notifications made from the smallest fixtures, each with its own
/// message_id.
fn notifications() -> Vec<AmqpMessage> {
    let mut fx = all_fixtures();
    fx.sort_by_key(|m| m.body.len());
    fx.truncate(12);
    numbered(&fx, "fault", 0, N)
}

/// Publishes everything in batches with confirms, retrying a batch (at
/// least once, as nova would) while RabbitMQ is away.
fn spawn_publisher(url: String, msgs: Vec<AmqpMessage>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for batch in msgs.chunks(200) {
            let last = std::cell::RefCell::new(String::new());
            poll_every(
                Duration::from_millis(200),
                Duration::from_secs(120),
                || match rt.block_on(publish_async(&url, batch, true)) {
                    Ok(()) => Some(()),
                    Err(e) => {
                        *last.borrow_mut() = e.to_string();
                        None
                    }
                },
                || format!("a batch through (last error: {})", last.borrow()),
            );
        }
    })
}

/// A subscriber thread that reconnects whenever its connection ends and
/// stops once every id was seen (or at the deadline).
struct SubThread {
    handle: std::thread::JoinHandle<Subscriber>,
    connections: Arc<AtomicUsize>,
    seen: Arc<AtomicUsize>,
}

fn spawn_subscriber(port: u16) -> SubThread {
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicUsize::new(0));
    let (c2, s2) = (connections.clone(), seen.clone());
    let mut sub = Subscriber::new(port, "nova/#");
    connections.fetch_add(1, SeqCst);
    let handle = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(240);
        while sub.seen.len() < N && Instant::now() < deadline {
            let target = (sub.seen.len() + 100).min(N);
            if sub.read_until(target) {
                s2.store(sub.seen.len(), SeqCst);
                continue;
            }
            // Connection lost: come back as soon as a broker listens.
            loop {
                if let Some(r) = Subscriber::try_connect(port, "nova/#") {
                    sub.raw = r;
                    c2.fetch_add(1, SeqCst);
                    break;
                }
                if Instant::now() > deadline {
                    return sub;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        sub
    });
    SubThread {
        handle,
        connections,
        seen,
    }
}

fn finish(sub: SubThread, what: &str) {
    let sub = sub.handle.join().expect("subscriber thread");
    let missing: Vec<String> = (0..N)
        .map(|i| format!("fault-{i:05}"))
        .filter(|id| !sub.seen.contains_key(id))
        .take(5)
        .collect();
    eprintln!(
        "{what}: {N} notifications, {} received, {} distinct, {} duplicates",
        sub.received,
        sub.seen.len(),
        sub.duplicates()
    );
    assert!(
        missing.is_empty(),
        "{what}: never arrived (first 5): {missing:?}"
    );
}

/// What both fault tests share: RabbitMQ with nova's exchange (durable, so
/// a restart keeps it), a broker on a fixed port, the persistent subscriber,
/// the bridge and the publisher, with 2,000 notifications through already.
struct Flow {
    _dir: tempfile::TempDir,
    rabbit: RabbitMq,
    port: u16,
    pw: PasswdSwitch,
    broker: Option<BrokerProc>,
    sub: SubThread,
    bridge: Proc,
    publisher: std::thread::JoinHandle<()>,
}

/// The subscriber may fall behind a burst: the broker keeps it all.
const QUEUE_ALL: &[&str] = &["--max-queued-messages", "100000"];

fn start_flow() -> Flow {
    let dir = tempfile::tempdir().unwrap();
    let rabbit = RabbitMq::start(&dir.path().join("rabbit"));
    declare(&rabbit.url(), "nova", true, &[]);
    let pw = PasswdSwitch::new(dir.path(), BRIDGE);
    let port = free_port();
    let broker = BrokerProc::on_port(port, &pw.active, QUEUE_ALL);
    let sub = spawn_subscriber(port);
    let mqtt = format!("127.0.0.1:{port}");
    let bridge = bridge(
        &rabbit,
        &mqtt,
        &bridge_password_file(dir.path(), BRIDGE.1),
        dir.path(),
        "cell1",
        // The restarted broker refuses the bridge for a while, on purpose.
        &["--retry-auth"],
    );
    bridge.wait_log("consuming nova notifications");
    let publisher = spawn_publisher(rabbit.url(), notifications());
    wait_until(
        Duration::from_secs(120),
        || {
            assert!(!sub.handle.is_finished(), "the subscriber stopped early");
            sub.seen.load(SeqCst) >= 2_000
        },
        || "2,000 notifications before the fault".into(),
    );
    Flow {
        _dir: dir,
        rabbit,
        port,
        pw,
        broker: Some(broker),
        sub,
        bridge,
        publisher,
    }
}

impl Flow {
    fn finish(self, what: &str) {
        self.publisher.join().expect("publisher");
        finish(self.sub, what);
    }
}

#[test]
fn rabbitmq_restart_while_notifications_flow() {
    let mut f = start_flow();
    f.rabbit.restart();
    // The bridge's backoff grows to 30 s while RabbitMQ is away (a restart
    // takes 10-40 s on a small machine): allow a full backoff step more.
    wait_until(
        Duration::from_secs(90),
        || f.bridge.count_log("consuming nova notifications") >= 2,
        || format!("the bridge to consume again; logs:\n{}", f.bridge.logs()),
    );
    f.finish("RabbitMQ restart");
}

#[test]
fn broker_restart_while_notifications_flow() {
    let mut f = start_flow();
    // A clean stop: the broker delivers what it accepted, then exits.
    let mut b1 = f.broker.take().expect("broker");
    b1.signal("TERM");
    assert!(b1.wait_exit().success());
    f.bridge.wait_log("broker connection lost");
    // The new broker refuses the bridge until the subscriber is back (the
    // broker keeps no sessions across a restart).
    f.pw.refuse();
    let b2 = BrokerProc::on_port(f.port, &f.pw.active, QUEUE_ALL);
    wait_until(
        WAIT,
        || f.sub.connections.load(SeqCst) >= 2,
        || "the subscriber to reconnect".into(),
    );
    f.pw.admit();
    b2.signal("HUP");
    f.finish("broker restart");
}
