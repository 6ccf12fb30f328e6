//! firehose-notify against real receivers on loopback: our broker fed by
//! the gerrit bridge's replay (or a test publisher), an HTTP server, a
//! script, files, aiosmtpd (STARTTLS), an MQTT subscriber.

use std::path::{Path, PathBuf};
use std::process::Command;

use firehose_testkit::*;

use firehose_testkit::logins::GERRIT as PUBLISHER;
const NOTIFIER: (&str, &str) = ("notify", "notify-pw");

fn broker(dir: &Path) -> BrokerProc {
    BrokerProc::with_users(dir, &[PUBLISHER, NOTIFIER], &[])
}

/// firehose-notify on `config`, started and subscribed.
struct Notify {
    proc: Proc,
    config: PathBuf,
}

impl Notify {
    fn start(b: &BrokerProc, dir: &Path, name: &str, config: &str, extra: &[&str]) -> Notify {
        let path = private_file(&dir.join(format!("{name}.toml")), config);
        let before = b.metric("firehose_broker_subscriptions");
        let topics = firehose_notify::config::Config::parse(config)
            .expect("the test's config")
            .rules
            .iter()
            .flat_map(|r| r.topics.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .len() as u64;
        let proc = Proc::spawn(
            name,
            Command::new(bin("firehose-notify"))
                .arg("--config")
                .arg(&path)
                .args(["--metrics", "127.0.0.1:0"])
                .args(extra)
                .env("FIREHOSE_LOG", "info,firehose_notify=debug"),
        );
        proc.wait_log("firehose-notify started");
        b.wait_metric("firehose_broker_subscriptions", before + topics);
        Notify { proc, config: path }
    }

    fn metric(&self, sample: &str) -> u64 {
        metric_at(self.proc.metrics_addr(), sample).unwrap_or(0)
    }

    fn wait_metric(&self, sample: &str, n: u64) {
        wait_until(
            WAIT,
            || self.metric(sample) >= n,
            || {
                format!(
                    "{sample} to reach {n} (now {}): {}",
                    self.metric(sample),
                    self.proc.logs()
                )
            },
        );
    }
}

/// Replays the gerrit fixtures through a real gerrit bridge.
fn replay(b: &BrokerProc, dir: &Path, instance: &str) {
    let broker = format!("mqtt://{}", b.mqtt());
    let out = replay_gerrit(dir, &broker, PUBLISHER, &["--instance", instance]);
    assert!(out.status.success(), "{out:?}");
}

/// Gerrit fixture events of one type.
fn gerrit_events(kind: &str) -> Vec<serde_json::Value> {
    fixture_lines("gerrit/stream-events.jsonl")
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == kind)
        .collect()
}

/// A script that records each call: stdin to `<dir>/calls/<n>.json`, the
/// environment to `<n>.env`.
fn recorder(dir: &Path) -> PathBuf {
    let calls = dir.join("calls");
    std::fs::create_dir_all(&calls).unwrap();
    let script = dir.join("on-review");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nn=$(mktemp -p {c} call.XXXXXX)\ncat > \"$n.json\"\nenv | grep ^FIREHOSE_ > \"$n.env\"\n",
            c = calls.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn calls(dir: &Path, ext: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("calls"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == ext))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    v.sort();
    v
}

/// The README's minimal configuration (the ```toml block after the
/// `notify-minimal` marker).
fn readme_minimal() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let after = readme
        .split("<!-- notify-minimal -->")
        .nth(1)
        .expect("README.md has the notify-minimal block");
    let block = after.split("```toml\n").nth(1).expect("a toml block");
    block.split("```").next().unwrap().to_owned()
}

