//! firehose-ansible with a real ansible-core (in `target/ansible-venv`,
//! which `./scripts/test` creates) and a real broker: a local playbook with
//! ok, changed, skipped, failed (ignored and not), loop, async, no_log and
//! unreachable tasks through `run` (both payload modes) and `serve`; the
//! exit code is the playbook's; with no bridge, or a bridge that never
//! reads, the playbook still succeeds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use firehose_testkit::*;
use serde_json::Value;

use firehose_testkit::logins::ANSIBLE as BRIDGE;

/// Every event the playbook below produces.
const EVENTS: usize = 17;

fn venv() -> PathBuf {
    let v = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ansible-venv/bin");
    assert!(
        v.join("ansible-playbook").exists(),
        "{} has no ansible-playbook: run ./scripts/test, or: python3 -m venv target/ansible-venv && target/ansible-venv/bin/pip install ansible-core==2.19.14",
        v.display()
    );
    v
}

/// A playbook, an inventory (localhost, and a host nobody listens for),
/// in `dir`; returns the ansible-playbook arguments.
fn playbook(dir: &Path) -> Vec<String> {
    let python = venv().join("python3");
    std::fs::write(
        dir.join("inventory"),
        format!(
            "localhost ansible_connection=local ansible_python_interpreter={}\n\
             unreachable_host ansible_host=127.0.0.1 ansible_port=1 ansible_connection=ssh\n",
            python.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("play.yml"),
        r#"- name: deploy
  hosts: localhost
  gather_facts: false
  tasks:
    - name: ok task
      ping:
    - name: changed task
      command: "true"
    - name: skipped task
      command: "true"
      when: false
    - name: ignored failure
      command: "false"
      ignore_errors: true
    - name: loop
      debug: msg="{{ item }}"
      loop: [a, b]
    - name: async task
      command: "true"
      async: 10
      poll: 1
    - name: secret
      command: echo hunter2
      no_log: true
- name: last
  hosts: localhost:unreachable_host
  gather_facts: false
  tasks:
    - name: real failure
      command: "false"
"#,
    )
    .unwrap();
    vec![
        venv().join("ansible-playbook").display().to_string(),
        "-i".into(),
        dir.join("inventory").display().to_string(),
        dir.join("play.yml").display().to_string(),
    ]
}

/// ansible-playbook on its own (no plugin): its exit code.
fn plain_exit_code(args: &[String]) -> i32 {
    let out = run_job(
        Command::new(&args[0])
            .args(&args[1..])
            .env_remove("ANSIBLE_CALLBACKS_ENABLED"),
    );
    out.status.code().expect("exit code")
}

fn received(out: &str) -> Vec<(String, Value)> {
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(t, p)| {
            (
                t.to_owned(),
                serde_json::from_str(p).unwrap_or_else(|e| panic!("{t}: {e}: {p}")),
            )
        })
        .collect()
}

/// Topic tails after `ansible/playbook/<uuid>/`, counted.
fn tails(got: &[(String, Value)]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (t, _) in got {
        let tail = t.splitn(4, '/').nth(3).unwrap_or_default().to_owned();
        *m.entry(tail).or_insert(0) += 1;
    }
    m
}

