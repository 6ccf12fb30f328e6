//! firehose-nova against a real RabbitMQ and the real broker: every fixture
//! on its topic in both payload modes, other consumers undisturbed,
//! retained service state, bad bodies dead-lettered, and a paused (never
//! acked, never dropped) consumer while the broker is away.

mod common;
use common::*;
use firehose_testkit::*;

#[test]
fn every_notification_on_its_topic_in_both_modes_and_others_get_all() {
    let dir = tempfile::tempdir().unwrap();
    let rabbit = RabbitMq::start(&dir.path().join("rabbit"));
    let (b, pw) = broker(dir.path());
    let keys: &[&str] = &["notifications.*", "versioned_notifications.*"];
    declare(&rabbit.url(), "nova", false, &[("ceilometer", keys)]);
    let fx = all_fixtures();
    let services = fx
        .iter()
        .filter(|m| {
            m.inner()["event_type"]
                .as_str()
                .unwrap()
                .starts_with("service.")
        })
        .count();
    assert_eq!((fx.len(), services), (116, 3));

    for (deployment, mode) in [("cell1", "raw"), ("cell2", "cloudevents")] {
        let br = bridge(
            &rabbit,
            &b.mqtt().to_string(),
            &pw,
            dir.path(),
            deployment,
            &["--payload", mode, "--metrics", "127.0.0.1:0"],
        );
        br.wait_log("consuming nova notifications");
        let want = fx.len() + services;
        let filter = format!("nova/{deployment}/#");
        let sub = Sub::spawn(
            &b,
            &[
                "-t",
                &filter,
                "-F",
                "%t\t%x",
                "-C",
                &want.to_string(),
                "-W",
                "60",
            ],
        );
        amqp_publish(&rabbit.url(), &fx, false);
        let got = messages(sub);
        assert_eq!(
            got.len(),
            want,
            "{deployment}: every notification plus the service states"
        );
        let mut got = got.into_iter();
        for m in &fx {
            let (topic, payload) = got.next().unwrap();
            assert_eq!(topic, m.expected_topic(deployment));
            let inner = m.inner();
            if mode == "raw" {
                assert_eq!(
                    String::from_utf8(payload).unwrap(),
                    m.inner_text(),
                    "raw is the inner message"
                );
            } else {
                let ev: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                assert_eq!(ev["specversion"], "1.0");
                assert_eq!(ev["id"], inner["message_id"]);
                assert_eq!(
                    ev["type"],
                    format!("nova.{}", inner["event_type"].as_str().unwrap())
                );
                assert_eq!(ev["data"], inner);
                let ts = inner["timestamp"].as_str().unwrap();
                assert_eq!(
                    &ev["time"].as_str().unwrap()[..19],
                    ts[..19].replace(' ', "T"),
                    "time from the timestamp"
                );
                let p = &inner["payload"];
                let uuid = if p["nova_object.name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("Instance"))
                {
                    p["nova_object.data"]["uuid"].clone()
                } else if p.get("nova_object.name").is_none() {
                    p.get("instance_id")
                        .cloned()
                        .unwrap_or(serde_json::Value::Null)
                } else {
                    serde_json::Value::Null
                };
                assert_eq!(
                    ev.get("subject")
                        .cloned()
                        .unwrap_or(serde_json::Value::Null),
                    uuid,
                    "{}",
                    ev["type"]
                );
            }
            if inner["event_type"]
                .as_str()
                .unwrap()
                .starts_with("service.")
            {
                let (topic, payload) = got.next().unwrap();
                let data = &inner["payload"]["nova_object.data"];
                assert_eq!(
                    topic,
                    format!(
                        "nova/{deployment}/service/{}/{}",
                        data["binary"].as_str().unwrap(),
                        data["host"].as_str().unwrap()
                    )
                );
                let st: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                assert!(st["state"] == "up" || st["state"] == "down");
            }
        }
        drop(br);
    }
    // The other consumer's queue got every message, twice (two rounds).
    assert_eq!(queue_depth(&rabbit, "ceilometer").0, 2 * fx.len() as u64);
    // Retained service state: the last fixture (service.update) says up.
    let sub = Sub::spawn(
        &b,
        &[
            "-t",
            "nova/cell1/service/nova-compute/host1",
            "-C",
            "1",
            "-W",
            "10",
        ],
    );
    let (_, out, _) = sub.output();
    let st: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(st["state"], "up");
    assert_eq!(st["forced_down"], false);
    assert_eq!(st["last_seen_up"], "2012-10-29T13:42:05Z");
}

#[test]
fn bad_bodies_are_dead_lettered_acked_and_the_rest_published() {
    let dir = tempfile::tempdir().unwrap();
    let rabbit = RabbitMq::start(&dir.path().join("rabbit"));
    let (b, pw) = broker(dir.path());
    declare(&rabbit.url(), "nova", false, &[]);
    declare(&rabbit.url(), "nova.dlx", false, &[("dead", &["#"])]);
    let good = fixtures("legacy.jsonl");
    let bad = |body: &[u8]| AmqpMessage {
        exchange: "nova".into(),
        routing_key: "notifications.error".into(),
        body: body.to_vec(),
    };
    let huge = format!(
        "{{\"event_type\": \"x\", \"payload\": \"{}\"}}",
        "y".repeat(20_000)
    );
    let msgs = vec![
        good[0].clone(),
        bad(b"not json at all"),
        good[1].clone(),
        bad(br#"{"oslo.version": "2.0", "oslo.message": "{broken"}"#),
        bad(br#"{"message_id": "m", "payload": {}}"#),
        bad(huge.as_bytes()),
        good[2].clone(),
    ];
    let br = bridge(
        &rabbit,
        &b.mqtt().to_string(),
        &pw,
        dir.path(),
        "cell1",
        &[
            "--payload",
            "raw",
            "--max-body-bytes",
            "10000",
            "--dead-letter-exchange",
            "nova.dlx",
        ],
    );
    br.wait_log("consuming nova notifications");
    let sub = Sub::spawn(&b, &["-t", "nova/#", "-F", "%t\t%x", "-C", "3", "-W", "30"]);
    amqp_publish(&rabbit.url(), &msgs, false);
    let got = messages(sub);
    let texts: Vec<String> = got
        .into_iter()
        .map(|(_, p)| String::from_utf8(p).unwrap())
        .collect();
    assert_eq!(
        texts,
        good[..3]
            .iter()
            .map(AmqpMessage::inner_text)
            .collect::<Vec<_>>()
    );
    br.wait_log_count("input is not an event", 4);
    let dl = std::fs::read_to_string(dir.path().join("dead-letter-cell1.jsonl")).unwrap();
    let reasons: Vec<String> = dl
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reasons[0].contains("not JSON"));
    assert!(reasons[1].contains("oslo.message"));
    assert!(reasons[2].contains("no event_type"));
    assert!(reasons[3].contains("max_body_bytes"));
    // Acked (they never loop) and copied to the dead-letter exchange.
    wait_queues(&rabbit, &[("firehose.cell1", (0, 0)), ("dead", (4, 0))]);
}

#[test]
fn broker_away_pauses_consumption_nothing_acked_nothing_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let rabbit = RabbitMq::start(&dir.path().join("rabbit"));
    declare(&rabbit.url(), "nova", false, &[]);
    let port = free_port();
    let pw_dir = dir.path().join("pw");
    std::fs::create_dir_all(&pw_dir).unwrap();
    let passwd = passwd_file(&pw_dir, &[BRIDGE]);
    let pwfile = bridge_password_file(dir.path(), BRIDGE.1);
    let br = bridge(
        &rabbit,
        &format!("127.0.0.1:{port}"),
        &pwfile,
        dir.path(),
        "cell1",
        &["--prefetch", "20", "--payload", "raw"],
    );
    br.wait_log("consuming nova notifications");
    let fx = fixtures("legacy.jsonl");
    let many: Vec<AmqpMessage> = (0..10).flat_map(|_| fx.clone()).collect();
    amqp_publish(&rabbit.url(), &many, false);
    // No broker: the bridge holds `prefetch` messages, unacked; the rest wait.
    wait_queues(&rabbit, &[("firehose.cell1", (140, 20))]);
    // The broker comes: everything is delivered, then acked.
    let b = BrokerProc::on_port(port, &passwd, &[]);
    wait_queues(&rabbit, &[("firehose.cell1", (0, 0))]);
    b.wait_metric("firehose_broker_publish_received_total", 160);
}