#[test]
fn the_readme_config_works_as_written_and_dedups_two_bridges() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let hook = HttpReceiver::start(Answer::Ok);
    let script = recorder(dir.path());
    // Exactly the README's text; only the addresses and the script's path
    // are this test's.
    let text = readme_minimal();
    assert!(text.contains("url = \"mqtt://127.0.0.1:1883\""), "{text}");
    let config = text
        .replace("127.0.0.1:1883", &b.mqtt().to_string())
        .replace("http://127.0.0.1:9000/hook", &hook.url("/hook"))
        .replace("/usr/local/bin/on-review", &script.to_string_lossy());
    let n = Notify::start(&b, dir.path(), "notify", &config, &[]);
    // Two bridges publish the same gerrit events: one notification each.
    replay(&b, dir.path(), "one");
    replay(&b, dir.path(), "two");
    let expected = gerrit_events("comment-added");
    let rule = "{rule=\"rule-1\"}";
    n.wait_metric(
        &format!("firehose_notify_rule_matched_total{rule}"),
        expected.len() as u64,
    );
    n.wait_metric(
        &format!("firehose_notify_rule_deduped_total{rule}"),
        expected.len() as u64,
    );
    n.wait_metric(
        "firehose_notify_target_sent_total{target=\"hook\"}",
        expected.len() as u64,
    );
    n.wait_metric(
        "firehose_notify_target_sent_total{target=\"script\"}",
        expected.len() as u64,
    );
    let reqs = hook.requests();
    assert_eq!(reqs.len(), expected.len(), "{reqs:?}");
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hook");
        assert!(
            r.body.starts_with("gerrit/") && r.body.ends_with("/comment-added"),
            "{r:?}"
        );
    }
    // The script got the normalized event on stdin and in its environment.
    let stdin = calls(dir.path(), "json");
    assert_eq!(stdin.len(), expected.len());
    for s in &stdin {
        let ev: serde_json::Value = serde_json::from_str(s).unwrap();
        let keys: Vec<&str> = ev.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["data", "id", "retained", "source", "subject", "time", "topic", "type"],
            "exactly firehose-sub --json's shape"
        );
        assert_eq!(ev["type"], "gerrit.comment-added");
        assert_eq!(ev["data"]["type"], "comment-added");
    }
    let env = calls(dir.path(), "env");
    assert!(env
        .iter()
        .all(|e| e.contains("FIREHOSE_TYPE=gerrit.comment-added")
            && e.contains("FIREHOSE_TOPIC=gerrit/")
            && e.contains("FIREHOSE_RULE=rule-1")));
}

