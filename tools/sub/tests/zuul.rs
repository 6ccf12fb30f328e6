//! Zuul's reports on the firehose, end to end: published the way Zuul's
//! MQTT reporter publishes them (paho-mqtt, `json.dumps` of the documented
//! fields, the topic template formatted per item, QoS 1) as the `zuul`
//! user of `deploy/broker.acl`, then read typed by `firehose-sub --type
//! zuul.buildset.failure`, a firehose-notify rule on the same type, and
//! firehose-history (by type, change and project). The start report has
//! builds without results; the success and failure reports have them.

use std::path::Path;
use std::process::{Command, Stdio};

use firehose_testkit::*;
use serde_json::Value;

const ZUUL: (&str, &str) = ("zuul", "zuul-pw");

/// Three reports of one item, as Zuul's reporter builds them (its
/// documented schema: `docs/subunit.md`), published on the README's topic
/// template.
const REPORTER: &str = r#"
import json, sys, time
import paho.mqtt.client as mqtt

port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
topic = "zuul/{tenant}/{pipeline}/{project}/{change}"
item = {"uuid": "9f1c0e2a", "tenant": "openstack", "pipeline": "check",
        "project": "openstack/nova", "branch": "master",
        "change_url": "https://review.example.org/c/openstack/nova/+/123456",
        "change": "123456", "patchset": "3", "commit_id": "2db20c7fb26adf9ac9936a9e750ced9b4854a964",
        "owner": "someone", "ref": "refs/changes/56/123456/3",
        "zuul_ref": "Zf8b3d7cd34f54cb396b488226589db8f",
        "trigger_time": 1700000000.1, "enqueue_time": 1700000001.2}
jobs = [("tox-py311", True), ("tempest-full", False)]

def report(action, message, results):
    m = dict(item, action=action, message=message, timestamp=time.time())
    builds = []
    for (name, voting), result in zip(jobs, results):
        b = {"job_name": name, "voting": voting}
        if result is not None:
            b.update({"uuid": "b-" + name, "start_time": 1700000100.0, "end_time": 1700000900.0,
                      "execute_time": 1700000050.0,
                      "log_url": "https://logs.example.org/56/123456/3/check/%s/" % name,
                      "web_url": "https://zuul.example.org/t/openstack/build/b-" + name,
                      "result": result})
        builds.append(b)
    m["buildset"] = {"uuid": "f8b3d7cd34f54cb396b488226589db8f", "builds": builds}
    if action != "start":
        m["buildset"]["result"] = "SUCCESS" if action == "success" else "FAILURE"
    return m

c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="zuul-test-reporter")
c.username_pw_set(user, password)
c.connect("127.0.0.1", port, 60)
c.loop_start()
for m in [report("start", "Starting check jobs.", [None, None]),
          report("success", "Build succeeded.", ["SUCCESS", "SUCCESS"]),
          report("failure", "Build failed.", ["SUCCESS", "FAILURE"])]:
    t = topic.format(tenant=m["tenant"], pipeline=m["pipeline"], project=m["project"],
                     change=m["change"])
    c.publish(t, json.dumps(m), qos=1).wait_for_publish(30)
    print("published", m["action"], t, flush=True)
c.loop_stop()
c.disconnect()
"#;

fn acl() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/broker.acl")
        .to_string_lossy()
        .into_owned()
}

fn notify(dir: &Path, b: &BrokerProc) -> (Proc, std::path::PathBuf) {
    let out = dir.join("failures.txt");
    let config = format!(
        "[broker]\nurl = \"mqtt://127.0.0.1:{}\"\n\n[[target]]\nname = \"file\"\ntype = \"file\"\npath = \"{}\"\nline = \"{{{{ type }}}} {{{{ subject }}}} {{{{ data.project }}}}\"\n\n[[rule]]\ntopics = [\"zuul/#\"]\ntype = \"zuul.buildset.failure\"\ntargets = [\"file\"]\n",
        b.port(),
        out.display()
    );
    let path = private_file(&dir.join("notify.toml"), &config);
    let before = b.metric("firehose_broker_subscriptions");
    let p = Proc::spawn(
        "firehose-notify",
        Command::new(bin("firehose-notify"))
            .arg("--config")
            .arg(&path)
            .args(["--metrics", "127.0.0.1:0"])
            .env("FIREHOSE_LOG", "info"),
    );
    p.wait_log("firehose-notify started");
    b.wait_metric("firehose_broker_subscriptions", before + 1);
    (p, out)
}

