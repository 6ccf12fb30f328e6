//! firehose-gerrit publishing into Debian's mosquitto (an existing broker
//! instead of ours): login from a password file, TLS with a private CA,
//! QoS 1 acknowledged by mosquitto, every event delivered; a wrong password
//! is refused with an error that says so.

use std::path::Path;

use firehose_testkit::*;

use firehose_testkit::logins::GERRIT as BRIDGE;

fn replay(dir: &Path, mq: &Mosquitto, password: &str) -> std::process::Output {
    let ca = dir.join("ca.pem");
    replay_gerrit(
        dir,
        &format!("mqtts://localhost:{}", mq.tls_port),
        (BRIDGE.0, password),
        &["--ca", ca.to_str().unwrap()],
    )
}

#[test]
fn gerrit_into_mosquitto_over_tls_with_login() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let mq = Mosquitto::start(
        dir.path(),
        &[BRIDGE],
        &format!(
            "topic read #\n\nuser {}\ntopic write gerrit/#\ntopic write firehose/status/#\n",
            BRIDGE.0
        ),
    );
    let total = fixture_lines("gerrit/stream-events.jsonl").len();
    let mut sub = Subscriber::new(mq.port, "gerrit/#");
    let out = replay(dir.path(), &mq, BRIDGE.1);
    assert!(out.status.success(), "{out:?}\n{}", mq.logs());
    // A replay exits once the broker acknowledged everything: all of it is
    // on its way to the subscriber.
    assert!(sub.read_until(total), "{} of {total}", sub.seen.len());
    assert_eq!(sub.duplicates(), 0);
    // A wrong password: refused, and the error says what to check.
    let out = replay(dir.path(), &mq, "wrong");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused our credentials"), "{err}");
    assert!(!err.contains("wrong"), "no password in logs: {err}");
}