#[test]
fn targets_render_their_templates_and_rules_filter_with_jq() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let hook = HttpReceiver::start(Answer::Ok);
    let out = dir.path().join("notes.log");
    let (mut watcher, _) = Raw::connect(b.mqtt(), 4, "watcher", None);
    watcher.send(&subscribe(4, 1, "notify/out/#", 0));
    assert_eq!(watcher.read().expect("SUBACK").0, 0x90);
    let config = format!(
        r#"
[broker]
url = "mqtt://{broker}"
username = "{user}"
password_file = "{pwfile}"

[[target]]
name = "chat"
type = "webhook"
url = "{hook}"
preset = "slack"
headers = {{ "X-Event" = "{{{{ type }}}}", "X-Project" = "{{{{ data.change.project }}}}" }}

[[target]]
name = "notes"
type = "file"
path = "{out}"
line = "{{{{ rule }}}} {{{{ subject }}}} {{{{ message }}}}"

[[target]]
name = "republish"
type = "mqtt"
topic = "notify/out/{{{{ subject }}}}"

[[target]]
name = "log"
type = "log"

[[rule]]
name = "approved"
topics = ["gerrit/#"]
type = "gerrit.comment-added"
where = '[.data.approvals[]? | .value | tostring] | any(. == "2")'
template = "+2 on {{{{ data.change.project }}}} by {{{{ data.author.username }}}}"
targets = ["chat", "notes", "republish", "log"]

[[rule]]
name = "merged"
topics = ["gerrit/+/change-merged", "gerrit/#"]
type = ["gerrit.change-merged"]
targets = ["notes"]
"#,
        broker = b.mqtt(),
        user = NOTIFIER.0,
        pwfile = bridge_password_file(dir.path(), NOTIFIER.1).display(),
        hook = hook.url("/chat"),
        out = out.display(),
    );
    let n = Notify::start(&b, dir.path(), "notify", &config, &[]);
    replay(&b, dir.path(), "one");
    // What the rules should pick, computed from the fixtures here.
    let approved: Vec<serde_json::Value> = gerrit_events("comment-added")
        .into_iter()
        .filter(|v| {
            v["approvals"].as_array().is_some_and(|a| {
                a.iter().any(|x| match &x["value"] {
                    serde_json::Value::String(s) => s == "2",
                    other => other.as_i64() == Some(2),
                })
            })
        })
        .collect();
    let merged = gerrit_events("change-merged");
    assert!(!approved.is_empty() && !merged.is_empty());
    n.wait_metric(
        "firehose_notify_target_sent_total{target=\"notes\"}",
        (approved.len() + merged.len()) as u64,
    );
    n.wait_metric(
        "firehose_notify_target_sent_total{target=\"chat\"}",
        approved.len() as u64,
    );
    // Overlapping filters of one rule still give one notification each.
    assert_eq!(
        n.metric("firehose_notify_rule_matched_total{rule=\"merged\"}"),
        merged.len() as u64
    );
    let lines = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        lines.lines().count(),
        approved.len() + merged.len(),
        "{lines}"
    );
    for a in &approved {
        let want = format!(
            "approved {} +2 on {} by {}",
            a["change"]["number"].to_string().trim_matches('"'),
            a["change"]["project"].as_str().unwrap(),
            a["author"]["username"].as_str().unwrap()
        );
        assert!(lines.lines().any(|l| l == want), "{want:?} in {lines}");
    }
    assert_eq!(
        lines.lines().filter(|l| l.starts_with("merged ")).count(),
        merged.len()
    );
    // The default message is `topic payload`.
    assert!(lines
        .lines()
        .any(|l| l.starts_with("merged ") && l.contains("/change-merged {")));
    let reqs = hook.requests();
    assert_eq!(reqs.len(), approved.len());
    for r in &reqs {
        assert_eq!(r.header("x-event"), Some("gerrit.comment-added"));
        assert!(r.header("x-project").is_some_and(|p| !p.is_empty()));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert!(
            body["text"].as_str().unwrap().starts_with("+2 on "),
            "{body}"
        );
    }
    // The mqtt target republished each approval.
    let mut republished = Vec::new();
    while republished.len() < approved.len() {
        let (t, body) = watcher.read().expect("a republished notification");
        if t & 0xf0 != 0x30 {
            continue;
        }
        let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
        let off = 2 + tl + if (t >> 1) & 3 > 0 { 2 } else { 0 };
        republished.push((
            String::from_utf8_lossy(&body[2..2 + tl]).into_owned(),
            String::from_utf8_lossy(&body[off..]).into_owned(),
        ));
    }
    assert!(
        republished
            .iter()
            .all(|(t, p)| t.starts_with("notify/out/") && p.starts_with("+2 on ")),
        "{republished:?}"
    );
    assert!(n.proc.count_log("notification") >= approved.len());
}

#[test]
fn mail_over_starttls() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let b = broker(dir.path());
    let smtp = SmtpServer::start(dir.path(), Some(dir.path()));
    let config = format!(
        r#"
[broker]
url = "mqtt://{broker}"

[[target]]
name = "mail"
type = "smtp"
host = "localhost"
port = {port}
security = "starttls"
ca = "{ca}"
from = "Firehose <firehose@example.org>"
to = ["reviewers@example.org"]
subject = "merged: {{{{ data.change.subject }}}}"

[[rule]]
topics = ["gerrit/#"]
type = "gerrit.change-merged"
template = "{{{{ data.change.url }}}} was merged into {{{{ data.change.branch }}}}"
targets = ["mail"]
"#,
        broker = b.mqtt(),
        port = smtp.port,
        ca = dir.path().join("ca.pem").display(),
    );
    let n = Notify::start(&b, dir.path(), "notify", &config, &[]);
    replay(&b, dir.path(), "one");
    let merged = gerrit_events("change-merged");
    let mails = smtp.wait_messages(merged.len());
    assert_eq!(mails.len(), merged.len());
    for m in &merged {
        let subject = format!(
            "Subject: merged: {}",
            m["change"]["subject"].as_str().unwrap()
        );
        let body = format!("{} was merged into", m["change"]["url"].as_str().unwrap());
        assert!(
            mails
                .iter()
                .any(|mail| mail.contains(&subject) && mail.contains(&body)),
            "{subject:?} / {body:?} in {mails:#?}"
        );
    }
    assert!(mails
        .iter()
        .all(|m| m.contains("To: reviewers@example.org")));
    assert_eq!(
        n.metric("firehose_notify_target_failed_total{target=\"mail\"}"),
        0
    );
}

