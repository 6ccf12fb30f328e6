//! Operating firehose-nova: several deployments from one config file, each
//! reconnecting on its own; amqps:// and percent-escaped passwords;
//! `--print json|yaml`; `--replay`; `--check-config` and errors that name
//! the fix.

mod common;
use common::*;
use firehose_testkit::*;

use std::process::Command;

#[test]
fn two_deployments_from_the_config_file_reconnect_on_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let rabbit = RabbitMq::start(&dir.path().join("rabbit"));
    rabbit.ctl(&["add_vhost", "region2"]);
    rabbit.ctl(&[
        "set_permissions",
        "-p",
        "region2",
        "guest",
        ".*",
        ".*",
        ".*",
    ]);
    let url2 = format!("amqp://guest:guest@127.0.0.1:{}/region2", rabbit.port);
    declare(&rabbit.url(), "nova", false, &[]);
    declare(&url2, "nova", false, &[]);
    let (b, pw) = broker(dir.path());
    let hosts = private_file(
        &dir.path().join("hosts"),
        "rabbit.example 123\n127.0.0.1 guest\n",
    );
    let cfg = dir.path().join("nova.toml");
    std::fs::write(
        &cfg,
        format!(
            "[publish]\nbroker = \"mqtt://{u}@{m}\"\npassword_file = \"{pw}\"\npayload = \"raw\"\n\
             [[source.deployments]]\nname = \"cell1\"\namqp = \"{a1}\"\n\
             [[source.deployments]]\nname = \"region2\"\namqp = \"amqp://guest@127.0.0.1:{port}/region2\"\nhosts_file = \"{hosts}\"\nqueue = \"firehose-r2\"\n",
            u = BRIDGE.0,
            m = b.mqtt(),
            pw = pw.display(),
            a1 = rabbit.url(),
            port = rabbit.port,
            hosts = hosts.display(),
        ),
    )
    .unwrap();
    let br = Proc::spawn(
        "firehose-nova",
        Command::new(bin("firehose-nova"))
            .env("FIREHOSE_NOVA_CONFIG", &cfg)
            .arg("--dead-letter")
            .arg(dir.path().join("dl.jsonl")),
    );
    br.wait_log_count("consuming nova notifications", 2);
    let fx = fixtures("legacy.jsonl");
    let sub = Sub::spawn(
        &b,
        &[
            "-t",
            "nova/+/compute/instance/delete/end",
            "-v",
            "-C",
            "2",
            "-W",
            "20",
        ],
    );
    amqp_publish(&rabbit.url(), &fx[..1], false);
    amqp_publish(&url2, &fx[..1], false);
    let (_, out, _) = sub.output();
    let topics: std::collections::BTreeSet<&str> =
        out.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(
        topics.into_iter().collect::<Vec<_>>(),
        vec![
            "nova/cell1/compute/instance/delete/end",
            "nova/region2/compute/instance/delete/end"
        ]
    );
    // Only region2's connections are closed: only region2 reconnects, and
    // cell1 keeps flowing meanwhile.
    rabbit.ctl(&[
        "close_all_connections",
        "--vhost",
        "region2",
        "test: region2 goes away",
    ]);
    wait_until(
        WAIT,
        || {
            br.logs()
                .lines()
                .filter(|l| l.contains("consuming nova notifications") && l.contains("region2"))
                .count()
                >= 2
        },
        || "region2 to reconnect".into(),
    );
    let lost: Vec<String> = br
        .logs()
        .lines()
        .filter(|l| l.contains("reconnecting"))
        .map(str::to_owned)
        .collect();
    assert!(lost.iter().all(|l| l.contains("region2")), "{lost:?}");
    assert_eq!(
        br.logs()
            .lines()
            .filter(|l| l.contains("consuming nova notifications") && l.contains("cell1"))
            .count(),
        1,
        "cell1 never reconnected"
    );
    let sub = Sub::spawn(
        &b,
        &[
            "-t",
            "nova/+/compute/instance/update",
            "-v",
            "-C",
            "2",
            "-W",
            "20",
        ],
    );
    amqp_publish(&rabbit.url(), &fx[1..2], false);
    amqp_publish(&url2, &fx[1..2], false);
    assert_eq!(sub.output().1.lines().count(), 2);
}