#[test]
fn zuul_reports_are_typed_for_sub_notify_and_history() {
    let python = require_paho();
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[ZUUL], &["--acl", &acl()]);
    let db = format!("sqlite:{}", dir.path().join("history.db").display());
    let history = HistoryProc::start(&format!("mqtt://{}", b.mqtt()), &db, "127.0.0.1:0", &[]);
    let (notify, failures) = notify(dir.path(), &b);

    let before = b.metric("firehose_broker_subscriptions");
    let sub = Command::new(bin("firehose-sub"))
        .args(["-p", &b.port(), "-h", "127.0.0.1", "-t", "zuul/#"])
        .args([
            "--type",
            "zuul.buildset.failure",
            "--json",
            "-C",
            "1",
            "-W",
            "60",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn firehose-sub");
    b.wait_metric("firehose_broker_subscriptions", before + 1);

    let out = run(Command::new(&python).args(["-c", REPORTER, &b.port(), ZUUL.0, ZUUL.1]));
    assert!(
        out.status.success(),
        "the reporter: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // firehose-sub: only the failure (published last) passes --type.
    let (sub_out, timed_out) = finish(sub, WAIT);
    assert!(!timed_out);
    let text = String::from_utf8_lossy(&sub_out.stdout).into_owned();
    assert_eq!(sub_out.status.code(), Some(0), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let ev: Value = serde_json::from_str(lines[0]).expect("--json");
    assert_eq!(ev["type"], "zuul.buildset.failure", "{ev}");
    assert_eq!(ev["subject"], "123456");
    assert_eq!(ev["topic"], "zuul/openstack/check/openstack/nova/123456");
    assert!(
        ev["time"].as_str().is_some_and(|t| t.starts_with("20")),
        "{ev}"
    );
    assert_eq!(ev["data"]["buildset"]["builds"][1]["result"], "FAILURE");

    // notify: one line, for the failure.
    wait_until(
        WAIT,
        || std::fs::read_to_string(&failures).is_ok_and(|t| !t.is_empty()),
        || format!("notify's file: {}", notify.logs()),
    );
    let lines = std::fs::read_to_string(&failures).unwrap();
    assert_eq!(
        lines.trim_end(),
        "zuul.buildset.failure 123456 openstack/nova",
        "{lines}"
    );

    // history: typed, indexed by change and project.
    let get = |q: &str| -> Vec<Value> {
        let (status, body) = http_get(history.http, &format!("/v1/events?{q}"));
        assert_eq!(status, 200, "{q}: {body}");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        v["events"].as_array().cloned().unwrap_or_default()
    };
    let all = poll(
        WAIT,
        || Some(get("change=123456")).filter(|e| e.len() == 3),
        || format!("three reports in history: {}", history.proc_.logs()),
    );
    let kinds: Vec<&str> = all.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "zuul.buildset.start",
            "zuul.buildset.success",
            "zuul.buildset.failure"
        ]
    );
    assert_eq!(get("project=openstack%2Fnova").len(), 3);
    // The SDK's typed reports, from the bytes as stored: the start report's
    // builds have no results, the later ones do.
    let typed: Vec<firehose::zuul::ZuulReport> = get("change=123456&payload=true")
        .iter()
        .map(|e| {
            let ev = firehose::reader::decode(
                e["topic"].as_str().expect("topic"),
                e["payload"].as_str().expect("payload").as_bytes(),
                false,
            );
            match ev.body {
                firehose::reader::Body::Zuul(z) => *z,
                other => panic!("not a typed report: {other:?}"),
            }
        })
        .collect();
    use firehose::zuul::Action;
    let actions: Vec<Action> = typed.iter().map(|z| z.kind()).collect();
    assert_eq!(actions, [Action::Start, Action::Success, Action::Failure]);
    assert!(typed[0]
        .buildset
        .builds
        .iter()
        .all(|b| !b.finished() && b.uuid.is_none()));
    assert_eq!(typed[0].buildset.result, None);
    assert!(typed[1]
        .buildset
        .builds
        .iter()
        .all(|b| b.finished() && b.log_url.is_some()));
    assert_eq!(typed[1].buildset.result.as_deref(), Some("SUCCESS"));
    let failed: Vec<&str> = typed[2]
        .failed_builds()
        .map(|b| b.job_name.as_str())
        .collect();
    assert_eq!(failed, ["tempest-full"]);
    assert!(!typed[2].buildset.builds[1].voting);
    let failed = get("type=zuul.buildset.failure");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["subject"], "123456");
}
