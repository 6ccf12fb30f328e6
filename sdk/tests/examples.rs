//! Every Rust example in `examples/` against a broker fed by the bridges'
//! own replay sources (firehose-gerrit and firehose-nova `--replay`), and
//! the Python paho-mqtt example: each prints what it should.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use firehose_testkit::*;

use firehose_testkit::logins::PUBLISHER as BRIDGE;

fn example(name: &str) -> PathBuf {
    let p = bin("firehose-gerrit")
        .parent()
        .expect("target dir")
        .join("examples")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: cargo test builds the examples (or: cargo build -p firehose --examples)",
        p.display()
    );
    p
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// Starts a reader and waits until the broker has its `subs` subscriptions.
fn start(b: &BrokerProc, cmd: &mut Command, subs: u64) -> Child {
    let before = b.metric("firehose_broker_subscriptions");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the example");
    wait_until(
        WAIT,
        || {
            b.metric("firehose_broker_subscriptions") >= before + subs
                || child.try_wait().expect("try_wait").is_some()
        },
        || "the example to subscribe".into(),
    );
    child
}

fn lines(child: Child) -> Vec<String> {
    let (out, killed) = finish(child, WAIT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !killed && out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

/// Replays a JSON-lines file through a bridge into the broker.
fn replay(b: &BrokerProc, dir: &Path, bridge: &str, file: &Path, extra: &[&str]) {
    let out = run(Command::new(bin(bridge))
        .arg("--replay")
        .arg(file)
        .args(["--broker", &format!("mqtt://{}@{}", BRIDGE.0, b.mqtt())])
        .arg("--password-file")
        .arg(bridge_password_file(dir, BRIDGE.1))
        .args(["--instance", "examples"])
        .arg("--dead-letter")
        .arg(dir.join(format!("{bridge}.dl")))
        .args(extra));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rust_and_python_examples_print_what_they_should() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let url = format!("mqtt://{}", b.mqtt());
    let gerrit = fixtures().join("gerrit/stream-events.jsonl");
    let n = std::fs::read_to_string(&gerrit)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .count();
    // Nova bodies, one per line, as firehose-nova --replay reads them.
    let bodies = dir.path().join("nova.jsonl");
    let mut text = String::new();
    for l in std::fs::read_to_string(fixtures().join("nova/legacy.jsonl"))
        .unwrap()
        .lines()
    {
        let m: serde_json::Value = serde_json::from_str(l).unwrap();
        text.push_str(m["body"].as_str().unwrap());
        text.push('\n');
    }
    std::fs::write(&bodies, text).unwrap();

    let all = start(
        &b,
        Command::new(example("subscribe_all")).args([&url, "--count", &n.to_string()]),
        1,
    );
    let votes = start(
        &b,
        Command::new(example("gerrit_negative_votes")).args([&url, "--count", "1"]),
        1,
    );
    let pool = start(
        &b,
        Command::new(example("worker_pool"))
            .env("WORKERS", "2")
            .args([&url, "--count", &n.to_string()]),
        2,
    );
    let lifecycle = start(
        &b,
        Command::new(example("nova_lifecycle")).args([&url, "--count", "3"]),
        2,
    );
    // Status: the nova replay's bridge says up, then down.
    let status = start(
        &b,
        Command::new(example("status_watcher")).args([&url, "--count", "2"]),
        2,
    );
    let python = start(
        &b,
        Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/subscriber.py"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &b.port(),
                "--topic",
                "gerrit/#",
                "--count",
                "3",
            ]),
        1,
    );

    replay(
        &b,
        dir.path(),
        "firehose-gerrit",
        &gerrit,
        &["--payload", "raw"],
    );
    replay(
        &b,
        dir.path(),
        "firehose-nova",
        &bodies,
        &[
            "--amqp",
            "amqp://nova@rabbit.example/%2f",
            "--deployment",
            "cell1",
        ],
    );

    // Everything: the gerrit events and the bridge's retained status.
    let out = lines(all);
    assert_eq!(out.len(), n);
    assert!(
        out.iter()
            .all(|l| l.starts_with("gerrit.") || l.starts_with("firehose.status firehose/status/")),
        "{out:?}"
    );
    let kinds: std::collections::BTreeSet<&str> =
        out.iter().filter_map(|l| l.split(' ').next()).collect();
    assert!(kinds.len() > 10, "typed events of many kinds: {kinds:?}");
    let out = lines(votes);
    assert!(
        out[0].contains("Code-Review -") || out[0].contains(" -"),
        "{out:?}"
    );
    let out = lines(pool);
    assert_eq!(out.len(), n);
    assert!(
        out.iter().any(|l| l.starts_with("worker 0:"))
            && out.iter().any(|l| l.starts_with("worker 1:")),
        "{out:?}"
    );
    let out = lines(lifecycle);
    assert!(
        out.iter()
            .all(|l| l.contains("compute.instance") || l.contains("built")),
        "{out:?}"
    );
    assert!(
        out.iter()
            .any(|l| l.starts_with("e6e990ec-e277-44bd-a78c-34d8c56bf340 ")),
        "{out:?}"
    );
    let out = lines(status);
    assert!(
        out.iter()
            .any(|l| l.starts_with("bridge gerrit/examples:")
                || l.starts_with("bridge nova/examples:")),
        "{out:?}"
    );
    let out = lines(python);
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(
        out.iter()
            .all(|l| l.starts_with("gerrit.") && l.contains(" gerrit/")),
        "{out:?}"
    );
}

