//! firehose-subunit with real streams: a small unittest suite (passes, a
//! failure, an error, skips, an expected failure, an unexpected success)
//! run by a real `stestr` (in `target/subunit-venv`, which
//! `./scripts/test` creates), published through a real broker. The counts
//! equal python-subunit's own `subunit-stats` on the same stream; the raw
//! payload is the original worker's; `run -- stestr run` exits with
//! stestr's code; a stream that is not v2 is dead-lettered and published
//! as failed; as a Gearman worker (Debian's gearmand, OpenStack's gear as
//! the client) it does the original's jobs, and a job whose message the
//! broker never took is done again by the next worker, not lost. With
//! `--per-test failures` each failed test has a typed message of its own;
//! a gearmand restart is survived.

use std::path::{Path, PathBuf};
use std::process::Command;

use firehose_testkit::*;
use serde_json::Value;

use firehose_testkit::logins::SUBUNIT as BRIDGE;

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
    let out = run_job(Command::new(&stestr).arg("run").current_dir(dir));
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
fn per_test_messages_come_before_their_run_and_read_back_typed() {
    let dir = tempfile::tempdir().unwrap();
    suite(dir.path());
    let (_, stream) = stestr_stream(dir.path());
    let stream_path = dir.path().join("run.subunit");
    std::fs::write(&stream_path, &stream).unwrap();
    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);

    // failures: test_fails and test_errors (fail), test_unexpected_success
    // (uxsuccess); then the run.
    let sub = Sub::spawn(
        &b,
        &["-t", "gearman-subunit/#", "-v", "-C", "4", "-W", "60"],
    );
    let out = run(bridge(dir.path(), &b, &["--per-test", "failures", "--file"]).arg(&stream_path));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, text, _) = sub.output();
    let events: Vec<firehose::reader::Event> = text
        .lines()
        .map(|l| {
            let (t, p) = l.split_once(' ').expect("topic payload");
            firehose::reader::decode(t, p.as_bytes(), false)
        })
        .collect();
    assert_eq!(events.len(), 4, "{text}");
    let run_ev = events.last().expect("the run");
    assert_eq!(
        run_ev.kind, "subunit.run.success",
        "the run comes last: {text}"
    );
    let mut kinds: Vec<&str> = events[..3].iter().map(|e| e.kind.as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "subunit.test.fail",
            "subunit.test.fail",
            "subunit.test.uxsuccess"
        ],
        "{text}"
    );
    for ev in &events[..3] {
        let firehose::reader::Body::SubunitTest(t) = &ev.body else {
            panic!("not a typed test: {ev:?}")
        };
        assert!(
            ev.topic
                .starts_with("gearman-subunit/worker-1/openstack/nova/123456/tests/"),
            "{}",
            ev.topic
        );
        assert_eq!(ev.subject.as_deref(), Some("123456"));
        assert_eq!(t.value["run_id"].as_str(), run_ev.id.as_deref());
        if t.test_id.ends_with("test_fails") {
            assert!(
                t.traceback()
                    .is_some_and(|tb| tb.contains("one is not two")),
                "{:?}",
                t.value
            );
        }
    }

    // The original had one message per run: raw mode refuses --per-test.
    let out = run(bridge(
        dir.path(),
        &b,
        &["--payload", "raw", "--per-test", "all", "--file"],
    )
    .arg(&stream_path));
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("--per-test needs --payload cloudevents"),
        "{log}"
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

/// A private gearmand on a free loopback port.
fn gearmand(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    (gearmand_on(dir, port), port)
}

/// A private gearmand on `port` (so a restart comes back on the same
/// address).
fn gearmand_on(dir: &Path, port: u16) -> Proc {
    let bin = require("/usr/sbin/gearmand", "gearman-job-server");
    let p = Proc::spawn(
        "gearmand",
        Command::new(bin)
            .args(["--listen", "127.0.0.1", "--port", &port.to_string()])
            .args(["--log-file", "none", "--verbose", "ERROR"])
            .current_dir(dir),
    );
    p.wait_listening(port);
    p
}

/// Python's http.server over `dir` on a free loopback port.
fn http_server(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let p = Proc::spawn(
        "http.server",
        Command::new(venv().join("python"))
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir),
    );
    p.wait_listening(port);
    (p, port)
}

/// A real stestr run's stream (the suite's), served over HTTP from
/// `dir/www`: the server, and the stream's URL.
fn served_stream(dir: &Path) -> (Proc, String) {
    let tests = dir.join("suite");
    suite(&tests);
    let (_, stream) = stestr_stream(&tests);
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("run.subunit"), &stream).unwrap();
    let (p, port) = http_server(&www);
    (p, format!("http://127.0.0.1:{port}/run.subunit"))
}

