//! MQTT 5 semantics with a real v5 client (paho-mqtt in Python, installed
//! by `./scripts/test`): QoS downgrade, retain handling, retain-as-
//! published, no-local, subscription identifiers, properties live and
//! retained, message expiry, Receive Maximum, Maximum Packet Size, topic
//! aliases both ways, will QoS 2, session expiry from DISCONNECT, expiry
//! of messages queued for an absent client
//! (`paho_v5.py` says what each check is).

use std::path::Path;
use std::process::Command;

use firehose_testkit::logins::PUBLISHER;
use firehose_testkit::*;

#[test]
fn paho_v5_semantics() {
    let python = require_paho();
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[PUBLISHER], &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/paho_v5.py");
    run_checks(
        Command::new(&python)
            .arg(&script)
            .args(["127.0.0.1", &b.port(), PUBLISHER.0, PUBLISHER.1]),
        &[
            "qos",
            "retain-handling",
            "retain-as-published",
            "no-local",
            "subscription-identifiers",
            "properties",
            "message-expiry",
            "receive-maximum",
            "maximum-packet-size",
            "topic-aliases",
            "will-qos2",
            "session-expiry",
            "queued-expiry",
            "all",
        ],
    );
    assert_eq!(b.dropped("too_large_for_client"), 1, "the 200-byte message");
    assert!(
        b.dropped("message_expired") >= 1,
        "the queued message that expired is counted"
    );
}