/// 100 events in one window: `max` notifications and one summary; a
/// webhook that never answers holds only its own queue.
#[test]
fn throttle_summarizes_and_a_hung_target_delays_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let hung = HttpReceiver::start(Answer::Hang);
    let out = dir.path().join("out.log");
    let config = format!(
        r#"
[broker]
url = "mqtt://{broker}"

[[target]]
name = "stuck"
type = "webhook"
url = "{hung}"
timeout = "1h"

[[target]]
name = "file"
type = "file"
path = "{out}"

[[rule]]
name = "burst"
topics = ["test/#"]
template = "event {{{{ data.n }}}}"
throttle = {{ max = 3, per = "4s", key = "{{{{ data.group }}}}" }}
targets = ["file", "stuck"]
"#,
        broker = b.mqtt(),
        hung = hung.url("/"),
        out = out.display(),
    );
    let n = Notify::start(&b, dir.path(), "notify", &config, &[]);
    let mut p = Publisher::new(b.mqtt(), PUBLISHER);
    for i in 0..100 {
        p.publish(
            "test/burst",
            format!(r#"{{"n":{i},"group":"g"}}"#).as_bytes(),
            false,
        );
    }
    n.wait_metric("firehose_notify_rule_throttled_total{rule=\"burst\"}", 97);
    n.wait_metric("firehose_notify_rule_summaries_total{rule=\"burst\"}", 1);
    n.wait_metric("firehose_notify_target_sent_total{target=\"file\"}", 4);
    let lines: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines[..3], ["event 0", "event 1", "event 2"]);
    assert_eq!(
        lines[3],
        "97 more notification(s) of rule burst held back for g in the last 4s"
    );
    assert_eq!(lines.len(), 4);
    // The stuck webhook took its first notification and never answered;
    // the file target did not wait for it.
    assert_eq!(hung.wait_requests(1).len(), 1);
    assert_eq!(
        n.metric("firehose_notify_target_sent_total{target=\"stuck\"}"),
        0
    );
}

#[test]
fn sighup_reloads_a_good_file_and_keeps_running_on_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let out = dir.path().join("out.log");
    let config = |version: &str| {
        format!(
            "[broker]\nurl = \"mqtt://{}\"\n\n[[target]]\nname = \"file\"\ntype = \"file\"\npath = \"{}\"\nline = \"{version} {{{{ topic }}}}\"\n\n[[rule]]\ntopics = [\"test/#\"]\ntargets = [\"file\"]\n",
            b.mqtt(),
            out.display()
        )
    };
    let n = Notify::start(&b, dir.path(), "notify", &config("v1"), &[]);
    let mut p = Publisher::new(b.mqtt(), PUBLISHER);
    let lines = || std::fs::read_to_string(&out).unwrap_or_default();
    p.publish("test/a", b"{}", false);
    wait_until(WAIT, || lines().contains("v1 test/a"), lines);
    private_file(&n.config, &config("v2"));
    n.proc.signal("HUP");
    n.proc.wait_log("configuration reloaded");
    p.publish("test/b", b"{}", false);
    wait_until(WAIT, || lines().contains("v2 test/b"), lines);
    // A broken file: logged, and the running configuration stays.
    private_file(&n.config, &config("v3").replace("[[rule]]", "[[rule"));
    n.proc.signal("HUP");
    n.proc
        .wait_log("reload failed; keeping the running configuration");
    p.publish("test/c", b"{}", false);
    wait_until(WAIT, || lines().contains("v2 test/c"), lines);
    assert!(!lines().contains("v3"));
}

#[test]
fn dry_run_prints_instead_of_sending() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let hook = HttpReceiver::start(Answer::Ok);
    let config = format!(
        "[broker]\nurl = \"mqtt://{}\"\n\n[[target]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\nbody = \"{{{{ topic }}}}\"\n\n[[rule]]\ntopics = [\"test/#\"]\ntargets = [\"hook\"]\n",
        b.mqtt(),
        hook.url("/hook")
    );
    let n = Notify::start(&b, dir.path(), "notify", &config, &["--dry-run"]);
    let mut p = Publisher::new(b.mqtt(), PUBLISHER);
    p.publish("test/dry", b"{}", false);
    let want = format!("[hook] POST {} headers [] body test/dry", hook.url("/hook"));
    wait_until(
        WAIT,
        || n.proc.stdout_lines().contains(&want),
        || format!("{want:?} in {:?}", n.proc.stdout_lines()),
    );
    assert!(hook.requests().is_empty(), "a dry run sends nothing");
}