/// The browser example, served from `examples/browser/` (MQTT.js vendored
/// from npm), in headless Chromium (playwright-core): it shows an event
/// published while it is open, typed.
#[test]
fn browser_example_shows_a_live_event() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/browser");
    assert!(
        browser_dir
            .join("node_modules/mqtt/dist/mqtt.min.js")
            .exists()
            && browser_dir.join("node_modules/playwright-core").exists(),
        "run: npm ci --prefix examples/browser (./scripts/test does)"
    );
    let chromium = require("chromium", "chromium");
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let port = free_port();
    let _http = Proc::spawn(
        "http.server",
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
                "--directory",
            ])
            .arg(&browser_dir),
    );
    _http.wait_listening(port);
    let ws = b.ws.expect("ws listener");
    let page = format!("http://127.0.0.1:{port}/index.html?url=ws://{ws}/mqtt&topic=gerrit/%23");
    let shot = dir.path().join("browser.png");
    let mut check = Proc::spawn(
        "chromium",
        Command::new("node")
            .arg(browser_dir.join("check.mjs"))
            .env("PAGE_URL", &page)
            .env("CHROMIUM", &chromium)
            .env("EXPECT", "gerrit/openstack/nova/comment-added")
            .env("SCREENSHOT", &shot),
    );
    wait_until(
        Duration::from_secs(60),
        || check.stdout_lines().iter().any(|l| l == "ready"),
        || format!("the page to subscribe: {}", check.logs()),
    );
    let mut p = Publisher::new(b.mqtt(), BRIDGE);
    p.publish(
        "gerrit/openstack/nova/comment-added",
        br#"{"type":"comment-added","change":{"project":"openstack/nova","number":3033}}"#,
        false,
    );
    wait_until(
        WAIT,
        || check.stdout_lines().len() >= 2,
        || format!("the event on the page: {}", check.logs()),
    );
    assert!(check.wait_exit().success(), "{}", check.logs());
    let shown = check.stdout_lines()[1].clone();
    assert!(
        shown.contains("gerrit.comment-added") && shown.contains("3033"),
        "{shown}"
    );
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 0)
            .unwrap_or(false),
        "a screenshot"
    );
}

