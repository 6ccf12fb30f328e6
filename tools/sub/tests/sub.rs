//! firehose-sub against the real broker: byte for byte what `mosquitto_sub
//! -v` prints for the same traffic; `--type`, `--where`, `--format`,
//! `--json`; `-C` and `-W` with mosquitto_sub's exit codes; websockets and
//! mqtts.

use std::process::{Child, Command, Stdio};

use firehose::Publishable;
use firehose_testkit::*;

use firehose_testkit::logins::PUBLISHER;

use firehose_testkit_events::{gerrit_events, publish_gerrit, Modes};

/// Publishes every fixture event, alternating raw and CloudEvents.
fn publish_all(b: &BrokerProc) -> usize {
    publish_gerrit(&mut Publisher::new(b.mqtt(), PUBLISHER), Modes::Alternating).len()
}

/// Starts firehose-sub with `args` and waits until the broker has its
/// subscriptions.
fn spawn_sub(b: &BrokerProc, args: &[&str], subscriptions: u64) -> Child {
    let before = b.metric("firehose_broker_subscriptions");
    let mut child = Command::new(bin("firehose-sub"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn firehose-sub");
    wait_until(
        WAIT,
        || {
            b.metric("firehose_broker_subscriptions") >= before + subscriptions
                || child.try_wait().expect("try_wait").is_some()
        },
        || "firehose-sub to subscribe".into(),
    );
    child
}

fn output(child: Child) -> (i32, String, String) {
    let (out, _) = finish(child, WAIT);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn hp(b: &BrokerProc) -> Vec<String> {
    vec!["-h".into(), "127.0.0.1".into(), "-p".into(), b.port()]
}

#[test]
fn same_output_as_mosquitto_sub_and_the_typed_filters() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[PUBLISHER], &[]);
    let n = gerrit_events().len().to_string();
    let merges = gerrit_events()
        .iter()
        .filter(|g| g.event_type() == "change-merged")
        .count();
    assert!(merges >= 2);
    let merges_s = merges.to_string();
    let base = hp(&b);
    let with = |extra: &[&str]| -> Vec<String> {
        let mut v = base.clone();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let args = with(&["-t", "gerrit/#", "-v", "-C", &n, "-W", "30"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mosq = Sub::spawn_args(&b, &args);
    let ours = spawn_sub(&b, &refs, 1);
    let merged = with(&[
        "-t",
        "#",
        "--type",
        "gerrit.change-merged",
        "--format",
        "{{ type }} {{ subject }} {{ topic }}",
        "-C",
        &merges_s,
        "-W",
        "30",
    ]);
    let merged_refs: Vec<&str> = merged.iter().map(String::as_str).collect();
    let typed = spawn_sub(&b, &merged_refs, 1);
    let where_args = with(&[
        "-t",
        "gerrit/#",
        "--where",
        r#".data.change.project == "qt/qtbase" or .data.project == "qt/qtbase""#,
        "--json",
        "-C",
        "2",
        "-W",
        "30",
    ]);
    let where_refs: Vec<&str> = where_args.iter().map(String::as_str).collect();
    let filtered = spawn_sub(&b, &where_refs, 1);

    publish_all(&b);

    let (mcode, mout, _) = mosq.output();
    let (code, out, err) = output(ours);
    assert_eq!((code, mcode), (0, 0), "{err}");
    assert_eq!(out, mout, "byte for byte what mosquitto_sub -v prints");

    let (code, out, err) = output(typed);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), merges, "{out}");
    for l in &lines {
        assert!(l.starts_with("gerrit.change-merged "), "{l}");
        assert!(l.ends_with("/change-merged"), "{l}");
    }

    let (code, out, err) = output(filtered);
    assert_eq!(code, 0, "{err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{out}");
    for e in &events {
        assert!(
            e["topic"]
                .as_str()
                .unwrap()
                .starts_with("gerrit/qt/qtbase/"),
            "{e}"
        );
        for key in [
            "id", "source", "type", "time", "subject", "data", "retained",
        ] {
            assert!(e.get(key).is_some(), "{key} in {e}");
        }
    }
}

#[test]
fn timeout_exit_code_and_connection_errors() {
    let b = BrokerProc::start(&[]);
    let mut args = hp(&b);
    args.extend(["-t", "nothing/here", "-W", "1"].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, _) = output(spawn_sub(&b, &refs, 1));
    assert_eq!(code, 27, "as mosquitto_sub on -W");
    let port = free_port().to_string();
    let out =
        run(Command::new(bin("firehose-sub")).args(["-h", "127.0.0.1", "-p", &port, "-t", "#"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
    let out = run(Command::new(bin("firehose-sub")).args([
        "-h",
        "127.0.0.1",
        "--where",
        ".a |",
        "-t",
        "#",
    ]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--where"));
    let out = run(Command::new(bin("firehose-sub")).args(["-h", "127.0.0.1"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-t FILTER"));
    // mqtt:// to the broker's websocket port: the error says so.
    let ws = b.ws.expect("ws listener").port().to_string();
    let out =
        run(Command::new(bin("firehose-sub")).args(["-h", "127.0.0.1", "-p", &ws, "-t", "#"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("try ws://HOST:PORT/mqtt"), "{err}");
    // A filter MQTT refuses is named with the rule it breaks, before any
    // connection (mosquitto_sub names it too).
    for (filter, rule) in [
        ("a/#/b", "`#` stands alone"),
        ("gerrit/+x", "`+` stands alone"),
    ] {
        let out = run(Command::new(bin("firehose-sub")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            filter,
        ]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(filter) && err.contains(rule), "{err}");
        assert!(
            !err.contains("cannot connect"),
            "checked before connecting: {err}"
        );
    }
}

#[test]
fn websockets_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let tls_listener = TlsListener::new(dir.path());
    let pw = passwd_file(dir.path(), &[PUBLISHER]);
    let mut flags = tls_listener.flags();
    flags.extend(["--passwd", pw.to_str().unwrap()]);
    let b = BrokerProc::start(&flags);
    let ws = format!("ws://{}/mqtt", b.ws.expect("ws listener"));
    let mqtts = format!(
        "mqtts://localhost:{}",
        b.mqtts.expect("mqtts listener").port()
    );
    let ca = path_str(dir.path(), "ca.pem");
    let over_ws = spawn_sub(
        &b,
        &["-L", &ws, "-t", "gerrit/#", "-C", "1", "-W", "30", "--json"],
        1,
    );
    let over_tls = spawn_sub(
        &b,
        &[
            "-L", &mqtts, "--cafile", &ca, "-t", "gerrit/#", "-C", "1", "-W", "30", "-v",
        ],
        1,
    );
    let mut p = Publisher::new(b.mqtt(), PUBLISHER);
    let g = &gerrit_events()[0];
    p.publish(&g.topic(), &g.raw(), false);
    let (code, out, err) = output(over_ws);
    assert_eq!(code, 0, "{err}");
    let e: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(e["type"], format!("gerrit.{}", g.event_type()));
    let (code, out, err) = output(over_tls);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{} {}\n", g.topic(), g.text()));
}
