//! Debian's mosquitto_sub/mosquitto_pub against the real broker binary:
//! anonymous read-only, authenticated publishers, ACL files, retained
//! messages, wills, `$SYS`, and TLS with a CA the test generates.

use firehose_testkit::logins::PUBLISHER;
use firehose_testkit::*;
use std::process::Command;

fn broker_with_users(extra: &[&str]) -> (BrokerProc, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let users = [PUBLISHER, ("Gerrit_Bridge", "pw2")];
    (BrokerProc::with_users(dir.path(), &users, extra), dir)
}

/// mosquitto_pub as the "bridge" user; true when it succeeded.
fn publish_as_bridge(b: &BrokerProc, args: &[&str]) -> bool {
    let mut all = vec!["-u", PUBLISHER.0, "-P", PUBLISHER.1];
    all.extend_from_slice(args);
    mosquitto_pub(b, &all).status.success()
}

#[test]
fn anonymous_reads_authenticated_writes_v311_and_v5() {
    let (b, _d) = broker_with_users(&[]);
    for v in ["mqttv311", "mqttv5"] {
        let sub = Sub::spawn(&b, &["-V", v, "-t", "gerrit/#", "-v", "-C", "1"]);
        let out = mosquitto_pub(
            &b,
            &[
                "-V",
                v,
                "-u",
                "Gerrit_Bridge",
                "-P",
                "pw2",
                "-q",
                "1",
                "-t",
                "gerrit/openstack/nova/comment-added",
                "-m",
                "{\"type\":\"comment-added\"}",
            ],
        );
        assert!(out.status.success(), "{out:?}");
        let (code, stdout, _) = sub.output();
        assert_eq!(code, 0);
        assert_eq!(
            stdout.trim(),
            "gerrit/openstack/nova/comment-added {\"type\":\"comment-added\"}"
        );
    }
}

#[test]
fn anonymous_publish_is_dropped_but_acknowledged() {
    let (b, _d) = broker_with_users(&[]);
    let sub = Sub::spawn(&b, &["-t", "x/#", "-v", "-C", "1"]);
    // v3.1.1 QoS 1: PUBACK as usual (mosquitto's convention), message dropped.
    let out = mosquitto_pub(&b, &["-q", "1", "-t", "x/denied", "-m", "no"]);
    assert!(out.status.success(), "{out:?}");
    // v5 QoS 1: PUBACK reason 0x87; mosquitto_pub reports it.
    let out = mosquitto_pub(
        &b,
        &["-V", "mqttv5", "-q", "1", "-t", "x/denied", "-m", "no"],
    );
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("not authori"), "v5 publisher told: {err}");
    assert_eq!(b.dropped("acl_publish"), 2);
    let out = mosquitto_pub(
        &b,
        &[
            "-u",
            PUBLISHER.0,
            "-P",
            PUBLISHER.1,
            "-t",
            "x/ok",
            "-m",
            "yes",
        ],
    );
    assert!(out.status.success());
    let (_, stdout, _) = sub.output();
    assert_eq!(
        stdout.trim(),
        "x/ok yes",
        "only the authenticated message arrives"
    );
}