fn expected_tails() -> BTreeMap<String, usize> {
    [
        ("action/start", 2),
        ("task/localhost/OK", 8), // ping, changed, 2 items + loop, async (twice), no_log
        ("task/localhost/SKIPPED", 1),
        ("task/localhost/FAILED", 2),
        ("task/unreachable_host/UNREACHABLE", 1),
        ("stats/localhost", 1),
        ("stats/unreachable_host", 1),
        ("action/finish/FAILED", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn run_bridge(
    dir: &Path,
    b: &BrokerProc,
    extra: &[&str],
    playbook: &[String],
) -> std::process::Output {
    let pw = bridge_password_file(dir, BRIDGE.1);
    run_job(
        Command::new(bin("firehose-ansible"))
            .arg("run")
            .args(["--broker", &format!("mqtt://{}@{}", BRIDGE.0, b.mqtt())])
            .arg("--password-file")
            .arg(&pw)
            .arg("--dead-letter")
            .arg(dir.join("dl.jsonl"))
            .args(extra)
            .arg("--")
            .args(playbook),
    )
}

#[test]
fn run_publishes_every_result_and_exits_with_the_playbooks_code() {
    let dir = tempfile::tempdir().unwrap();
    let args = playbook(dir.path());
    let plain = plain_exit_code(&args);
    assert_ne!(plain, 0, "the playbook fails on purpose");
    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);

    // Raw: the original plugin's payloads.
    let n = EVENTS.to_string();
    let sub = Sub::spawn(&b, &["-t", "ansible/#", "-v", "-C", &n, "-W", "60"]);
    let out = run_bridge(dir.path(), &b, &["--payload", "raw"], &args);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(plain),
        "the playbook's exit code: {log}"
    );
    let (_, text, _) = sub.output();
    let got = received(&text);
    assert_eq!(tails(&got), expected_tails(), "{log}");
    assert!(
        !text.contains("hunter2"),
        "no_log results never leave the plugin"
    );
    let (_, changed) = got
        .iter()
        .find(|(_, p)| p["ansible_task"] == "TASK: changed task")
        .expect("the changed task");
    let result = changed["ansible_result"]
        .as_str()
        .expect("raw: a JSON string");
    assert_eq!(
        serde_json::from_str::<Value>(result).unwrap()["changed"],
        true
    );
    for key in [
        "status",
        "host",
        "ansible_host",
        "session",
        "ansible_type",
        "playbook_name",
        "playbook_id",
        "ansible_task",
    ] {
        assert!(changed.get(key).is_some(), "{key} in {changed}");
    }
    let (t, stats) = got
        .iter()
        .find(|(t, _)| t.ends_with("/stats/localhost"))
        .unwrap();
    assert!(t.contains(stats["playbook_id"].as_str().unwrap()));
    assert_eq!(stats["stats"]["failures"], 1);
    assert_eq!(stats["stats"]["ignored"], 1);

    // CloudEvents: the result is an object, and more is said.
    let sub = Sub::spawn(&b, &["-t", "ansible/#", "-v", "-C", &n, "-W", "60"]);
    let out = run_bridge(dir.path(), &b, &[], &args);
    assert_eq!(out.status.code(), Some(plain));
    let (_, text, _) = sub.output();
    let got = received(&text);
    assert_eq!(tails(&got), expected_tails());
    let (_, ignored) = got
        .iter()
        .find(|(_, p)| p["data"]["ansible_task"] == "TASK: ignored failure")
        .expect("the ignored failure");
    assert_eq!(ignored["type"], "ansible.task.failed");
    assert_eq!(ignored["data"]["ignored"], true);
    assert_eq!(ignored["data"]["ansible_result"]["rc"], 1);
    let items = got
        .iter()
        .filter(|(_, p)| p["data"]["item"] == true)
        .count();
    assert_eq!(items, 2, "one event per loop item");
    assert!(!text.contains("hunter2"));
}

#[test]
fn with_no_bridge_or_a_stuck_one_the_playbook_runs_unharmed() {
    let dir = tempfile::tempdir().unwrap();
    let args = playbook(dir.path());
    let plain = plain_exit_code(&args);
    let plugins = dir.path().join("plugins");
    let out = run(Command::new(bin("firehose-ansible"))
        .args(["plugin-path", "--dir"])
        .arg(&plugins));
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        plugins.display().to_string()
    );

    let with_plugin = |socket: &Path| {
        run_job(
            Command::new(&args[0])
                .args(&args[1..])
                .env("ANSIBLE_CALLBACK_PLUGINS", &plugins)
                .env("ANSIBLE_CALLBACKS_ENABLED", "firehose")
                .env("FIREHOSE_ANSIBLE_SOCKET", socket),
        )
    };
    // Nobody listens.
    let out = with_plugin(&dir.path().join("absent.sock"));
    let all =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(plain), "{all}");
    assert_eq!(
        all.matches("cannot reach the firehose bridge").count(),
        1,
        "warned once: {all}"
    );

    // A bridge that accepts and never reads: the plugin's buffer fills,
    // it drops, warns once, and the playbook finishes.
    std::fs::write(
        dir.path().join("play.yml"),
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - debug: msg=\"{{ 'x' * 200000 }}\"\n      loop: \"{{ range(60) | list }}\"\n",
    )
    .unwrap();
    let sock = dir.path().join("stuck.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let out = with_plugin(&sock);
    let all =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_eq!(
        all.matches("the bridge is not keeping up").count(),
        1,
        "warned once: {all}"
    );
}

#[test]
fn serve_publishes_what_every_playbook_sends() {
    let dir = tempfile::tempdir().unwrap();
    let args = playbook(dir.path());
    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let sock = dir.path().join("ansible.sock");
    let pw = bridge_password_file(dir.path(), BRIDGE.1);
    let serve = Proc::spawn(
        "firehose-ansible",
        Command::new(bin("firehose-ansible"))
            .arg("serve")
            .arg("--socket")
            .arg(&sock)
            .args(["--broker", &format!("mqtt://{}@{}", BRIDGE.0, b.mqtt())])
            .arg("--password-file")
            .arg(&pw)
            .arg("--dead-letter")
            .arg(dir.path().join("dl.jsonl")),
    );
    serve.wait_log("waiting for ansible callback connections");
    let plugins = dir.path().join("plugins");
    run(Command::new(bin("firehose-ansible"))
        .args(["plugin-path", "--dir"])
        .arg(&plugins));
    for _ in 0..2 {
        let n = EVENTS.to_string();
        let sub = Sub::spawn(&b, &["-t", "ansible/#", "-v", "-C", &n, "-W", "60"]);
        run_job(
            Command::new(&args[0])
                .args(&args[1..])
                .env("ANSIBLE_CALLBACK_PLUGINS", &plugins)
                .env("ANSIBLE_CALLBACKS_ENABLED", "firehose")
                .env("FIREHOSE_ANSIBLE_SOCKET", &sock),
        );
        let (_, text, _) = sub.output();
        assert_eq!(
            tails(&received(&text)),
            expected_tails(),
            "{}",
            serve.logs()
        );
    }
    // Garbage on the socket is dead-lettered; the bridge goes on.
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    std::io::Write::write_all(&mut s, b"not json\n").unwrap();
    drop(s);
    serve.wait_log("input is not an event");
}

#[test]
fn check_config_sample_and_errors() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/ansible.toml");
    let (_, text) = outcome(
        Command::new(bin("firehose-ansible"))
            .args(["serve", "--config"])
            .arg(&sample)
            .arg("--check-config"),
    );
    assert_sample_checks(&text);
    let out = run(Command::new(bin("firehose-ansible")).args(["serve", "--check-config"]));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("--socket PATH"),
        "{text}"
    );
    let out = run(Command::new(bin("firehose-ansible")).args(["run", "--check-config"]));
    assert!(!out.status.success(), "run needs a command");

    let text = std::fs::read_to_string(&sample).unwrap();
    let full =
        firehose_bridge::config::FileConfig::<firehose_ansible::config::AnsibleConfig>::default();
    let known = json_keys(&serde_json::to_value(&full).unwrap());
    assert_sample_complete("deploy/ansible.toml", &text, &known);
}
