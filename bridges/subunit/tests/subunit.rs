//! firehose-subunit with real streams: a small unittest suite (passes, a
//! failure, an error, skips, an expected failure, an unexpected success)
//! run by a real `stestr` (in `target/subunit-venv`, which
//! `./scripts/test` creates), published through a real broker. The counts
//! equal python-subunit's own `subunit-stats` on the same stream; the raw
//! payload is the original worker's; `run -- stestr run` exits with
//! stestr's code; a stream that is not v2 is dead-lettered and published
//! as failed.

use std::path::{Path, PathBuf};
use std::process::Command;

use firehose_testkit::*;
use serde_json::Value;

const BRIDGE: (&str, &str) = ("subunit-bridge", "bridge-pw");

fn venv() -> PathBuf {
    let v = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/subunit-venv/bin");
    assert!(
        v.join("stestr").exists() && v.join("subunit-stats").exists(),
        "{} has no stestr or subunit-stats: run ./scripts/test, or: python3 -m venv target/subunit-venv && target/subunit-venv/bin/pip install stestr==4.2.1 python-subunit==1.4.6",
        v.display()
    );
    v
}

/// A test suite in `dir` with every kind of result.
fn suite(dir: &Path) {
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    std::fs::write(dir.join("tests/__init__.py"), "").unwrap();
    std::fs::write(
        dir.join(".stestr.conf"),
        "[DEFAULT]\ntest_path=./tests\ntop_dir=./\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("tests/test_mix.py"),
        r#"import unittest


class TestMix(unittest.TestCase):
    def test_passes(self):
        self.assertEqual(1, 1)

    def test_passes_too(self):
        pass

    def test_fails(self):
        self.assertEqual(1, 2, "one is not two")

    def test_errors(self):
        raise RuntimeError("boom")

    @unittest.skip("not on this platform")
    def test_skipped(self):
        pass

    @unittest.expectedFailure
    def test_expected_failure(self):
        self.assertTrue(False)

    @unittest.expectedFailure
    def test_unexpected_success(self):
        pass
"#,
    )
    .unwrap();
}

/// `stestr run` in `dir` (its exit code), then its stream.
fn stestr_stream(dir: &Path) -> (i32, Vec<u8>) {
    let stestr = venv().join("stestr");
    let out = run(Command::new(&stestr).arg("run").current_dir(dir));
    let code = out.status.code().expect("stestr's exit code");
    let last = run(Command::new(&stestr)
        .args(["last", "--subunit"])
        .current_dir(dir));
    assert!(last.status.success(), "stestr last --subunit");
    (code, last.stdout)
}

/// subunit-stats on `stream`: (total, passed, failed, skipped).
fn subunit_stats(stream: &[u8]) -> (u64, u64, u64, u64) {
    use std::io::Write;
    let mut child = Command::new(venv().join("subunit-stats"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("subunit-stats");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stream)
        .expect("feed subunit-stats");
    let out = child.wait_with_output().expect("subunit-stats output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let n = |label: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(label))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{label} in {text}"))
    };
    (
        n("Total tests:"),
        n("Passed tests:"),
        n("Failed tests:"),
        n("Skipped tests:"),
    )
}

fn bridge(dir: &Path, b: &BrokerProc, extra: &[&str]) -> Command {
    let pw = bridge_password_file(dir, BRIDGE.1);
    let mut c = Command::new(bin("firehose-subunit"));
    c.arg("run")
        .args(["--broker", &format!("mqtt://{}@{}", BRIDGE.0, b.mqtt())])
        .arg("--password-file")
        .arg(&pw)
        .arg("--dead-letter")
        .arg(dir.join("dl.jsonl"))
        .args(["--project", "openstack/nova", "--change", "123456"])
        .args(["--topic-root", "gearman-subunit/worker-1"])
        .args(extra);
    c
}

fn one_message(sub: Sub) -> (String, Vec<u8>) {
    let (_, text, _) = sub.output();
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no message: {text:?}"));
    let (topic, payload) = line.split_once(' ').expect("topic payload");
    (topic.to_owned(), payload.as_bytes().to_vec())
}