#[test]
fn wrong_password_and_case_sensitive_users() {
    let (b, _d) = broker_with_users(&[]);
    for (u, p) in [
        ("bridge", "nope"),
        ("gerrit_bridge", "pw2"),
        ("nobody", "x"),
    ] {
        let out = mosquitto_pub(&b, &["-u", u, "-P", p, "-t", "a", "-m", "x"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(
            err.contains("not authorised") || err.contains("bad user name or password"),
            "{err}"
        );
    }
    assert_eq!(b.dropped("bad_credentials"), 3);
    // Passwords never appear in the logs.
    assert!(!b.logs().contains("nope"));
}

#[test]
fn acl_file_rules() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic read public/#\n\nuser bridge\ntopic readwrite public/#\ntopic write gerrit/#\n\npattern readwrite clients/%u/#\n").unwrap();
    let (b, _d) = broker_with_users(&["--acl", acl.to_str().unwrap()]);
    // Anonymous: may read public/#, not other topics.
    let out = run(
        Command::new(require("mosquitto_sub", "mosquitto-clients")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &b.port(),
            "-V",
            "mqttv5",
            "-t",
            "secret/#",
            "-C",
            "1",
            "-W",
            "1",
        ]),
    );
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("denied"), "denied subscription: {out:?}");
    assert!(b.dropped("acl_subscribe") >= 1);
    let sub = Sub::spawn(&b, &["-t", "public/#", "-v", "-C", "1"]);
    // bridge may not write outside its rules...
    let out = mosquitto_pub(
        &b,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-u",
            PUBLISHER.0,
            "-P",
            PUBLISHER.1,
            "-t",
            "nova/x",
            "-m",
            "no",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr)
        .to_lowercase()
        .contains("not authori"));
    // ...and may through a pattern and a topic rule.
    assert!(publish_as_bridge(
        &b,
        &["-t", "clients/bridge/x", "-m", "p"]
    ));
    assert!(publish_as_bridge(&b, &["-t", "public/news", "-m", "hello"]));
    let (_, out, _) = sub.output();
    assert_eq!(out.trim(), "public/news hello");
}

#[test]
fn retained_messages_and_sys_topics() {
    let (b, _d) = broker_with_users(&["--sys-interval", "1"]);
    assert!(publish_as_bridge(
        &b,
        &[
            "-r",
            "-q",
            "1",
            "-t",
            "firehose/status/gerrit/a",
            "-m",
            "up"
        ]
    ));
    let sub = Sub::spawn(&b, &["-t", "firehose/status/#", "-v", "-C", "1"]);
    assert_eq!(sub.output().1.trim(), "firehose/status/gerrit/a up");
    b.wait_metric("firehose_broker_retained_messages", 1);
    // $SYS under mosquitto's names.
    let sub = Sub::spawn(
        &b,
        &[
            "-t",
            "$SYS/broker/version",
            "-t",
            "$SYS/broker/clients/connected",
            "-v",
            "-C",
            "2",
        ],
    );
    let (_, out, _) = sub.output();
    assert!(out.contains("$SYS/broker/version firehose-broker"), "{out}");
    assert!(out.contains("$SYS/broker/clients/connected "), "{out}");
    // '#' never matches $SYS: with $SYS updating every second, '#' still
    // receives only the ordinary message.
    let sub = Sub::spawn(&b, &["-t", "#", "-v", "-C", "2"]);
    // Wait for one $SYS tick after '#' subscribed: the first $SYS message
    // is the snapshot sent on SUBSCRIBE, the second is a tick.
    let (mut sys, _) = Raw::connect(b.mqtt(), 4, "sys-tick", None);
    sys.send(&subscribe(4, 1, "$SYS/broker/uptime", 0));
    let mut publishes = 0;
    while publishes < 2 {
        let (t, _) = sys.read().expect("$SYS update");
        if t & 0xf0 == 0x30 {
            publishes += 1;
        }
    }
    assert!(publish_as_bridge(&b, &["-t", "plain/topic", "-m", "m"]));
    let (_, out, _) = sub.output();
    assert!(!out.contains("$SYS"), "{out}");
    assert!(out.contains("plain/topic m"), "{out}");
    // Clearing a retained message.
    assert!(publish_as_bridge(
        &b,
        &["-r", "-n", "-t", "firehose/status/gerrit/a"]
    ));
    let out = run(
        Command::new(require("mosquitto_sub", "mosquitto-clients")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &b.port(),
            "-t",
            "firehose/status/#",
            "-C",
            "1",
            "-W",
            "1",
        ]),
    );
    assert!(out.stdout.is_empty(), "retained message was cleared");
}