/// With a persistent session, what arrives while notify is down is
/// notified when it returns.
#[test]
fn a_persistent_session_loses_nothing_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let out = dir.path().join("out.log");
    let config = format!(
        "[broker]\nurl = \"mqtt://{}\"\nclient_id = \"notify-test\"\nsession = true\n\n[[target]]\nname = \"file\"\ntype = \"file\"\npath = \"{}\"\nline = \"{{{{ topic }}}}\"\n\n[[rule]]\ntopics = [\"test/#\"]\ntargets = [\"file\"]\n",
        b.mqtt(),
        out.display()
    );
    let lines = || std::fs::read_to_string(&out).unwrap_or_default();
    let mut p = Publisher::new(b.mqtt(), PUBLISHER);
    let mut n = Notify::start(&b, dir.path(), "notify", &config, &[]);
    p.publish("test/0", b"{}", false);
    wait_until(WAIT, || lines().contains("test/0"), lines);
    n.proc.signal("TERM");
    assert!(n.proc.wait_exit().success());
    for i in 1..=5 {
        p.publish(&format!("test/{i}"), b"{}", false);
    }
    // The session's subscription is still there: no new one to wait for.
    let path = n.config.clone();
    let again = Proc::spawn(
        "notify-again",
        Command::new(bin("firehose-notify"))
            .arg("--config")
            .arg(&path),
    );
    wait_until(
        WAIT,
        || lines().lines().count() == 6,
        || format!("{}\n{}", lines(), again.logs()),
    );
    for i in 0..=5 {
        assert!(
            lines().lines().any(|l| l == format!("test/{i}")),
            "{}",
            lines()
        );
    }
}

#[test]
fn check_config_and_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = private_file(&dir.path().join("good.toml"), &readme_minimal());
    let out = run(Command::new(bin("firehose-notify"))
        .arg("--check-config")
        .arg("--config")
        .arg(&good));
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("configuration OK: 2 target(s), 1 rule(s)")
    );
    // A password in a file others can read.
    let open = dir.path().join("open.toml");
    std::fs::write(
        &open,
        readme_minimal().replace(
            "[broker]\n",
            "[broker]\nusername = \"u\"\npassword = \"p\"\n",
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, err) = outcome(
        Command::new(bin("firehose-notify"))
            .arg("--check-config")
            .arg("--config")
            .arg(&open),
    );
    assert!(!ok);
    assert!(err.contains("chmod 0600"), "{err}");
    assert!(!err.contains("\"p\""), "no secret in errors: {err}");
    // Group-writable: refused too (the rule every binary applies).
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o660)).unwrap();
    let (ok, err) = outcome(
        Command::new(bin("firehose-notify"))
            .arg("--check-config")
            .arg("--config")
            .arg(&open),
    );
    assert!(!ok, "a group-writable password file is refused");
    assert!(
        err.contains("mode 660") && err.contains("chmod 0640"),
        "{err}"
    );
    // A topic filter MQTT refuses fails the check, named, not the run.
    let typo = private_file(
        &dir.path().join("typo.toml"),
        &readme_minimal().replace("topics = [\"gerrit/#\"]", "topics = [\"gerrit/#/x\"]"),
    );
    let (ok, err) = outcome(
        Command::new(bin("firehose-notify"))
            .arg("--check-config")
            .arg("--config")
            .arg(&typo),
    );
    assert!(!ok, "{err}");
    assert!(
        err.contains("\"gerrit/#/x\" is not an MQTT topic filter"),
        "{err}"
    );
    // No config at all.
    let (ok, err) =
        outcome(Command::new(bin("firehose-notify")).env_remove("FIREHOSE_NOTIFY_CONFIG"));
    assert!(!ok);
    assert!(
        err.contains("--config FILE or set FIREHOSE_NOTIFY_CONFIG"),
        "{err}"
    );
}

