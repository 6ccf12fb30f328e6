//! firehose-gerrit against a real OpenSSH sshd (standing in for Gerrit's
//! SSH port, with a forced command that writes the fixture events) and the
//! real firehose-broker, observed with Debian's mosquitto_sub.

use std::path::{Path, PathBuf};
use std::process::Command;

use firehose_testkit::*;

use firehose_testkit::logins::GERRIT as BRIDGE;

/// Topic of each fixture line, in order (worked out by hand from the
/// events: top-level project, else change.project, else refUpdate.project,
/// else projectName).
const EXPECTED_TOPICS: [&str; 26] = [
    "gerrit/snix/patchset-created",
    "gerrit/qt/qtopcua/patchset-created",
    "gerrit/clu/patchset-created",
    "gerrit/openstack/nova/comment-added",
    "gerrit/gerritbot-rs/comment-added",
    "gerrit/project-name/comment-added",
    "gerrit/qt/qtdeclarative/comment-added",
    "gerrit/qt/qtbase/change-merged",
    "gerrit/snix/change-merged",
    "gerrit/qt/qtbase/change-abandoned",
    "gerrit/playback-test/change-restored",
    "gerrit/openstack/nova/ref-updated",
    "gerrit/qt/qtdeclarative/ref-updated",
    "gerrit/snix/ref-updated",
    "gerrit/qt/qtdeclarative/ref-updated",
    "gerrit/gerritbot-rs/reviewer-added",
    "gerrit/qtqa/tqtc-coin-ci/reviewer-added",
    "gerrit/project-name/topic-changed",
    "gerrit/platform/build/hashtags-changed",
    "gerrit/TestRepo3/project-created",
    "gerrit/snix/wip-state-changed",
    "gerrit/snix/private-state-changed",
    "gerrit/project-test/vote-deleted",
    "gerrit/gerritbot-rs/assignee-changed",
    "gerrit/qt/qtvirtualkeyboard/merge-failed",
    "gerrit/bwnUVH/change-deleted",
];

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/gerrit/stream-events.jsonl")
}