#[test]
fn wills_fire_only_where_the_client_may_write() {
    let (b, _d) = broker_with_users(&[]);
    let sub = Sub::spawn(&b, &["-t", "firehose/status/#", "-v", "-C", "1"]);
    let mut with_will = Command::new(require("mosquitto_sub", "mosquitto-clients"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &b.port(),
            "-u",
            PUBLISHER.0,
            "-P",
            PUBLISHER.1,
            "-t",
            "nothing",
            "--will-topic",
            "firehose/status/gerrit/x",
            "--will-payload",
            "down",
        ])
        .spawn()
        .unwrap();
    b.wait_metric("firehose_broker_clients_connected", 2);
    with_will.kill().unwrap(); // SIGKILL: no DISCONNECT, so the will fires
    let _ = with_will.wait();
    assert_eq!(sub.output().1.trim(), "firehose/status/gerrit/x down");
    // An anonymous client may not leave a will: refused at CONNECT.
    let out = run(
        Command::new(require("mosquitto_sub", "mosquitto-clients")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &b.port(),
            "-t",
            "a",
            "--will-topic",
            "w",
            "--will-payload",
            "x",
            "-C",
            "1",
            "-W",
            "2",
        ]),
    );
    assert!(!out.status.success());
    assert_eq!(b.dropped("acl_will"), 1);
}

#[test]
fn tls_listener_with_generated_ca() {
    let dir = tempfile::tempdir().unwrap();
    let tls_listener = TlsListener::new(dir.path());
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_owned();
    let (b, _d) = broker_with_users(&tls_listener.flags());
    let tls_port = b.mqtts.expect("mqtts").port().to_string();
    for v in ["mqttv311", "mqttv5"] {
        let tls = |rest: &[&str]| -> Vec<String> {
            let mut a = vec!["-h", "127.0.0.1", "-p", &tls_port, "--cafile"]
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>();
            a.push(p("ca.pem"));
            a.extend(["-V".to_owned(), v.to_owned()]);
            a.extend(rest.iter().map(|s| s.to_string()));
            a
        };
        let sub = Sub::spawn_args(&b, &tls(&["-t", "tls/#", "-v", "-C", "1", "-W", "15"]));
        let out = run(
            Command::new(require("mosquitto_pub", "mosquitto-clients")).args(tls(&[
                "-u",
                PUBLISHER.0,
                "-P",
                PUBLISHER.1,
                "-t",
                "tls/x",
                "-m",
                "over tls",
            ])),
        );
        assert!(out.status.success(), "{out:?}");
        assert_eq!(sub.output().1.trim(), "tls/x over tls");
        b.wait_metric_at_most("firehose_broker_subscriptions", 0);
    }
    // A client that does not trust the CA is refused by TLS.
    let out = run(
        Command::new(require("mosquitto_pub", "mosquitto-clients")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &tls_port,
            "--capath",
            "/nonexistent",
            "-t",
            "a",
            "-m",
            "x",
        ]),
    );
    assert!(!out.status.success());
}

/// Overlapping subscriptions of one v3.1.1 client (`ov/#`, `ov/+`,
/// `ov/x`): one copy per message (MQTT-3.3.4-2), at the highest granted
/// QoS. With a copy per filter, mosquitto_sub would stop (`-C 4`) before
/// the marker.
#[test]
fn overlapping_subscriptions_of_mosquitto_sub_get_one_copy() {
    let (b, _d) = broker_with_users(&[]);
    let sub = Sub::spawn(
        &b,
        &[
            "-V", "mqttv311", "-q", "1", "-t", "ov/#", "-t", "ov/+", "-t", "ov/x", "-v", "-C", "4",
        ],
    );
    for m in ["1", "2", "3"] {
        assert!(publish_as_bridge(&b, &["-q", "1", "-t", "ov/x", "-m", m]));
    }
    assert!(publish_as_bridge(&b, &["-t", "ov/end", "-m", "end"]));
    let (code, stdout, _) = sub.output();
    assert_eq!(code, 0);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["ov/x 1", "ov/x 2", "ov/x 3", "ov/end end"]
    );
}
