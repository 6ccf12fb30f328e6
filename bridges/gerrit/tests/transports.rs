//! The runtime's options on the real binaries: websockets and TLS to the
//! broker (with --ca), --base-topic, --qos 0, --metrics, replay from stdin,
//! and event types nobody has heard of.

use std::io::Write;
use std::process::{Command, Stdio};

use firehose_testkit::*;

use firehose_testkit::logins::GERRIT as BRIDGE;

const GOOD: &str = r#"{"type":"comment-added","change":{"project":"a/b","number":7}}"#;
const NEW_TYPE: &str = r#"{"type":"brand-new-event","project":"a/b","eventCreatedOn":1700000000}"#;

#[test]
fn websockets_base_topic_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let events = dir.path().join("events");
    std::fs::write(&events, format!("{GOOD}\nnot json\n{NEW_TYPE}\n")).unwrap();
    let sshd = Sshd::start(
        dir.path(),
        &format!("cat {}; exec cat >/dev/null", events.display()),
    );
    let sub = Sub::spawn(&b, &["-t", "site1/#", "-v", "-C", "2"]);
    let br = Proc::spawn(
        "firehose-gerrit",
        Command::new(bin("firehose-gerrit"))
            .args(["--gerrit", &sshd.url(), "--ssh-key"])
            .arg(&sshd.user_key)
            .arg("--known-hosts")
            .arg(&sshd.known_hosts)
            .args([
                "--broker",
                &format!("ws://{}@{}/mqtt", BRIDGE.0, b.ws.unwrap()),
            ])
            .arg("--password-file")
            .arg(bridge_password_file(dir.path(), BRIDGE.1))
            .args([
                "--base-topic",
                "site1/",
                "--payload",
                "raw",
                "--metrics",
                "127.0.0.1:0",
            ])
            .arg("--dead-letter")
            .arg(dir.path().join("dl.jsonl")),
    );
    let (_, out, _) = sub.output();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec![
            format!("site1/gerrit/a/b/comment-added {GOOD}"),
            format!("site1/gerrit/a/b/brand-new-event {NEW_TYPE}")
        ]
    );
    let addr = br.metrics_addr();
    let m = |name: &str| {
        metric_at(
            addr,
            &format!("firehose_bridge_{name}{{bridge=\"gerrit\"}}"),
        )
        .unwrap_or_else(|b| panic!("{name}: {b}"))
    };
    wait_until(
        WAIT,
        || m("events_published_total") >= 2,
        || "2 events published".into(),
    );
    assert_eq!(m("events_read_total"), 2);
    assert_eq!(m("events_malformed_total"), 1);
    assert_eq!(m("events_spooled"), 0);
    assert_eq!(m("events_dropped_total"), 0);
    assert_eq!(m("broker_connected"), 1);
    assert_eq!(m("source_connected"), 1);
    assert_eq!(m("broker_reconnects_total"), 0);
}

#[test]
fn tls_with_ca_qos0_and_replay_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let tls_listener = TlsListener::new(dir.path());
    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], &tls_listener.flags());
    let tls = b.mqtts.expect("mqtts listener");
    let sub = Sub::spawn(&b, &["-t", "gerrit/#", "-v", "-C", "2"]);
    let mut child = Command::new(bin("firehose-gerrit"))
        .args(["--replay", "-", "--payload", "raw", "--qos", "0"])
        .args([
            "--broker",
            &format!("mqtts://{}@localhost:{}", BRIDGE.0, tls.port()),
        ])
        .arg("--ca")
        .arg(dir.path().join("ca.pem"))
        .arg("--password-file")
        .arg(bridge_password_file(dir.path(), BRIDGE.1))
        .arg("--dead-letter")
        .arg(dir.path().join("dl.jsonl"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{GOOD}\n{NEW_TYPE}").unwrap();
    drop(stdin);
    let (done, killed) = finish(child, WAIT);
    assert!(!killed, "replay from stdin did not finish");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let (_, out, _) = sub.output();
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("gerrit/a/b/brand-new-event"), "{out}");

    // Without the CA the broker's certificate is not trusted; the replayed
    // event cannot be delivered and, with no spool to keep it, the exit
    // status says so.
    let one = dir.path().join("one.jsonl");
    std::fs::write(&one, format!("{GOOD}\n")).unwrap();
    let out = run(Command::new(bin("firehose-gerrit"))
        .arg("--replay")
        .arg(&one)
        .args(["--flush-timeout", "1"])
        .args([
            "--broker",
            &format!("mqtts://{}@localhost:{}", BRIDGE.0, tls.port()),
        ])
        .arg("--password-file")
        .arg(bridge_password_file(dir.path(), BRIDGE.1)));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS") && err.contains("certificate"), "{err}");
    assert!(!out.status.success(), "undelivered events are an error");
    assert!(err.contains("1 event(s) not delivered"), "{err}");
    // One true story: no line says they stay in a spool there is not.
    assert!(!err.contains("stay in the spool"), "{err}");
    assert!(
        err.contains("undelivered events are lost (no --spool"),
        "{err}"
    );
}