fn fixture_lines() -> Vec<Vec<u8>> {
    std::fs::read(fixture())
        .expect("fixtures/gerrit/stream-events.jsonl")
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// A broker that knows the bridge's user, and the bridge's password file.
fn broker(dir: &Path, extra: &[&str]) -> (BrokerProc, PathBuf) {
    (
        BrokerProc::with_users(dir, &[BRIDGE], extra),
        bridge_password_file(dir, BRIDGE.1),
    )
}

/// Starts firehose-gerrit publishing to `b` with `args`.
fn bridge(b: &BrokerProc, pwfile: &Path, dir: &Path, args: &[&str]) -> Proc {
    Proc::spawn(
        "firehose-gerrit",
        Command::new(bin("firehose-gerrit"))
            .env(
                "FIREHOSE_LOG",
                std::env::var("TEST_BRIDGE_LOG").unwrap_or_else(|_| "info,russh=warn".into()),
            )
            .arg("--broker")
            .arg(format!("mqtt://{}@{}", BRIDGE.0, b.mqtt()))
            .arg("--password-file")
            .arg(pwfile)
            .arg("--instance")
            .arg("test")
            .arg("--dead-letter")
            .arg(dir.join("dead-letter.jsonl"))
            .args(args),
    )
}

fn unhex(h: &str) -> Vec<u8> {
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// Subscribes to `gerrit/#` and returns a handle that yields `n` messages.
fn subscribe(b: &BrokerProc, n: usize) -> Sub {
    Sub::spawn(
        b,
        &[
            "-t",
            "gerrit/#",
            "-F",
            "%t\t%x",
            "-C",
            &n.to_string(),
            "-W",
            "30",
        ],
    )
}

fn messages(sub: Sub) -> Vec<(String, Vec<u8>)> {
    let (_, out, err) = sub.output();
    out.lines()
        .map(|l| {
            let (t, h) = l
                .split_once('\t')
                .unwrap_or_else(|| panic!("bad line {l:?}; stderr {err}"));
            (t.to_owned(), unhex(h))
        })
        .collect()
}

fn dead_letters(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("dead-letter.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("dead-letter lines are JSON"))
        .collect()
}

fn ssh_args(sshd: &Sshd) -> Vec<String> {
    vec![
        "--gerrit".into(),
        sshd.url(),
        "--ssh-key".into(),
        sshd.user_key.to_string_lossy().into_owned(),
        "--known-hosts".into(),
        sshd.known_hosts.to_string_lossy().into_owned(),
    ]
}

#[test]
fn every_event_on_its_topic_in_both_payload_modes() {
    let dir = tempfile::tempdir().unwrap();
    let (b, pwfile) = broker(dir.path(), &[]);
    let cmd = format!("cat {}; exec cat >/dev/null", fixture().display());
    let sshd = Sshd::start(dir.path(), &cmd);
    let lines = fixture_lines();

    // Raw: byte for byte what gerrit printed.
    let sub = subscribe(&b, 26);
    let args = [ssh_args(&sshd), vec!["--payload".into(), "raw".into()]].concat();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let raw_bridge = bridge(&b, &pwfile, dir.path(), &refs);
    let got = messages(sub);
    drop(raw_bridge);
    assert_eq!(got.len(), 26, "{got:?}");
    for (i, (topic, payload)) in got.iter().enumerate() {
        assert_eq!(topic, EXPECTED_TOPICS[i], "line {}", i + 1);
        assert_eq!(payload, &lines[i], "raw payload of line {}", i + 1);
    }

    // CloudEvents, this time checking the host key by fingerprint.
    let sub = subscribe(&b, 26);
    let args = [
        vec![
            "--gerrit".to_owned(),
            sshd.url(),
            "--ssh-key".into(),
            sshd.user_key.to_string_lossy().into_owned(),
            "--host-key-fingerprint".into(),
            sshd.fingerprint.clone(),
        ],
        vec!["--payload".into(), "cloudevents".into()],
    ]
    .concat();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let ce_bridge = bridge(&b, &pwfile, dir.path(), &refs);
    let got = messages(sub);
    drop(ce_bridge);
    assert_eq!(got.len(), 26);
    let mut ids = std::collections::HashSet::new();
    for (i, (topic, payload)) in got.iter().enumerate() {
        assert_eq!(topic, EXPECTED_TOPICS[i], "line {}", i + 1);
        let text = String::from_utf8(payload.clone()).unwrap();
        let ev: serde_json::Value = serde_json::from_str(&text).unwrap();
        let original: serde_json::Value = serde_json::from_slice(&lines[i]).unwrap();
        assert_eq!(ev["specversion"], "1.0");
        assert_eq!(
            ev["type"],
            format!("gerrit.{}", original["type"].as_str().unwrap())
        );
        assert_eq!(
            ev["source"],
            format!("ssh://127.0.0.1:{}", sshd.addr.port())
        );
        assert_eq!(ev["datacontenttype"], "application/json");
        assert!(ev["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(ev["data"], original);
        // The event inside the envelope is gerrit's own text, escapes and all.
        let data_text = format!("\"data\":{}", String::from_utf8_lossy(&lines[i]));
        assert!(
            text.contains(&data_text),
            "line {}: data not verbatim",
            i + 1
        );
        assert!(
            ids.insert(ev["id"].as_str().unwrap().to_owned()),
            "ids are unique"
        );
        if let Some(n) = original.pointer("/change/number") {
            let n = n
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| n.to_string());
            assert_eq!(ev["subject"], n, "subject is the change number");
        }
        if let Some(t) = original["eventCreatedOn"].as_i64() {
            let want = time::OffsetDateTime::from_unix_timestamp(t)
                .unwrap()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            assert_eq!(ev["time"], want);
        }
    }
    assert!(dead_letters(dir.path()).is_empty());
}

#[test]
fn reconnects_after_the_connection_drops_halfway() {
    let dir = tempfile::tempdir().unwrap();
    let (b, pwfile) = broker(dir.path(), &[]);
    // First login: 13 events and half a line, then the connection drops.
    // Later logins: the other 13 events.
    let count = dir.path().join("logins");
    let script = dir.path().join("stream.sh");
    std::fs::write(
        &script,
        format!(
            "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}\n\
             if [ $n -eq 1 ]; then head -n 13 {f}; printf '{{\"type\":\"comment-added\",\"cha'; exit 0; fi\n\
             tail -n +14 {f}; exec cat >/dev/null\n",
            c = count.display(),
            f = fixture().display()
        ),
    )
    .unwrap();
    let sshd = Sshd::start(dir.path(), &format!("sh {}", script.display()));
    let sub = subscribe(&b, 26);
    let args = [ssh_args(&sshd), vec!["--payload".into(), "raw".into()]].concat();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let br = bridge(&b, &pwfile, dir.path(), &refs);
    let got = messages(sub);
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        EXPECTED_TOPICS.to_vec(),
        "every event once, in order"
    );
    br.wait_log("event stream ended");
    assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "2");
    // The half line is a dead letter, not an event.
    let dl = dead_letters(dir.path());
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert!(dl[0]["reason"].as_str().unwrap().contains("cut off"));
    assert_eq!(dl[0]["text"], "{\"type\":\"comment-added\",\"cha");
}

#[test]
fn malformed_lines_are_dead_lettered_and_the_rest_published() {
    let dir = tempfile::tempdir().unwrap();
    let (b, pwfile) = broker(dir.path(), &[]);
    let lines = fixture_lines();
    let mut input = Vec::new();
    let bad: Vec<(&[u8], &str)> = vec![
        (b"this is not json", "not JSON"),
        (
            b"{\"type\":\"comment-added\",\"bad\":\"\xff\xfe\"}",
            "not UTF-8",
        ),
        (b"[1,2,3]", "not an object"),
        (b"{\"change\":{\"number\":1}}", "no \"type\""),
    ];
    let big = format!(
        "{{\"type\":\"comment-added\",\"x\":\"{}\"}}",
        "y".repeat(5000)
    );
    for (i, line) in lines.iter().take(5).enumerate() {
        input.extend_from_slice(line);
        input.push(b'\n');
        if let Some((b, _)) = bad.get(i) {
            input.extend_from_slice(b);
            input.push(b'\n');
        }
    }
    input.extend_from_slice(big.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(&lines[5]);
    input.extend_from_slice(b"\n\n{\"type\":\"cut");
    let file = dir.path().join("replay.jsonl");
    std::fs::write(&file, &input).unwrap();

    let sub = subscribe(&b, 6);
    let mut br = bridge(
        &b,
        &pwfile,
        dir.path(),
        &[
            "--replay",
            file.to_str().unwrap(),
            "--payload",
            "raw",
            "--max-line-bytes",
            "4096",
        ],
    );
    let got = messages(sub);
    assert!(
        br.wait_exit().success(),
        "replay exits 0 when all is delivered:\n{}",
        br.logs()
    );
    let payloads: Vec<&Vec<u8>> = got.iter().map(|(_, p)| p).collect();
    assert_eq!(
        payloads,
        lines.iter().take(6).collect::<Vec<_>>(),
        "the good lines around the bad ones"
    );
    let dl = dead_letters(dir.path());
    let reasons: Vec<&str> = dl.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(dl.len(), 6, "{reasons:?}");
    for (i, (_, why)) in bad.iter().enumerate() {
        assert!(
            reasons[i].contains(why),
            "{} does not say {why}",
            reasons[i]
        );
    }
    assert!(reasons[4].contains("longer than --max-line-bytes"));
    assert_eq!(dl[4]["len"], big.len());
    assert_eq!(dl[4]["truncated"], true);
    assert!(reasons[5].contains("cut off"));
    // The non-UTF-8 line is kept exactly, in base64.
    assert!(dl[1]["base64"].is_string() && dl[1]["text"].is_null());
    assert_eq!(br.count_log("input is not an event"), 6, "each one logged");
}

/// Subscribes to the test bridge's status (the retained message first,
/// then every change) and returns the first one in `state`.
fn wait_status(b: &BrokerProc, state: &str) -> serde_json::Value {
    let (mut r, _) = Raw::connect(b.mqtt(), 4, &format!("status-{state}"), None);
    r.send(&firehose_testkit::subscribe(
        4,
        1,
        "firehose/status/gerrit/test",
        0,
    ));
    loop {
        let (t, body) = r.expect(&format!("the retained status to become {state}"));
        if t & 0xf0 != 0x30 {
            continue;
        }
        let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
        let v: serde_json::Value = serde_json::from_slice(&body[2 + tl..]).expect("status JSON");
        if v["state"] == state {
            return v;
        }
    }
}

#[test]
fn status_up_degraded_and_down_by_will() {
    let dir = tempfile::tempdir().unwrap();
    let (b, pwfile) = broker(dir.path(), &[]);
    let mut sshd = Sshd::start(dir.path(), "exec cat >/dev/null");
    let args = ssh_args(&sshd);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let br = bridge(&b, &pwfile, dir.path(), &refs);
    let up = wait_status(&b, "up");
    assert_eq!(up["upstream_connected"], true);
    assert!(up["version"]
        .as_str()
        .unwrap()
        .starts_with("firehose-gerrit "));
    // The source goes away (its sessions too): degraded, with the reason.
    sshd.stop();
    br.wait_log("cannot open the event stream");
    let degraded = wait_status(&b, "degraded");
    assert_eq!(degraded["upstream_connected"], false);
    assert!(degraded["upstream_error"].is_string(), "{degraded}");
    // The bridge dies without a goodbye: its will says down.
    br.signal("KILL");
    let down = wait_status(&b, "down");
    assert_eq!(down["state"], "down");
}

#[test]
fn host_key_mismatch_is_refused_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let (b, pwfile) = broker(dir.path(), &[]);
    let sshd = Sshd::start(dir.path(), "exec cat >/dev/null");
    let args = [
        "--gerrit".to_owned(),
        sshd.url(),
        "--ssh-key".into(),
        sshd.user_key.to_string_lossy().into_owned(),
        "--host-key-fingerprint".into(),
        "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let br = bridge(&b, &pwfile, dir.path(), &refs);
    br.wait_log("not the expected SHA256:AAAA");
    let st = wait_status(&b, "degraded");
    assert!(
        st["upstream_error"]
            .as_str()
            .unwrap()
            .contains(&sshd.fingerprint),
        "{st}"
    );
}

#[test]
fn sigterm_flushes_and_says_down() {
    let dir = tempfile::tempdir().unwrap();
    let (b, pwfile) = broker(dir.path(), &[]);
    let cmd = format!("cat {}; exec cat >/dev/null", fixture().display());
    let sshd = Sshd::start(dir.path(), &cmd);
    let sub = subscribe(&b, 26);
    let args = ssh_args(&sshd);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut br = bridge(&b, &pwfile, dir.path(), &refs);
    assert_eq!(messages(sub).len(), 26);
    br.signal("TERM");
    assert!(br.wait_exit().success(), "{}", br.logs());
    let down = wait_status(&b, "down");
    assert_eq!(down["counters"]["published"], 26, "{down}");
}

#[test]
fn the_event_types_the_fixtures_lack() {
    // reviewer-deleted, dropped-output (no project: germqtt's empty level)
    // and the old draft-published, shaped as cmd-stream-events.txt says.
    let dir = tempfile::tempdir().unwrap();
    let (b, pwfile) = broker(dir.path(), &[]);
    let lines = [
        r#"{"type":"reviewer-deleted","change":{"project":"openstack/nova","number":"5"},"reviewer":{"name":"R"},"eventCreatedOn":1700000000}"#,
        r#"{"type":"dropped-output","eventCreatedOn":1700000001}"#,
        r#"{"type":"draft-published","change":{"project":"openstack/nova","number":6},"patchSet":{"number":1}}"#,
    ];
    let file = dir.path().join("rare.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let sub = subscribe(&b, 3);
    let mut br = bridge(
        &b,
        &pwfile,
        dir.path(),
        &["--replay", file.to_str().unwrap(), "--payload", "raw"],
    );
    let got = messages(sub);
    assert!(br.wait_exit().success());
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        vec![
            "gerrit/openstack/nova/reviewer-deleted",
            "gerrit//dropped-output",
            "gerrit/openstack/nova/draft-published"
        ]
    );
}

#[test]
fn refused_credentials_stop_the_bridge_with_the_fix() {
    // A bridge whose password the broker refuses would otherwise retry
    // forever while its events pile up: it stops and says what to do.
    let dir = tempfile::tempdir().unwrap();
    let (b, _) = broker(dir.path(), &[]);
    let other = dir.path().join("wrong");
    std::fs::create_dir(&other).unwrap();
    let wrong = bridge_password_file(&other, "not-the-password");
    let file = dir.path().join("one.jsonl");
    std::fs::write(
        &file,
        r#"{"type":"dropped-output","eventCreatedOn":1700000001}"#.to_owned() + "\n",
    )
    .unwrap();
    let mut br = bridge(
        &b,
        &wrong,
        dir.path(),
        &["--replay", file.to_str().unwrap()],
    );
    assert!(!br.wait_exit().success());
    let logs = br.logs();
    assert!(
        logs.contains("bad user name or password") && logs.contains("--retry-auth"),
        "{logs}"
    );
}