/// `--replay` reads bodies as they sit on RabbitMQ from a file (here
/// stdin) instead of a queue; with `--print` nothing else is needed, not
/// even an AMQP URL (only the deployment's name). A bad line is
/// dead-lettered and the rest goes on.
#[test]
fn replay_bodies_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixtures("legacy.jsonl");
    let mut input: Vec<u8> = Vec::new();
    for m in &fx[..2] {
        input.extend_from_slice(&m.body);
        input.push(b'\n');
    }
    input.extend_from_slice(b"not json\n");
    let mut child = Command::new(bin("firehose-nova"))
        .args(["--deployment", "cell1"])
        .args(["--replay", "-", "--print", "json", "--payload", "raw"])
        .arg("--dead-letter")
        .arg(dir.path().join("dl.jsonl"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let (out, _) = finish(child, WAIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let printed: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let topics: Vec<String> = printed
        .iter()
        .map(|p| p["topic"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = fx[..2].iter().map(|m| m.expected_topic("cell1")).collect();
    assert_eq!(topics, want);
    assert_eq!(
        printed[0]["payload"]["message_id"],
        fx[0].inner()["message_id"]
    );
    assert!(stderr.contains("replay read to the end"), "{stderr}");
    let dl = std::fs::read_to_string(dir.path().join("dl.jsonl")).unwrap();
    assert_eq!(dl.lines().count(), 1, "{dl}");
}

#[test]
fn print_json_and_yaml_instead_of_publishing() {
    let dir = tempfile::tempdir().unwrap();
    let rabbit = RabbitMq::start(&dir.path().join("rabbit"));
    declare(&rabbit.url(), "nova", false, &[]);
    let fx = fixtures("versioned.jsonl");
    for format in ["json", "yaml"] {
        // No broker at all: --print never connects to one.
        let mut br = Proc::spawn(
            "firehose-nova",
            Command::new(bin("firehose-nova"))
                .args([
                    "--amqp",
                    &rabbit.url(),
                    "--deployment",
                    "cell1",
                    "--print",
                    format,
                ])
                .args(["--broker", "mqtt://127.0.0.1:1"]),
        );
        br.wait_log("consuming nova notifications");
        amqp_publish(&rabbit.url(), &fx[..3], false);
        let want_topics: Vec<String> = fx[..3].iter().map(|m| m.expected_topic("cell1")).collect();
        wait_until(
            WAIT,
            || {
                let out = br.stdout_lines().join("\n");
                want_topics.iter().all(|t| out.contains(t.as_str()))
            },
            || "three printed events".into(),
        );
        let out = br.stdout_lines();
        if format == "json" {
            let first: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
            assert_eq!(first["topic"], want_topics[0]);
            assert_eq!(first["retain"], false);
            assert_eq!(first["payload"]["id"], fx[0].inner()["message_id"]);
        } else {
            let text = out.join("\n");
            assert!(text.starts_with("---\ntopic: nova/cell1/"), "{text}");
            assert!(
                text.contains("specversion: '1.0'") || text.contains("specversion: \"1.0\""),
                "{text}"
            );
        }
        br.signal("TERM");
        assert!(br.wait_exit().success(), "{}", br.logs());
        assert_eq!(
            queue_depth(&rabbit, "firehose.cell1"),
            (0, 0),
            "printed messages are acked"
        );
    }
}

/// RabbitMQ with TLS (checked against our test CA), and a user whose
/// password needs percent-escapes in the URL (`p@ss:w/rd%`), on two
/// deployments of one bridge: both consume and publish.
#[test]
fn amqps_and_percent_escaped_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_certs(&certs);
    let rabbit = RabbitMq::start_tls(&dir.path().join("rabbit"), &certs);
    rabbit.ctl(&["add_user", "fh", "p@ss:w/rd%"]);
    rabbit.ctl(&["set_permissions", "-p", "/", "fh", ".*", ".*", ".*"]);
    declare(&rabbit.url(), "nova", false, &[]);
    let (b, pw) = broker(dir.path());
    let cfg = dir.path().join("nova.toml");
    let tls_port = rabbit.tls_port.expect("amqps port");
    std::fs::write(
        &cfg,
        format!(
            "[publish]\nbroker = \"mqtt://{u}@{m}\"\npassword_file = \"{pw}\"\npayload = \"raw\"\n\
             [[source.deployments]]\nname = \"tls\"\namqp = \"amqps://fh:p%40ss%3Aw%2Frd%25@127.0.0.1:{tls_port}/%2f\"\nca = \"{ca}\"\n\
             [[source.deployments]]\nname = \"escaped\"\namqp = \"amqp://fh:p%40ss%3Aw%2Frd%25@127.0.0.1:{port}/%2f\"\n",
            u = BRIDGE.0,
            m = b.mqtt(),
            pw = pw.display(),
            ca = certs.join("ca.pem").display(),
            port = rabbit.port,
        ),
    )
    .unwrap();
    let br = Proc::spawn(
        "firehose-nova",
        Command::new(bin("firehose-nova"))
            .arg("--config")
            .arg(&cfg)
            .arg("--dead-letter")
            .arg(dir.path().join("dl.jsonl")),
    );
    br.wait_log_count("consuming nova notifications", 2);
    assert!(br.logs().contains("amqps://fh@127.0.0.1"), "{}", br.logs());
    assert!(
        !br.logs().contains("p%40ss") && !br.logs().contains("p@ss"),
        "the password never shows"
    );
    let sub = Sub::spawn(
        &b,
        &[
            "-t",
            "nova/+/compute/instance/delete/end",
            "-v",
            "-C",
            "2",
            "-W",
            "20",
        ],
    );
    amqp_publish(&rabbit.url(), &fixtures("legacy.jsonl")[..1], false);
    let (_, out, _) = sub.output();
    let topics: std::collections::BTreeSet<&str> =
        out.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(
        topics.into_iter().collect::<Vec<_>>(),
        vec![
            "nova/escaped/compute/instance/delete/end",
            "nova/tls/compute/instance/delete/end"
        ]
    );
}

#[test]
fn check_config_and_errors_that_name_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nova = |args: &[&str]| outcome(Command::new(bin("firehose-nova")).args(args));
    let pass = private_file(&d.join("amqp.pass"), "hunter2\n");
    let (ok, text) = nova(&[
        "--amqp",
        "amqp://nova@rabbit.example:5672/%2f",
        "--amqp-password-file",
        pass.to_str().unwrap(),
        "--deployment",
        "cell1",
        "--check-config",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("configuration OK")
            && text.contains("cell1 (amqp://nova@rabbit.example:5672/%2f)"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "the password never shows");

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, text) = nova(&[
        "--amqp",
        "amqp://nova@rabbit.example/%2f",
        "--amqp-password-file",
        pass.to_str().unwrap(),
        "--deployment",
        "cell1",
        "--check-config",
    ]);
    assert!(!ok);
    assert!(text.contains("chmod 0600"), "{text}");

    let ca = d.join("ca.pem");
    std::fs::write(&ca, "not used").unwrap();
    let (ok, text) = nova(&[
        "--amqp",
        "amqp://nova:pw@rabbit.example/%2f",
        "--amqp-ca",
        ca.to_str().unwrap(),
        "--deployment",
        "cell1",
        "--check-config",
    ]);
    assert!(!ok);
    assert!(text.contains("not amqps://"), "{text}");
    let (ok, text) = nova(&[
        "--amqp",
        "https://nova@rabbit/",
        "--deployment",
        "c",
        "--check-config",
    ]);
    assert!(!ok);
    assert!(text.contains("amqp[s]://USER"), "{text}");

    let (ok, text) = nova(&["--check-config"]);
    assert!(!ok);
    assert!(text.contains("--amqp URL --deployment NAME"), "{text}");
    let (ok, text) = nova(&["--amqp", "amqp://a@b/%2f", "--check-config"]);
    assert!(!ok);
    assert!(text.contains("--deployment NAME"), "{text}");

    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nova.toml");
    let (_, text) = nova(&["--config", sample.to_str().unwrap(), "--check-config"]);
    assert_sample_checks(&text);
}

#[test]
fn sample_config_has_every_key_and_only_known_ones() {
    use firehose_bridge::config::FileConfig;
    use firehose_nova::config::{DeploymentConfig, NovaConfig};
    // Every key the bridge knows, `None`s included (JSON keeps them), with
    // one deployment to show that table's keys.
    let mut full = FileConfig::<NovaConfig>::default();
    let one: DeploymentConfig =
        toml::from_str("name = \"cell1\"\namqp = \"amqp://nova@rabbit/%2f\"\n").unwrap();
    full.source.deployments.push(one);
    let known = json_keys(&serde_json::to_value(&full).unwrap());
    let sample = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nova.toml"),
    )
    .unwrap();
    assert_sample_complete("deploy/nova.toml", &sample, &known);
}

#[test]
fn help_example_copies_as_is() {
    // clap wraps long lines at the terminal width; an example that wraps
    // breaks when pasted. Every line of it stays within 80 columns.
    let out = run(std::process::Command::new(bin("firehose-nova")).arg("--help"));
    let text = String::from_utf8_lossy(&out.stdout);
    let example: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Example"))
        .collect();
    assert!(example.len() > 2, "{text}");
    for l in example {
        assert!(l.len() <= 80, "wraps: {l:?}");
    }
}

/// `--replay` also reads captures of deliveries (`{"exchange",
/// "routing_key", "body"}` per line), the form of the repository's own
/// fixtures: every fixture is published, none dead-lettered.
#[test]
fn replay_reads_the_fixture_captures_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/nova/versioned.jsonl");
    let dl = dir.path().join("dl.jsonl");
    let out = run(Command::new(bin("firehose-nova"))
        .args(["--deployment", "cell1", "--print", "json", "--replay"])
        .arg(&path)
        .arg("--dead-letter")
        .arg(&dl));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let printed = String::from_utf8_lossy(&out.stdout).lines().count();
    let lines = std::fs::read_to_string(&path).unwrap().lines().count();
    // (A service notification also gives the service's retained state.)
    assert!(
        printed >= lines,
        "an event for every captured delivery: {printed} of {lines}: {stderr}"
    );
    assert!(
        !dl.exists() || std::fs::read_to_string(&dl).unwrap().is_empty(),
        "nothing dead-lettered"
    );
}