/// Submits `push-subunit` jobs with gear (OpenStack's Gearman library, as
/// the original's log processor used) and waits for each: one JSON line
/// per job, `{"complete", "failure", "exception"}`.
fn submit(port: u16, jobs: &[Value]) -> Vec<Value> {
    let out = run(&mut gear_client(port, jobs));
    assert!(
        out.status.success(),
        "gear client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    results(&String::from_utf8_lossy(&out.stdout))
}

fn results(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a job's result"))
        .collect()
}

/// The gear client of [`submit`], to run in the background.
fn gear_client(port: u16, jobs: &[Value]) -> Command {
    let script = r#"
import gear, json, sys, time
port, jobs = int(sys.argv[1]), json.loads(sys.argv[2])
c = gear.Client("firehose-test")
c.addServer("127.0.0.1", port)
c.waitForServer()
for args in jobs:
    job = gear.Job(b"push-subunit", json.dumps(args).encode())
    c.submitJob(job)
    end = time.time() + 120
    while not job.complete and time.time() < end:
        time.sleep(0.05)
    exc = job.exception
    print(json.dumps({"complete": job.complete, "failure": job.failure,
                      "exception": exc.decode() if isinstance(exc, bytes) else exc,
                      "warning": [d.decode() for d in job.data] if job.warning else None}), flush=True)
c.shutdown()
"#;
    let mut c = Command::new(venv().join("python"));
    c.args(["-c", script, &port.to_string()])
        .arg(serde_json::to_string(jobs).unwrap());
    c
}

fn job(url: &str, status: &str, change: u32) -> Value {
    serde_json::json!({
        "source_url": url,
        "retry": false,
        "event": {"fields": {
            "build_status": status, "build_uuid": format!("uuid-{change}"),
            "build_change": change, "project": "openstack/nova",
            "build_queue": "gate", "log_url": "http://logs.example.org/x/"
        }}
    })
}

#[test]
fn the_gearman_worker_does_the_originals_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let tests = dir.path().join("suite");
    suite(&tests);
    let (_, stream) = stestr_stream(&tests);
    let (total, _, failed, _) = subunit_stats(&stream);
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    // One stream only as .gz (fetched first), one only plain, one v1.
    let gz = Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip");
    {
        use std::io::Write;
        let mut gz = gz;
        gz.stdin.take().unwrap().write_all(&stream).unwrap();
        let out = gz.wait_with_output().unwrap();
        std::fs::write(www.join("zipped.subunit.gz"), out.stdout).unwrap();
    }
    std::fs::write(www.join("plain.subunit"), &stream).unwrap();
    std::fs::write(www.join("v1.subunit"), "test: a\nsuccess: a\n").unwrap();
    let (_http, http) = http_server(&www);
    let (_g, gport) = gearmand(dir.path());
    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let sub = Sub::spawn(
        &b,
        &["-t", "gearman-subunit/#", "-v", "-C", "4", "-W", "60"],
    );
    let pw = bridge_password_file(dir.path(), BRIDGE.1);
    let worker = Proc::spawn(
        "firehose-subunit worker",
        Command::new(bin("firehose-subunit"))
            .arg("worker")
            .args(["--broker", &format!("mqtt://{}@{}", BRIDGE.0, b.mqtt())])
            .arg("--password-file")
            .arg(&pw)
            .arg("--dead-letter")
            .arg(dir.path().join("dl.jsonl"))
            .args(["--topic-root", "gearman-subunit/worker-1"])
            .args(["--gearman", &format!("127.0.0.1:{gport}")]),
    );
    worker.wait_log("registered with gearmand");
    let url = |f: &str| format!("http://127.0.0.1:{http}/{f}");
    let results = submit(
        gport,
        &[
            job(&url("zipped.subunit"), "SUCCESS", 1),
            job(&url("plain.subunit"), "FAILURE", 2),
            job(&url("plain.subunit"), "ABORTED", 3),
            job(&url("v1.subunit"), "SUCCESS", 4),
            job(&url("missing.subunit"), "SUCCESS", 5),
        ],
    );
    let ok = |r: &Value| r["complete"] == true && r["failure"] == false;
    assert!(
        ok(&results[0]) && ok(&results[1]),
        "{results:?}\n{}",
        worker.logs()
    );
    assert!(
        ok(&results[2]),
        "an aborted build is completed: {results:?}"
    );
    assert!(
        results[3]["failure"] == true && results[4]["failure"] == true,
        "a bad stream and a missing one fail their jobs: {results:?}"
    );
    assert!(
        results[3]["warning"][0]
            .as_str()
            .is_some_and(|w| w.contains("subunit v1")),
        "WORK_FAIL's reason comes as WORK_WARNING: {results:?}"
    );
    assert!(
        results[4]["warning"][0]
            .as_str()
            .is_some_and(|e| e.contains("404")),
        "and WORK_EXCEPTION's (gear asks for no exceptions: gearmand gives it WORK_FAIL): {results:?}"
    );

    let (_, text, _) = sub.output();
    let got: Vec<(String, Value)> = text
        .lines()
        .map(|l| {
            let (t, p) = l.split_once(' ').expect("topic payload");
            (t.to_owned(), serde_json::from_str(p).expect("JSON"))
        })
        .collect();
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "gearman-subunit/worker-1/openstack/nova/1",
            "gearman-subunit/worker-1/openstack/nova/2",
            "gearman-subunit/worker-1/openstack/nova/4",
            "gearman-subunit/worker-1/openstack/nova/5",
        ],
        "no message for the aborted build"
    );
    for (_, ce) in &got[..2] {
        assert_eq!(ce["type"], "subunit.run.success", "{ce}");
        assert_eq!(ce["data"]["tests"].as_u64(), Some(total), "{ce}");
        assert_eq!(ce["data"]["counts"]["fail"].as_u64(), Some(failed), "{ce}");
        assert_eq!(ce["data"]["build"]["build_queue"], "gate", "{ce}");
    }
    assert_eq!(got[0].1["data"]["build_uuid"], "uuid-1");
    assert_eq!(got[2].1["type"], "subunit.run.failed");
    assert!(got[2].1["data"]["error"]
        .as_str()
        .unwrap()
        .contains("subunit v1"));
    assert_eq!(got[3].1["type"], "subunit.run.failed");
    assert!(
        got[3].1["data"]["error"].as_str().unwrap().contains("404"),
        "{}",
        got[3].1
    );
    let dl = std::fs::read_to_string(dir.path().join("dl.jsonl")).expect("dead letters");
    assert!(dl.contains("subunit v1"), "{dl}");
}