#[test]
fn a_real_stream_is_counted_as_subunit_stats_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    suite(dir.path());
    let (code, stream) = stestr_stream(dir.path());
    assert_ne!(code, 0, "the suite fails on purpose");
    let stream_path = dir.path().join("run.subunit");
    std::fs::write(&stream_path, &stream).unwrap();
    let (total, passed, failed, skipped) = subunit_stats(&stream);
    assert_eq!(total, 7, "subunit-stats sees the seven tests");

    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let topic = "gearman-subunit/worker-1/openstack/nova/123456";
    let sub = Sub::spawn(
        &b,
        &["-t", "gearman-subunit/#", "-v", "-C", "1", "-W", "60"],
    );
    let out = run(bridge(dir.path(), &b, &["--file"]).arg(&stream_path));
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    let (t, payload) = one_message(sub);
    assert_eq!(t, topic);
    let ce: Value = serde_json::from_slice(&payload).expect("JSON");
    assert_eq!(ce["type"], "subunit.run.success", "{ce}");
    assert_eq!(ce["subject"], "123456");
    let data = &ce["data"];
    let count = |s: &str| data["counts"][s].as_u64().unwrap_or(0);
    assert_eq!(data["tests"].as_u64(), Some(total), "{data}");
    assert_eq!(count("fail"), failed, "{data}");
    assert_eq!(count("skip"), skipped, "{data}");
    assert_eq!(total - count("fail") - count("skip"), passed, "{data}");
    assert_eq!(count("xfail"), 1, "{data}");
    assert_eq!(count("uxsuccess"), 1, "{data}");
    let failures = data["failures"].as_array().expect("failures");
    let ids: Vec<&str> = failures.iter().filter_map(|f| f["id"].as_str()).collect();
    assert!(
        ids.iter().any(|i| i.ends_with("test_fails"))
            && ids.iter().any(|i| i.ends_with("test_errors")),
        "{ids:?}"
    );
    let fails = failures
        .iter()
        .find(|f| f["id"].as_str().is_some_and(|i| i.ends_with("test_fails")))
        .expect("test_fails");
    assert!(
        fails["details"]["traceback"]
            .as_str()
            .is_some_and(|t| t.contains("one is not two")),
        "{fails}"
    );
    assert!(data["duration_s"].as_f64().is_some(), "{data}");

    // Raw: the original worker's payload, byte for byte.
    let sub = Sub::spawn(
        &b,
        &["-t", "gearman-subunit/#", "-v", "-C", "1", "-W", "60"],
    );
    let out = run(bridge(
        dir.path(),
        &b,
        &[
            "--payload",
            "raw",
            "--build-uuid",
            "5f0c9e",
            "--source-url",
            "https://logs.example.org/x/testrepository.subunit",
            "--file",
        ],
    )
    .arg(&stream_path));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (t, payload) = one_message(sub);
    assert_eq!(t, topic);
    assert_eq!(
        String::from_utf8(payload).unwrap(),
        r#"{"status": "success", "build_uuid": "5f0c9e", "source_url": "https://logs.example.org/x/testrepository.subunit"}"#
    );
}

#[test]
fn run_wraps_stestr_and_exits_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    suite(dir.path());
    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let sub = Sub::spawn(
        &b,
        &["-t", "gearman-subunit/#", "-v", "-C", "1", "-W", "60"],
    );
    let out = run(bridge(dir.path(), &b, &["--"])
        .arg(venv().join("stestr"))
        .arg("run")
        .current_dir(dir.path()));
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stestr's own exit code: {log}");
    let (_, payload) = one_message(sub);
    let ce: Value = serde_json::from_slice(&payload).expect("JSON");
    assert_eq!(ce["data"]["tests"], 7, "{ce}");
    assert_eq!(ce["data"]["counts"]["fail"], 2, "{ce}");
}

#[test]
fn a_stream_that_is_not_v2_is_dead_lettered_and_published_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("v1.subunit");
    std::fs::write(&v1, "test: tests.a\nsuccess: tests.a\n").unwrap();
    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let sub = Sub::spawn(
        &b,
        &["-t", "gearman-subunit/#", "-v", "-C", "1", "-W", "60"],
    );
    let out = run(bridge(dir.path(), &b, &["--file"]).arg(&v1));
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "a bad stream is input, not a crash: {log}"
    );
    let (_, payload) = one_message(sub);
    let ce: Value = serde_json::from_slice(&payload).expect("JSON");
    assert_eq!(ce["type"], "subunit.run.failed", "{ce}");
    assert!(
        ce["data"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("subunit v1")),
        "{ce}"
    );
    let dl = std::fs::read_to_string(dir.path().join("dl.jsonl")).expect("the dead letter");
    assert!(dl.contains("subunit v1"), "{dl}");
    assert!(log.contains("dead-lettered"), "{log}");
}

#[test]
fn the_sample_config_checks_and_shows_every_key() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/subunit.toml");
    let (_, text) = outcome(
        Command::new(bin("firehose-subunit"))
            .args(["run", "--file", "-", "--change", "1", "--config"])
            .arg(&sample)
            .arg("--check-config"),
    );
    assert_sample_checks(&text);
    let (ok, text) = outcome(Command::new(bin("firehose-subunit")).args(["run", "--check-config"]));
    assert!(!ok && text.contains("give --file PATH"), "{text}");
    let (ok, text) = outcome(Command::new(bin("firehose-subunit")).args([
        "run",
        "--file",
        "-",
        "--project",
        "openstack/nova",
        "--check-config",
    ]));
    assert!(!ok && text.contains("give --change"), "{text}");

    let text = std::fs::read_to_string(&sample).unwrap();
    let full =
        firehose_bridge::config::FileConfig::<firehose_subunit::config::SubunitConfig>::default();
    let mut known = json_keys(&serde_json::to_value(&full).unwrap());
    // A free-form table: the sample shows one field.
    known.insert("source.fields".into());
    assert_sample_complete("deploy/subunit.toml", &text, &known);
}