/// The mqttwarn example (`examples/mqttwarn/firehose.ini`, mqttwarn from
/// PyPI in `target/mqttwarn-venv`): merges from a replayed gerrit bridge
/// and a Launchpad bug land in its file, nothing else.
#[test]
fn mqttwarn_example_notifies_merges_and_bugs() {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/mqttwarn-venv/bin/mqttwarn");
    assert!(
        venv.exists(),
        "{} is missing: run ./scripts/test, or: python3 -m venv target/mqttwarn-venv && target/mqttwarn-venv/bin/pip install mqttwarn==0.36.1",
        venv.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mqttwarn");
    let out = dir.path().join("events.log");
    let ini = std::fs::read_to_string(example.join("firehose.ini"))
        .unwrap()
        .replace("port      = 1883", &format!("port      = {}", b.port()))
        .replace("/tmp/firehose-events.log", out.to_str().unwrap());
    std::fs::write(dir.path().join("firehose.ini"), ini).unwrap();
    std::fs::copy(example.join("firehose.py"), dir.path().join("firehose.py")).unwrap();
    let before = b.metric("firehose_broker_subscriptions");
    let _mqttwarn = Proc::spawn(
        "mqttwarn",
        Command::new(&venv)
            .arg("--config-file")
            .arg(dir.path().join("firehose.ini"))
            .current_dir(dir.path()),
    );
    b.wait_metric("firehose_broker_subscriptions", before + 2);
    let gerrit = fixtures().join("gerrit/stream-events.jsonl");
    replay(&b, dir.path(), "firehose-gerrit", &gerrit, &[]);
    let mut p = Publisher::new(b.mqtt(), BRIDGE);
    p.publish(
        "launchpad/nova/bug/123",
        br#"{"event-type":"bug","bug-number":"123","project":"nova"}"#,
        false,
    );
    let want = [
        "gerrit/qt/qtbase/change-merged merged",
        "gerrit/snix/change-merged merged",
        "launchpad/nova/bug/123 bug",
    ];
    wait_until(
        WAIT,
        || {
            let got = std::fs::read_to_string(&out).unwrap_or_default();
            want.iter().all(|w| got.contains(w))
        },
        || format!("mqttwarn's file: {:?}", std::fs::read_to_string(&out)),
    );
    let got = std::fs::read_to_string(&out).unwrap();
    assert_eq!(got.lines().count(), 3, "only merges and the bug: {got}");
}

/// The Python example names every kind of message as the SDK does: the
/// demo's events (gerrit, nova, launchpad, ansible, raw), the original
/// ansible plugin's payloads, and a status, a subunit run, a Zuul report,
/// a CloudEvents envelope, a base topic and what is not an event.
#[test]
fn the_python_example_names_types_as_the_sdk_does() {
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for file in ["demo/events.jsonl", "ansible/firehose-examples.jsonl"] {
        for line in fixture_lines(file) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let payload = match &v["payload"] {
                serde_json::Value::String(s) => s.clone().into_bytes(),
                other => other.to_string().into_bytes(),
            };
            cases.push((v["topic"].as_str().unwrap().to_owned(), payload));
        }
    }
    let status = serde_json::to_string(&firehose::status::Status {
        state: firehose::status::State::Up,
        version: "firehose-gerrit 0".into(),
        host: "h".into(),
        started: "2026-01-01T00:00:00Z".into(),
        upstream_connected: true,
        upstream_error: None,
        last_event: None,
        counters: Default::default(),
    })
    .unwrap();
    for (topic, payload) in [
        ("firehose/status/gerrit/h", status.as_str()),
        (
            "gearman-subunit/worker1/openstack/nova/123456",
            r#"{"status": "success", "build_uuid": "b", "source_url": "u"}"#,
        ),
        (
            "zuul/openstack/nova/check",
            r#"{"action":"Failure","pipeline":"check","change":"1"}"#,
        ),
        (
            "site1/gerrit/openstack/nova/comment-added",
            r#"{"type":"comment-added","change":{"project":"openstack/nova","number":1}}"#,
        ),
        (
            "anything",
            r#"{"specversion":"1.0","id":"1","source":"s","type":"custom.kind","data":{}}"#,
        ),
        ("gerrit/x/y", "not json"),
        ("elsewhere/x", r#"{"a":1}"#),
    ] {
        cases.push((topic.to_owned(), payload.as_bytes().to_vec()));
    }
    let input: String = cases
        .iter()
        .map(|(t, p)| {
            serde_json::json!({"topic": t, "payload": String::from_utf8_lossy(p)}).to_string()
                + "\n"
        })
        .collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python");
    let mut child = Command::new(require("python3", "python3"))
        .current_dir(&dir)
        .args([
            "-c",
            "import json, sys\n\
             from subscriber import event_type\n\
             for line in sys.stdin:\n    \
             m = json.loads(line)\n    \
             print(event_type(m['topic'], m['payload'].encode()))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let python: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(python.len(), cases.len());
    let mut kinds = std::collections::BTreeSet::new();
    for ((topic, payload), py) in cases.iter().zip(&python) {
        let sdk = firehose::reader::decode(topic, payload, false).kind;
        assert_eq!(py, &sdk, "{topic}: {}", String::from_utf8_lossy(payload));
        kinds.insert(sdk.split('.').next().unwrap_or_default().to_owned());
    }
    for family in [
        "gerrit",
        "nova",
        "launchpad",
        "ansible",
        "firehose",
        "subunit",
        "zuul",
        "custom",
        "mqtt",
    ] {
        assert!(kinds.contains(family), "{family} in {kinds:?}");
    }
}