#[test]
fn import_converts_a_mqttwarn_ini() {
    let dir = tempfile::tempdir().unwrap();
    let ini = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mqttwarn.ini");
    let out = run(Command::new(bin("firehose-notify")).arg("import").arg(&ini));
    assert!(out.status.success(), "{out:?}");
    let toml = String::from_utf8(out.stdout).unwrap();
    let cfg =
        firehose_notify::config::Config::parse(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let names: Vec<&str> = cfg.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "log:info",
            "file:mylog",
            "smtp:ops",
            "http:hook",
            "execute:touch",
            "mqtt:out"
        ]
    );
    assert_eq!(cfg.broker.url, "mqtt://127.0.0.1:1883");
    assert!(cfg.broker.session, "cleansession = False");
    let rule = &cfg.rules[0];
    assert_eq!(rule.topics, ["gerrit/#"]);
    assert_eq!(rule.targets, ["log:info", "file:mylog"]);
    assert_eq!(
        rule.template.as_deref(),
        Some("{{ topic }}: {{ subject }} at {{ received }}")
    );
    assert!(
        toml.contains("# - pushover:me: service \"pushover\" has no equivalent; skipped"),
        "{toml}"
    );
    // And the result passes --check-config.
    let file = private_file(&dir.path().join("imported.toml"), &toml);
    let out = run(Command::new(bin("firehose-notify"))
        .arg("--check-config")
        .arg("--config")
        .arg(&file));
    assert!(out.status.success(), "{out:?}");
}

/// `deploy/notify.toml` shows every key, checks, and its templates render.
#[test]
fn the_deploy_sample_is_complete_and_checks() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/notify.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let cfg = firehose_notify::config::Config::parse(&text).unwrap();
    let known: std::collections::BTreeSet<String> = [
        "broker.url",
        "broker.username",
        "broker.password",
        "broker.password_file",
        "broker.ca",
        "broker.client_id",
        "broker.session",
        "broker.since",
        "broker.history",
        "broker.zuul_root",
        "target.name",
        "target.type",
        "target.queue",
        "target.attempts",
        "target.timeout",
        "target.argv",
        "target.url",
        "target.method",
        "target.body",
        "target.headers",
        "target.preset",
        "target.ca",
        "target.host",
        "target.port",
        "target.security",
        "target.username",
        "target.password",
        "target.password_file",
        "target.from",
        "target.to",
        "target.subject",
        "target.path",
        "target.line",
        "target.topic",
        "target.retain",
        "target.qos",
        "target.payload",
        "rule.name",
        "rule.topics",
        "rule.type",
        "rule.where",
        "rule.template",
        "rule.targets",
        "rule.throttle",
        "rule.dedup",
        "rule.skip_retained",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_sample_complete("deploy/notify.toml", &text, &known);
    let kinds: Vec<String> = cfg
        .targets
        .iter()
        .map(|t| {
            format!("{:?}", t.kind)
                .split([' ', '{'])
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(kinds, ["Exec", "Webhook", "Smtp", "File", "Mqtt", "Log"]);
    // --check-config builds every target, so the files it names must be
    // there: the sample's /etc/firehose/ paths point into a temp dir here.
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    private_file(&etc.join("smtp.pass"), "mail-secret\n");
    private_file(&etc.join("notify-broker.pass"), "notify-secret\n");
    let local = private_file(
        &dir.path().join("notify.toml"),
        &text.replace("/etc/firehose/", &format!("{}/", etc.display())),
    );
    let out = run(Command::new(bin("firehose-notify"))
        .arg("--check-config")
        .arg("--config")
        .arg(&local));
    assert!(out.status.success(), "{out:?}");
    // Without the password file, it says which file is missing.
    std::fs::remove_file(etc.join("smtp.pass")).unwrap();
    let (ok, err) = outcome(
        Command::new(bin("firehose-notify"))
            .arg("--check-config")
            .arg("--config")
            .arg(&local),
    );
    assert!(!ok);
    assert!(err.contains("smtp.pass"), "{err}");
    // The throttle key names the deployment.
    let key = firehose_expr::Template::new(
        cfg.rules[1]
            .throttle
            .as_ref()
            .unwrap()
            .key
            .as_deref()
            .unwrap(),
    )
    .unwrap();
    let ev = serde_json::json!({"topic": "nova/cell1/compute/instance/create/error"});
    assert_eq!(key.render(&ev).unwrap(), "cell1");
}

/// A webhook over HTTPS, with a private CA (Python's http.server behind
/// ssl, on loopback).
#[test]
fn webhook_over_https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let b = broker(dir.path());
    let port = free_port();
    let got = dir.path().join("got.txt");
    let server = format!(
        r#"
import http.server, ssl
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        with open({got:?}, 'ab') as f:
            f.write(body + b'\n')
        self.send_response(204)
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(('127.0.0.1', {port}), H)
c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
c.load_cert_chain({cert:?}, {key:?})
s.socket = c.wrap_socket(s.socket, server_side=True)
print('listening', flush=True)
s.serve_forever()
"#,
        got = got.display().to_string(),
        cert = dir.path().join("server.pem").display().to_string(),
        key = dir.path().join("server.key").display().to_string(),
    );
    let https = Proc::spawn("https", Command::new("python3").arg("-c").arg(&server));
    https.wait_listening(port);
    let config = format!(
        "[broker]\nurl = \"mqtt://{}\"\n\n[[target]]\nname = \"tls\"\ntype = \"webhook\"\nurl = \"https://localhost:{port}/hook\"\nca = \"{}\"\nbody = \"{{{{ topic }}}}\"\n\n[[rule]]\ntopics = [\"test/#\"]\ntargets = [\"tls\"]\n",
        b.mqtt(),
        dir.path().join("ca.pem").display()
    );
    let n = Notify::start(&b, dir.path(), "notify", &config, &[]);
    Publisher::new(b.mqtt(), PUBLISHER).publish("test/tls", b"{}", false);
    n.wait_metric("firehose_notify_target_sent_total{target=\"tls\"}", 1);
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "test/tls\n");
}

