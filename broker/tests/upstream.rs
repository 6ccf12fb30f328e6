//! `--upstream`: a read-only mirror edge. What a bridge publishes to the
//! core reaches a subscriber of the edge, retained state included; the
//! edge's own clients cannot publish; across a restart of the core the
//! edge reconnects, re-syncs retained state and mirrors again.

use std::path::Path;

use firehose_testkit::*;

use firehose_testkit::logins::GERRIT as BRIDGE;

fn replay(dir: &Path, core: &BrokerProc, instance: &str) {
    let broker = format!("mqtt://{}", core.mqtt());
    let out = replay_gerrit(dir, &broker, BRIDGE, &["--instance", instance]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn an_edge_mirrors_the_core_across_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    let total = fixture_lines("gerrit/stream-events.jsonl").len();
    let passwd = passwd_file(dir.path(), &[BRIDGE]);
    let port = free_port();
    let core = BrokerProc::on_port(port, &passwd, &[]);
    let edge_dir = dir.path().join("edge");
    std::fs::create_dir_all(&edge_dir).unwrap();
    let edge = BrokerProc::with_users(
        &edge_dir,
        &[BRIDGE],
        &["--upstream", &format!("mqtt://127.0.0.1:{port}")],
    );
    edge.wait_metric("firehose_broker_upstream_connected", 1);
    // The edge's subscription is on the core before anything is published.
    core.wait_metric("firehose_broker_subscriptions", 1);

    let sub = Sub::spawn(
        &edge,
        &["-t", "gerrit/#", "-v", "-C", &total.to_string(), "-W", "30"],
    );
    edge.wait_metric("firehose_broker_subscriptions", 1);
    replay(dir.path(), &core, "one");
    let (code, out, _) = sub.output();
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), total);
    assert!(out.lines().all(|l| l.starts_with("gerrit/")));
    // Retained state: the bridge's status (down, after its replay).
    let status = Sub::spawn(
        &edge,
        &["-t", "firehose/status/gerrit/one", "-C", "1", "-W", "20"],
    );
    let (_, st, _) = status.output();
    let st: serde_json::Value = serde_json::from_str(st.trim()).unwrap();
    assert_eq!(st["state"], "down");
    // Read-only: a login that may publish on the core may not on the edge.
    let dropped = edge.dropped("acl_publish");
    Publisher::new(edge.mqtt(), BRIDGE).publish("gerrit/x/y", b"{}", false);
    assert_eq!(edge.dropped("acl_publish"), dropped + 1);

    // The core restarts (it keeps no state): the edge comes back by itself.
    let mut core = core;
    core.signal("TERM");
    assert!(core.wait_exit().success());
    edge.wait_metric_at_most("firehose_broker_upstream_connected", 0);
    let core = BrokerProc::on_port(port, &passwd, &[]);
    edge.wait_metric("firehose_broker_upstream_connected", 1);
    core.wait_metric("firehose_broker_subscriptions", 1);
    let sub = Sub::spawn(
        &edge,
        &[
            "-t",
            "gerrit/#",
            "-t",
            "firehose/status/gerrit/two",
            "-v",
            "-C",
            &(total + 2).to_string(),
            "-W",
            "30",
        ],
    );
    edge.wait_metric("firehose_broker_subscriptions", 2);
    replay(dir.path(), &core, "two");
    let (code, out, _) = sub.output();
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("gerrit/")).count(),
        total,
        "{out}"
    );
    assert!(out
        .lines()
        .any(|l| l.starts_with("firehose/status/gerrit/two ")));
}

/// A QoS 2 publish on the core reaches a QoS 2 reader of the edge at QoS 2
/// (the edge subscribes to the core at QoS 2 and republishes as received).
#[test]
fn an_edge_keeps_qos_2() {
    let dir = tempfile::tempdir().unwrap();
    let core = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let edge_dir = dir.path().join("edge");
    std::fs::create_dir_all(&edge_dir).unwrap();
    let edge = BrokerProc::with_users(
        &edge_dir,
        &[BRIDGE],
        &["--upstream", &format!("mqtt://{}", core.mqtt())],
    );
    edge.wait_metric("firehose_broker_upstream_connected", 1);
    core.wait_metric("firehose_broker_subscriptions", 1);
    let sub = Sub::spawn(&edge, &["-q", "2", "-t", "q2/#", "-C", "1", "-d"]);
    let out = mosquitto_pub(
        &core,
        &[
            "-u", BRIDGE.0, "-P", BRIDGE.1, "-q", "2", "-t", "q2/x", "-m", "two",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let (code, stdout, _) = sub.output();
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("received PUBLISH (d0, q2"),
        "delivered at QoS 2: {stdout}"
    );
}
