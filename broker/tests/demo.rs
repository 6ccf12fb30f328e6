//! `--demo`: the bundled events are what the bridges print for the
//! repository's fixtures (raw payload mode), and a broker started with
//! `--demo` shows all four sources at once.

use std::path::{Path, PathBuf};
use std::process::Command;

use firehose_testkit::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `--print json` lines of one bridge run.
fn printed(cmd: &mut Command) -> Vec<String> {
    let out = run(cmd.args(["--payload", "raw", "--print", "json"]));
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// What the demo file must hold: the four sources interleaved, the shorter
/// ones repeated, so any four events in a row show all of them.
fn expected(dir: &Path) -> String {
    let fx = root().join("fixtures");
    let gerrit = printed(
        Command::new(bin("firehose-gerrit"))
            .arg("--replay")
            .arg(fx.join("gerrit/stream-events.jsonl")),
    );
    // Nova's fixtures are RabbitMQ deliveries: the bridge replays bodies.
    let bodies = dir.join("nova-bodies.jsonl");
    let mut text = String::new();
    for f in ["nova/versioned.jsonl", "nova/legacy.jsonl"] {
        for l in fixture_lines(f) {
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            text.push_str(v["body"].as_str().unwrap());
            text.push('\n');
        }
    }
    std::fs::write(&bodies, text).unwrap();
    let nova = printed(
        Command::new(bin("firehose-nova"))
            .args([
                "--amqp",
                "amqp://demo@localhost/%2f",
                "--deployment",
                "demo",
                "--replay",
            ])
            .arg(&bodies),
    );
    let maildir = dir.join("maildir");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    let mut mails: Vec<PathBuf> = std::fs::read_dir(fx.join("launchpad"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    mails.sort();
    for (i, m) in mails.iter().enumerate() {
        std::fs::copy(m, maildir.join("new").join(format!("{i:03}.demo"))).unwrap();
    }
    let launchpad = printed(
        Command::new(bin("firehose-launchpad"))
            .arg("--maildir")
            .arg(&maildir),
    );
    // The ansible plugin's published examples, as --print shows them.
    let ansible: Vec<String> = fixture_lines("ansible/firehose-examples.jsonl")
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let p = v["payload"].as_str().unwrap();
            let payload: serde_json::Value =
                serde_json::from_str(p).unwrap_or_else(|_| serde_json::Value::String(p.to_owned()));
            serde_json::json!({"topic": v["topic"], "retain": false, "payload": payload})
                .to_string()
        })
        .collect();
    let sources = [gerrit, nova, launchpad, ansible];
    assert!(sources.iter().all(|s| !s.is_empty()));
    let longest = sources.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = String::new();
    for i in 0..longest {
        for s in &sources {
            out.push_str(&s[i % s.len()]);
            out.push('\n');
        }
    }
    out
}

#[test]
fn the_demo_events_are_what_the_bridges_print() {
    let dir = tempfile::tempdir().unwrap();
    let want = expected(dir.path());
    let path = root().join("fixtures/demo/events.jsonl");
    if std::env::var_os("FIREHOSE_REGENERATE_DEMO").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "fixtures/demo/events.jsonl is stale: FIREHOSE_REGENERATE_DEMO=1 cargo test -p firehose-broker --test demo, then rebuild the broker"
    );
}

#[test]
fn demo_shows_all_four_sources_at_once() {
    let b = BrokerProc::start(&["--demo"]);
    // The demo's status first (retained), then one event of each source.
    let sub = Sub::spawn(&b, &["-t", "#", "-v", "-C", "5", "-W", "30"]);
    let (code, out, _) = sub.output();
    assert_eq!(code, 0, "{out}");
    let topics: Vec<&str> = out.lines().filter_map(|l| l.split(' ').next()).collect();
    for prefix in [
        "firehose/status/demo/",
        "gerrit/",
        "nova/demo/",
        "launchpad/",
        "ansible/playbook/",
    ] {
        assert!(
            topics.iter().any(|t| t.starts_with(prefix)),
            "{prefix} in {topics:?}"
        );
    }
    let status = out
        .lines()
        .find(|l| l.starts_with("firehose/status/demo/"))
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(status.split_once(' ').unwrap().1).unwrap();
    assert_eq!(json["state"], "up");
    // Readers of the SDK see typed events: nova's raw payload is read by topic.
    let nova = out.lines().find(|l| l.starts_with("nova/demo/")).unwrap();
    let (t, p) = nova.split_once(' ').unwrap();
    let ev = firehose::reader::decode(t, p.as_bytes(), false);
    assert!(ev.kind.starts_with("nova."), "{ev:?}");
}
