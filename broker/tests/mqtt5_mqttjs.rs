//! MQTT 5 semantics with MQTT.js's v5 client (npm, installed by
//! `./scripts/test`), beside paho's: QoS downgrade, subscription
//! identifiers in one copy, no-local, properties, retain-as-published,
//! QoS 2, topic aliases both ways, Maximum Packet Size (`js/v5.mjs` says
//! what each check is).

use std::process::Command;

use firehose_testkit::logins::PUBLISHER;
use firehose_testkit::*;

#[test]
fn mqtt_js_v5_semantics() {
    let js = js_drivers();
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[PUBLISHER], &[]);
    run_checks(
        Command::new("node").current_dir(&js).arg("v5.mjs").args([
            &format!("mqtt://{}", b.mqtt()),
            PUBLISHER.0,
            PUBLISHER.1,
        ]),
        &[
            "qos",
            "subscription-identifiers",
            "no-local",
            "properties",
            "retain-as-published",
            "qos2",
            "topic-aliases",
            "maximum-packet-size",
            "all",
        ],
    );
    assert_eq!(b.dropped("too_large_for_client"), 1, "the 200-byte message");
}
