//! No loss: events keep their place in the spool while the broker is down
//! (restarted mid-stream) and across a killed bridge, and reach a
//! persistent-session subscriber; duplicates, if any, carry the same id.

use std::path::Path;
use std::process::Command;

use firehose_testkit::*;

use firehose_testkit::logins::GERRIT as BRIDGE;
const EVENTS: usize = 300;

/// `n` distinct gerrit events, one per line.
fn events_file(dir: &Path, n: usize) -> std::path::PathBuf {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "{{\"type\":\"comment-added\",\"change\":{{\"project\":\"load/test\",\"number\":{i}}},\"eventCreatedOn\":{}}}\n",
            1_700_000_000 + i
        ));
    }
    let p = dir.join("events.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn broker_restart_while_events_flow_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pw = PasswdSwitch::new(dir.path(), BRIDGE);
    let port = free_port();
    let b1 = BrokerProc::on_port(port, &pw.active, &[]);
    let mut sub = Subscriber::new(port, "gerrit/#");

    // The stream writes 100 events, waits on a FIFO until the test has
    // stopped the broker, then writes the other 200.
    let file = events_file(dir.path(), EVENTS);
    let gate = dir.path().join("gate");
    let out = run(Command::new("mkfifo").arg(&gate));
    assert!(out.status.success(), "mkfifo: {out:?}");
    let sshd = Sshd::start(
        dir.path(),
        &format!(
            "head -n 100 {f}; cat {g} >/dev/null; tail -n +101 {f}; exec cat >/dev/null",
            f = file.display(),
            g = gate.display()
        ),
    );
    let br = Proc::spawn(
        "firehose-gerrit",
        Command::new(bin("firehose-gerrit"))
            .args(["--gerrit", &sshd.url(), "--known-hosts"])
            .arg(&sshd.known_hosts)
            .arg("--ssh-key")
            .arg(&sshd.user_key)
            .args(["--broker", &format!("mqtt://{}@127.0.0.1:{port}", BRIDGE.0)])
            .arg("--password-file")
            .arg(bridge_password_file(dir.path(), BRIDGE.1))
            // The second broker refuses the bridge for a while, on purpose.
            .arg("--retry-auth")
            .args(["--instance", "noloss", "--metrics", "127.0.0.1:0"]),
    );
    assert!(sub.read_until(100), "first 100 events");
    // The broker is stopped (a clean stop: it delivers what it accepted,
    // then exits; the bridge resends what was not acknowledged).
    let mut b1 = b1;
    b1.signal("TERM");
    assert!(b1.wait_exit().success());
    br.wait_log("broker connection lost");
    // The other 200 events arrive while there is no broker.
    std::fs::write(&gate, b"go").expect("open the gate");
    let metrics = br.metrics_addr();
    let read = "firehose_bridge_events_read_total{bridge=\"gerrit\"}";
    wait_until(
        WAIT,
        || metric_at(metrics, read).unwrap_or(0) >= EVENTS as u64,
        || "the bridge to read all events while the broker is down".into(),
    );
    // A new broker on the same port that does not know the bridge yet, so the
    // subscriber is back before the bridge can publish again.
    pw.refuse();
    let b2 = BrokerProc::on_port(port, &pw.active, &[]);
    sub.raw = Subscriber::connect(port, "gerrit/#");
    br.wait_log("broker refused the connection");
    pw.admit();
    b2.signal("HUP");
    assert!(sub.read_until(EVENTS), "subscriber lost its connection");
    eprintln!(
        "broker restart: {EVENTS} events, {} received, {} duplicates",
        sub.received,
        sub.duplicates()
    );
    assert_eq!(sub.seen.len(), EVENTS);
}

#[test]
fn spooled_events_survive_a_killed_bridge() {
    let dir = tempfile::tempdir().unwrap();
    let pw = passwd_file(dir.path(), &[BRIDGE]);
    let port = free_port();
    let file = events_file(dir.path(), 50);
    let spool = dir.path().join("spool");
    let bridge = |source: &Path| {
        Proc::spawn(
            "firehose-gerrit",
            Command::new(bin("firehose-gerrit"))
                .arg("--replay")
                .arg(source)
                .args(["--broker", &format!("mqtt://{}@127.0.0.1:{port}", BRIDGE.0)])
                .arg("--password-file")
                .arg(bridge_password_file(dir.path(), BRIDGE.1))
                .arg("--spool")
                .arg(&spool)
                .args(["--instance", "spool"]),
        )
    };
    // No broker yet: the bridge reads all 50 events into its spool...
    let first = bridge(&file);
    first.wait_log("replay read to the end");
    first.wait_log("cannot connect to the broker");
    // ...and is killed without a chance to flush.
    first.signal("KILL");
    drop(first);
    let b = BrokerProc::on_port(port, &pw, &[]);
    let mut sub = Subscriber::new(port, "gerrit/#");
    // Restarted with nothing new to read, it delivers what the spool kept.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let mut second = bridge(&empty);
    second.wait_log("spool opened");
    assert!(second.logs().contains("recovered=50"), "{}", second.logs());
    assert!(sub.read_until(50), "all 50 spooled events");
    assert!(second.wait_exit().success());
    drop(b);
    eprintln!(
        "killed bridge: 50 events, {} received, {} duplicates",
        sub.received,
        sub.duplicates()
    );
}