fn worker(dir: &Path, broker: &str, gearman: u16) -> Proc {
    let pw = bridge_password_file(dir, BRIDGE.1);
    Proc::spawn(
        "firehose-subunit worker",
        Command::new(bin("firehose-subunit"))
            .arg("worker")
            .args(["--broker", &format!("mqtt://{}@{broker}", BRIDGE.0)])
            .arg("--password-file")
            .arg(&pw)
            .arg("--dead-letter")
            .arg(dir.join("dl.jsonl"))
            .args(["--topic-root", "gearman-subunit/worker-1"])
            .args(["--gearman", &format!("127.0.0.1:{gearman}")]),
    )
}

#[test]
fn a_job_whose_message_the_broker_never_took_is_done_again_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (_http, url) = served_stream(dir.path());
    let (_g, gport) = gearmand(dir.path());
    // The broker is down: the first worker takes the job, publishes into
    // its spool and waits for a PUBACK that cannot come.
    let port = free_port();
    let broker = format!("127.0.0.1:{port}");
    let first = worker(dir.path(), &broker, gport);
    first.wait_log("registered with gearmand");
    let client = Proc::spawn(
        "gear client",
        &mut gear_client(gport, &[job(&url, "SUCCESS", 7)]),
    );
    first.wait_log("publishing a run");
    assert!(
        results(&client.stdout_lines().join("\n")).is_empty(),
        "no answer while the message is undelivered: {}",
        client.logs()
    );
    // It dies with the job unanswered; gearmand gives the job to the next
    // worker, which finds the broker up.
    first.signal("KILL");
    drop(first);
    let passwd = passwd_file(dir.path(), &[BRIDGE]);
    let b = BrokerProc::on_port(port, &passwd, &[]);
    let sub = Sub::spawn(
        &b,
        &["-t", "gearman-subunit/#", "-v", "-C", "1", "-W", "60"],
    );
    let second = worker(dir.path(), &broker, gport);
    let (_, text, _) = sub.output();
    assert!(
        text.starts_with("gearman-subunit/worker-1/openstack/nova/7 "),
        "the job was done again: {text}\n{}",
        second.logs()
    );
    wait_until(
        WAIT * 3,
        || !results(&client.stdout_lines().join("\n")).is_empty(),
        || format!("the job's answer: {}", client.logs()),
    );
    let r = &results(&client.stdout_lines().join("\n"))[0];
    assert!(r["complete"] == true && r["failure"] == false, "{r}");
}

#[test]
fn the_worker_comes_back_after_a_gearmand_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (_http, url) = served_stream(dir.path());
    let gport = free_port();
    let mut g = gearmand_on(dir.path(), gport);
    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let sub = Sub::spawn(
        &b,
        &["-t", "gearman-subunit/#", "-v", "-C", "2", "-W", "120"],
    );
    let w = worker(dir.path(), &b.mqtt().to_string(), gport);
    w.wait_log("registered with gearmand");
    let r = submit(gport, &[job(&url, "SUCCESS", 1)]);
    assert!(
        r[0]["complete"] == true && r[0]["failure"] == false,
        "{r:?}"
    );

    // gearmand goes away (its queue is in memory: nothing was pending) and
    // comes back on the same address; the worker registers again by itself.
    g.signal("TERM");
    g.wait_exit();
    drop(g);
    let _g = gearmand_on(dir.path(), gport);
    w.wait_log_count("registered with gearmand", 2);
    let r = submit(gport, &[job(&url, "SUCCESS", 2)]);
    assert!(
        r[0]["complete"] == true && r[0]["failure"] == false,
        "{r:?}"
    );

    let (_, text, _) = sub.output();
    let topics: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(t, _)| t))
        .collect();
    assert_eq!(
        topics,
        [
            "gearman-subunit/worker-1/openstack/nova/1",
            "gearman-subunit/worker-1/openstack/nova/2"
        ],
        "{}",
        w.logs()
    );
}
