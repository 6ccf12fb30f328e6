//! firehose-nova publishing into an existing broker instead of ours:
//! Debian's mosquitto with a password file, an ACL, TLS and persistence.
//! QoS 1 with MQTT 5 PUBACKs; a RabbitMQ message is acked only after
//! mosquitto's PUBACK; nothing is lost while mosquitto is stopped and
//! started again (the notifications published meanwhile wait in RabbitMQ,
//! the bridge's in-flight ones in its spool).

mod common;
use common::*;
use firehose_testkit::*;

use std::process::Command;

const N: usize = 1_000;

/// `n` notifications from the fixtures, each with its own message_id.
fn batch(from: usize, n: usize) -> Vec<AmqpMessage> {
    numbered(&all_fixtures(), "mq", from, n)
}

#[test]
fn nova_into_mosquitto_over_tls_across_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let mut mq = Mosquitto::start(
        dir.path(),
        &[BRIDGE],
        &format!(
            "topic read #\n\nuser {}\ntopic write nova/#\ntopic write firehose/status/#\n",
            BRIDGE.0
        ),
    );
    let rabbit = RabbitMq::start(&dir.path().join("rabbit"));
    declare(&rabbit.url(), "nova", true, &[]);
    let mut sub = Subscriber::new(mq.port, "nova/#");
    let bridge = Proc::spawn(
        "firehose-nova",
        Command::new(bin("firehose-nova"))
            .args(["--amqp", &rabbit.url(), "--deployment", "cell1"])
            .args([
                "--broker",
                &format!("mqtts://{}@localhost:{}", BRIDGE.0, mq.tls_port),
            ])
            .arg("--ca")
            .arg(dir.path().join("ca.pem"))
            .arg("--password-file")
            .arg(bridge_password_file(dir.path(), BRIDGE.1))
            .args(["--instance", "cell1"]),
    );
    bridge.wait_log("consuming nova notifications");
    bridge.wait_log("connected to the broker");
    amqp_publish(&rabbit.url(), &batch(0, N), true);
    assert!(sub.read_until(N), "the first {N} through mosquitto");
    // mosquitto goes away; nova keeps sending.
    mq.stop();
    bridge.wait_log("broker connection lost");
    amqp_publish(&rabbit.url(), &batch(N, N), true);
    mq.run();
    sub.raw = poll(
        WAIT,
        || Subscriber::try_connect(mq.port, "nova/#"),
        || format!("the subscriber to reconnect: {}", mq.logs()),
    );
    assert!(
        sub.read_until(2 * N),
        "every notification after mosquitto's restart: {} of {}",
        sub.seen.len(),
        2 * N
    );
    for i in 0..2 * N {
        assert!(sub.seen.contains_key(&format!("mq-{i:05}")), "mq-{i:05}");
    }
    eprintln!(
        "mosquitto restart: {} notifications, {} received, {} duplicates",
        2 * N,
        sub.received,
        sub.duplicates()
    );
    // Everything acked on RabbitMQ: mosquitto PUBACKed it all.
    wait_queues(&rabbit, &[("firehose.cell1", (0, 0))]);
}
