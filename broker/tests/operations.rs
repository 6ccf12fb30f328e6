//! Operator-facing behaviour: --print-config, --check-config, unsafe
//! password-file permissions, the passwd subcommand, SIGHUP reload and a
//! clean SIGTERM that tells v5 clients 0x8B.

use firehose_testkit::logins::PUBLISHER;
use firehose_testkit::*;
use std::io::Write;
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_firehose-broker"))
}

#[test]
fn print_and_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("b.toml");
    std::fs::write(
        &cfg,
        "[listeners]\nmqtt = [\"127.0.0.1:1999\"]\n[limits]\nmax_connections = 9\n",
    )
    .unwrap();
    let out = run(bin().args([
        "--config",
        cfg.to_str().unwrap(),
        "--max-queued-messages",
        "7",
        "--print-config",
    ]));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("max_connections = 9")
            && text.contains("max_queued_messages = 7")
            && text.contains("127.0.0.1:1999"),
        "{text}"
    );
    // The env variable names the config file too.
    let out = run(bin()
        .env("FIREHOSE_BROKER_CONFIG", &cfg)
        .arg("--print-config"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_connections = 9"));
    // Bad config: non-zero exit and a readable reason.
    std::fs::write(&cfg, "[limits]\nmax_conections = 9\n").unwrap();
    let out = run(bin().args(["--config", cfg.to_str().unwrap(), "--check-config"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_conections"));
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic read #\nfrobnicate\n").unwrap();
    let out = run(bin().args(["--acl", acl.to_str().unwrap(), "--check-config"]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("acl:2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unsafe_password_file_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let pw = passwd_file(dir.path(), &[("u", "p")]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(bin().args(["--passwd", pw.to_str().unwrap(), "--mqtt", "127.0.0.1:0"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 0600"), "{err}");
    // A missing file: named, and the cause said once.
    let gone = dir.path().join("gone");
    let out = run(bin().args(["--passwd", gone.to_str().unwrap(), "--mqtt", "127.0.0.1:0"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot read password file {}", gone.display())),
        "{err}"
    );
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

#[test]
fn passwd_subcommand_and_sighup_reload() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    let add = |user: &str, pass: &str| {
        let mut c = bin()
            .args(["passwd", pw.to_str().unwrap(), user])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(format!("{pass}\n").as_bytes())
            .unwrap();
        assert!(c.wait().unwrap().success());
    };
    add("first", "one");
    let b = BrokerProc::start(&["--passwd", pw.to_str().unwrap()]);
    assert!(
        mosquitto_pub(&b, &["-u", "first", "-P", "one", "-t", "a", "-m", "x"])
            .status
            .success()
    );
    assert!(
        !mosquitto_pub(&b, &["-u", "second", "-P", "two", "-t", "a", "-m", "x"])
            .status
            .success()
    );
    // A connected client survives the reload.
    let (mut kept, _) = Raw::connect(b.mqtt(), 4, "kept", None);
    add("second", "two");
    b.signal("HUP");
    b.wait_log("password and ACL files reloaded");
    assert!(
        mosquitto_pub(&b, &["-u", "second", "-P", "two", "-t", "a", "-m", "x"])
            .status
            .success()
    );
    // A broken file keeps the old users.
    std::fs::write(&pw, "broken line\n").unwrap();
    b.signal("HUP");
    b.wait_log("reload failed");
    assert!(
        mosquitto_pub(&b, &["-u", "second", "-P", "two", "-t", "a", "-m", "x"])
            .status
            .success()
    );
    kept.send(&[0xc0, 0]);
    assert_eq!(kept.read().unwrap().0, 0xd0);
}

#[test]
fn sigterm_tells_v5_clients_and_exits_cleanly() {
    let mut b = BrokerProc::start(&[]);
    let (mut v5, _) = Raw::connect(b.mqtt(), 5, "v5", None);
    let (mut v4, _) = Raw::connect(b.mqtt(), 4, "v4", None);
    b.signal("TERM");
    let seen = v5.read_until_closed();
    assert_eq!(
        seen.first().map(|p| (p.0, p.1[0])),
        Some((0xe0, 0x8b)),
        "0x8B server shutting down"
    );
    assert!(v4.read_until_closed().is_empty());
    assert!(b.wait_exit().success());
}

#[test]
fn shipped_sample_config_is_valid() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/broker.toml");
    let out = run(bin().args(["--config", sample, "--check-config"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_flags_no_config_listens_on_loopback_defaults() {
    let out = run(bin()
        .env_remove("FIREHOSE_BROKER_CONFIG")
        .arg("--print-config"));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let listeners: toml::Value = toml::from_str(&text).expect("--print-config prints TOML");
    assert_eq!(
        listeners["listeners"]["mqtt"],
        toml::Value::Array(vec!["127.0.0.1:1883".into()]),
        "{text}"
    );
    assert_eq!(
        listeners["listeners"]["ws"],
        toml::Value::Array(vec!["127.0.0.1:8080".into()]),
        "{text}"
    );
}

#[test]
fn sigterm_delivers_what_was_queued_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = BrokerProc::with_users(dir.path(), &[PUBLISHER], &[]);
    // A QoS 1 subscriber that never acks: 20 in flight, the rest queued.
    let (mut sub, _) = Raw::connect(b.mqtt(), 5, "slow", None);
    sub.send(&subscribe(5, 1, "drain/#", 1));
    assert_eq!(sub.read().expect("SUBACK").0, 0x90);
    let (mut p, _) = Raw::connect(b.mqtt(), 4, "pub", Some(PUBLISHER));
    for i in 1..=100u16 {
        p.send(&publish(4, b"drain/x", format!("m{i}").as_bytes(), 1, i));
        assert_eq!(p.read().expect("PUBACK").0, 0x40);
    }
    b.signal("TERM");
    let seen = sub.read_until_closed();
    let publishes = seen.iter().filter(|(t, _)| t & 0xf0 == 0x30).count();
    assert_eq!(
        publishes, 100,
        "everything accepted is delivered before the close"
    );
    assert_eq!(seen.last().map(|p| (p.0, p.1[0])), Some((0xe0, 0x8b)));
    assert!(b.wait_exit().success());
}

#[test]
fn a_log_filter_that_does_not_parse_is_an_error() {
    let out = run(bin()
        .env("FIREHOSE_LOG", "info,firehose_broker=loud")
        .args(["--mqtt", "127.0.0.1:0", "--check-config"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FIREHOSE_LOG") && err.contains("e.g."),
        "{err}"
    );
}

/// Connects one client, stops the broker, and returns its log.
fn log_of_one_client(verbose: bool) -> Proc {
    let mut cmd = bin();
    cmd.env_remove("FIREHOSE_LOG")
        .args(["--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0"]);
    if verbose {
        cmd.arg("--verbose");
    }
    let p = Proc::spawn("firehose-broker", &mut cmd);
    p.wait_log("listening listener=\"mqtt\"");
    let line = p
        .logs()
        .lines()
        .find(|l| l.contains("listener=\"mqtt\""))
        .map(str::to_owned)
        .unwrap();
    let addr: std::net::SocketAddr = line.rsplit("addr=").next().unwrap().trim().parse().unwrap();
    let (r, ack) = Raw::connect(addr, 4, "quiet-or-not", None);
    assert_eq!(ack, vec![0, 0]);
    drop(r);
    p.signal("TERM");
    p.wait_log("shutdown complete");
    p
}

#[test]
fn each_client_is_logged_only_with_verbose() {
    assert_eq!(log_of_one_client(false).count_log("client connected"), 0);
    assert_eq!(log_of_one_client(true).count_log("client connected"), 1);
}

#[test]
fn sample_config_has_every_key_and_only_known_ones() {
    // Every key the broker knows: the effective config with every optional
    // setting given, as --print-config prints it.
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.toml");
    std::fs::write(
        &full,
        "history_url = \"http://h:1\"\n\
         [tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"a\"\n\
         [auth]\npassword_file = \"p\"\nacl_file = \"a\"\n\
         [limits]\nreserved_connections = 5\n\
         [limits.users.history]\nmax_inflight_messages = 1000\nmax_queued_messages = 9\nmax_queued_bytes = 9\n\
         [upstream]\nurl = \"mqtt://core\"\nca = \"c\"\npassword_file = \"p\"\n\
         [persistence]\ndir = \"d\"\n",
    )
    .unwrap();
    let out = run(bin().args(["--config", full.to_str().unwrap(), "--print-config"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let known = toml_keys(&String::from_utf8_lossy(&out.stdout));
    let sample = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/broker.toml"
    ))
    .unwrap();
    assert_sample_complete("deploy/broker.toml", &sample, &known);
}

/// `--threads 1` (the small-machine setting in BENCHMARKS.md) runs the
/// whole broker on one worker.
#[test]
fn one_worker_thread_serves_publishers_and_readers() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[("bridge", "pw")], &["--threads", "1"]);
    let sub = Sub::spawn(&b, &["-t", "one/#", "-v", "-C", "3", "-W", "20"]);
    b.wait_metric("firehose_broker_subscriptions", 1);
    let mut p = Publisher::new(b.mqtt(), ("bridge", "pw"));
    for i in 0..3 {
        p.publish(&format!("one/{i}"), b"x", false);
    }
    let (code, out, _) = sub.output();
    assert_eq!(code, 0);
    assert_eq!(out, "one/0 x\none/1 x\none/2 x\n");
    let out = run(bin().args(["--threads", "1", "--print-config"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("threads = 1"));
}