/// `[broker] since` replays what firehose-history stored before notify
/// started through the rules, then goes on live: each event once.
#[test]
fn since_replays_the_history_then_goes_live() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let db = format!("sqlite:{}", dir.path().join("history.db").display());
    let history = HistoryProc::start(&format!("mqtt://{}", b.mqtt()), &db, "127.0.0.1:0", &[]);
    let http = history.http;
    let publish = |p: &mut Publisher, range: std::ops::Range<i32>| {
        for i in range {
            p.publish(
                &format!("test/{i}"),
                format!("{{\"n\":{i}}}").as_bytes(),
                false,
            );
        }
    };
    let mut p = Publisher::new(b.mqtt(), PUBLISHER);
    publish(&mut p, 0..5);
    wait_until(
        WAIT,
        || metric_at(http, "firehose_history_stored_total").unwrap_or(0) >= 5,
        || format!("5 stored: {}", history.proc_.logs()),
    );
    let out = dir.path().join("out.log");
    let config = format!(
        "[broker]\nurl = \"mqtt://{}\"\nsince = \"1h\"\nhistory = \"http://{http}\"\n\n[[target]]\nname = \"file\"\ntype = \"file\"\npath = \"{}\"\nline = \"{{{{ topic }}}}\"\n\n[[rule]]\ntopics = [\"test/#\"]\ntargets = [\"file\"]\n",
        b.mqtt(),
        out.display()
    );
    let lines = || std::fs::read_to_string(&out).unwrap_or_default();
    let n = Notify::start(&b, dir.path(), "notify", &config, &[]);
    n.proc.wait_log("replaying from the history");
    publish(&mut p, 5..8);
    wait_until(
        WAIT,
        || lines().lines().count() >= 8,
        || format!("{}\n{}", lines(), n.proc.logs()),
    );
    // A last one, so a late duplicate of any before it would show.
    p.publish("test/end", b"{}", false);
    wait_until(WAIT, || lines().contains("test/end"), lines);
    let mut got: Vec<String> = lines().lines().map(str::to_owned).collect();
    got.sort();
    let mut want: Vec<String> = (0..8).map(|i| format!("test/{i}")).collect();
    want.push("test/end".into());
    assert_eq!(got, want, "each event notified once, the stored ones first");

    // since without history names the fix.
    let bad = private_file(
        &dir.path().join("bad.toml"),
        &config.replace(&format!("history = \"http://{http}\"\n"), ""),
    );
    let (ok, text) = outcome(
        Command::new(bin("firehose-notify"))
            .arg("--config")
            .arg(&bad)
            .arg("--check-config"),
    );
    assert!(!ok && text.contains("since needs history"), "{text}");
}
