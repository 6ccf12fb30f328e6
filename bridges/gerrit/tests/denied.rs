//! Events the broker's ACL refuses are not lost in silence: the bridges'
//! publisher speaks MQTT 5, so a PUBACK with reason 0x87 (not authorized)
//! means "not delivered". Such an event is dead-lettered with the reason,
//! counted, the status says degraded, and a --replay exits non-zero. The
//! allowed events still arrive.

use std::path::Path;
use std::process::Command;

use firehose_testkit::*;

use firehose_testkit::logins::GERRIT as BRIDGE;

#[test]
fn denied_events_are_dead_lettered_counted_and_fail_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "topic read #\n\nuser gerrit-bridge\ntopic write gerrit/qt/#\ntopic write firehose/status/#\n",
    )
    .unwrap();
    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], &["--acl", acl.to_str().unwrap()]);
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/gerrit/stream-events.jsonl");
    let lines = std::fs::read_to_string(&fixture).unwrap();
    let qt = lines.lines().filter(|l| l.contains("\"qt/")).count();
    let total = lines.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(qt > 0 && qt < total);
    let sub = Sub::spawn(
        &b,
        &["-t", "gerrit/#", "-v", "-C", &qt.to_string(), "-W", "20"],
    );
    // Every status message of the run, up to "down".
    let (mut status, _) = Raw::connect(b.mqtt(), 4, "status-watch", None);
    status.send(&subscribe(4, 1, "firehose/status/gerrit/denied", 0));
    assert_eq!(status.read().expect("SUBACK").0, 0x90);
    let dl = dir.path().join("dead-letter.jsonl");
    let out = run(Command::new(bin("firehose-gerrit"))
        .arg("--replay")
        .arg(&fixture)
        .args(["--broker", &format!("mqtt://{}@{}", BRIDGE.0, b.mqtt())])
        .arg("--password-file")
        .arg(bridge_password_file(dir.path(), BRIDGE.1))
        .args(["--instance", "denied"])
        .arg("--dead-letter")
        .arg(&dl));
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "a replay with refused events fails: {log}"
    );
    let denied = total - qt;
    assert!(
        log.contains(&format!("the broker refused {denied} event(s)")),
        "{log}"
    );
    // The allowed ones arrived, and only those.
    let (_, got, _) = sub.output();
    let topics: Vec<&str> = got.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(topics.len(), qt, "{got}");
    assert!(
        topics.iter().all(|t| t.starts_with("gerrit/qt/")),
        "{topics:?}"
    );
    // Every refused one is in the dead-letter file, with the reason.
    let letters: Vec<serde_json::Value> = std::fs::read_to_string(&dl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), denied);
    assert!(
        letters.iter().all(|l| l["reason"]
            .as_str()
            .unwrap()
            .contains("0x87 not authorized")),
        "{letters:?}"
    );
    // The status said degraded, with the reason, and counts them.
    let mut states = Vec::new();
    while let Some((t, body)) = status.read() {
        if t & 0xf0 != 0x30 {
            continue;
        }
        let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
        let st: serde_json::Value = serde_json::from_slice(&body[2 + tl..]).unwrap();
        let down = st["state"] == "down";
        states.push(st);
        if down {
            break;
        }
    }
    let last = states.last().expect("status messages");
    assert_eq!(last["state"], "down", "{states:#?}\n{log}");
    assert_eq!(last["counters"]["rejected"], denied as u64, "{last}\n{log}");
    let why = |s: &serde_json::Value| s["upstream_error"].as_str().unwrap_or("").to_owned();
    assert!(
        states.iter().any(|s| s["state"] == "degraded"
            && why(s).contains("refused by the broker")
            && why(s).contains("not authorized")),
        "a degraded status naming the refusal: {states:?}"
    );
}
