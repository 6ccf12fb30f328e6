//! Helpers for the nova tests: the fixtures as AMQP messages, publishing
//! them to a real RabbitMQ as nova would, and starting the bridge.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use firehose_testkit::*;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

pub use firehose_testkit::logins::NOVA as BRIDGE;

/// One fixture line: where nova published it and what.
#[derive(Debug, Clone)]
pub struct AmqpMessage {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
}

impl AmqpMessage {
    /// The inner oslo message as text: what raw mode publishes.
    pub fn inner_text(&self) -> String {
        let outer: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        match outer.get("oslo.message") {
            Some(serde_json::Value::String(s)) => s.clone(),
            _ => String::from_utf8(self.body.clone()).unwrap(),
        }
    }

    pub fn inner(&self) -> serde_json::Value {
        serde_json::from_str(&self.inner_text()).unwrap()
    }

    /// `nova/<deployment>/<event type with dots as levels>`.
    pub fn expected_topic(&self, deployment: &str) -> String {
        format!(
            "nova/{deployment}/{}",
            self.inner()["event_type"]
                .as_str()
                .unwrap()
                .replace('.', "/")
        )
    }
}

/// Every message of `fixtures/nova/<file>`.
pub fn fixtures(file: &str) -> Vec<AmqpMessage> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/nova")
        .join(file);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            AmqpMessage {
                exchange: v["exchange"].as_str().unwrap().to_owned(),
                routing_key: v["routing_key"].as_str().unwrap().to_owned(),
                body: v["body"].as_str().unwrap().as_bytes().to_vec(),
            }
        })
        .collect()
}

/// Every nova fixture, versioned then legacy.
pub fn all_fixtures() -> Vec<AmqpMessage> {
    let mut v = fixtures("versioned.jsonl");
    v.extend(fixtures("legacy.jsonl"));
    v
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Declares nova's topic exchange (as nova does) and, for each `(queue,
/// keys)`, a queue of another consumer bound to it.
pub fn declare(url: &str, exchange: &str, durable: bool, queues: &[(&str, &[&str])]) {
    block_on(async {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        for (q, keys) in queues {
            ch.queue_declare(
                (*q).into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
            for k in *keys {
                ch.queue_bind(
                    (*q).into(),
                    exchange.into(),
                    (*k).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            }
        }
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            conn.close(200, "bye".into()),
        )
        .await;
    })
}

/// Publishes messages with publisher confirms; `persistent` sets delivery
/// mode 2.
pub fn amqp_publish(url: &str, msgs: &[AmqpMessage], persistent: bool) {
    block_on(publish_async(url, msgs, persistent)).unwrap()
}

/// Like [`amqp_publish`], returning the error instead of panicking.
pub async fn publish_async(
    url: &str,
    msgs: &[AmqpMessage],
    persistent: bool,
) -> Result<(), lapin::Error> {
    // Bounded: a RabbitMQ going down mid-attempt can leave lapin's
    // connect, confirm or close waiting forever; the caller retries.
    let attempt = async {
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let props = if persistent {
            BasicProperties::default().with_delivery_mode(2)
        } else {
            BasicProperties::default()
        };
        let mut confirms = Vec::with_capacity(msgs.len());
        for m in msgs {
            confirms.push(
                ch.basic_publish(
                    m.exchange.as_str().into(),
                    m.routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &m.body,
                    props.clone(),
                )
                .await?,
            );
        }
        for c in confirms {
            c.await?;
        }
        // Confirmed: closing is a courtesy, and may not wait.
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            conn.close(200, "bye".into()),
        )
        .await;
        Ok(())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(30), attempt).await {
        Ok(r) => r,
        Err(_) => Err(lapin::Error::from(
            lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Error),
        )),
    }
}

/// Messages (ready + unacknowledged) in a queue.
pub fn queue_depth(rabbit: &RabbitMq, queue: &str) -> (u64, u64) {
    let out = rabbit.ctl(&[
        "list_queues",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ]);
    out.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&queue))
                .then(|| (f[1].parse().unwrap_or(0), f[2].parse().unwrap_or(0)))
        })
        .unwrap_or((0, 0))
}

/// Waits until each `(queue, (ready, unacknowledged))` holds, as
/// rabbitmqctl reports it.
pub fn wait_queues(rabbit: &RabbitMq, want: &[(&str, (u64, u64))]) {
    poll_every(
        std::time::Duration::from_millis(100),
        WAIT * 2,
        || {
            want.iter()
                .all(|(q, w)| queue_depth(rabbit, q) == *w)
                .then_some(())
        },
        || {
            let now: Vec<_> = want
                .iter()
                .map(|(q, _)| (*q, queue_depth(rabbit, q)))
                .collect();
            format!("queues {want:?}, now {now:?}")
        },
    );
}

/// A broker that knows the bridge's user; the bridge's password file.
pub fn broker(dir: &Path) -> (BrokerProc, PathBuf) {
    (
        BrokerProc::with_users(dir, &[BRIDGE], &[]),
        bridge_password_file(dir, BRIDGE.1),
    )
}

/// Starts firehose-nova for one deployment.
pub fn bridge(
    rabbit: &RabbitMq,
    mqtt: &str,
    pwfile: &Path,
    dir: &Path,
    deployment: &str,
    args: &[&str],
) -> Proc {
    Proc::spawn(
        "firehose-nova",
        Command::new(bin("firehose-nova"))
            .args(["--amqp", &rabbit.url(), "--deployment", deployment])
            .args(["--broker", &format!("mqtt://{}@{mqtt}", BRIDGE.0)])
            .arg("--password-file")
            .arg(pwfile)
            .args(["--instance", deployment])
            .arg("--dead-letter")
            .arg(dir.join(format!("dead-letter-{deployment}.jsonl")))
            .args(args),
    )
}

pub fn unhex(h: &str) -> Vec<u8> {
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// `mosquitto_sub -F '%t\t%x'` output as (topic, payload).
pub fn messages(sub: Sub) -> Vec<(String, Vec<u8>)> {
    let (_, out, _) = sub.output();
    out.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(t, h)| (t.to_owned(), unhex(h)))
        .collect()
}

/// Notifications `from..from + n` made from `fixtures` (in turn), each
/// with its own message_id `<prefix>-<i:05>`, in the envelope its fixture
/// had.
pub fn numbered(fixtures: &[AmqpMessage], prefix: &str, from: usize, n: usize) -> Vec<AmqpMessage> {
    (from..from + n)
        .map(|i| {
            let m = &fixtures[i % fixtures.len()];
            let mut inner = m.inner();
            inner["message_id"] = serde_json::Value::String(format!("{prefix}-{i:05}"));
            let outer: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
            let body = if outer.get("oslo.message").is_some() {
                serde_json::json!({"oslo.version": "2.0", "oslo.message": inner.to_string()})
                    .to_string()
            } else {
                inner.to_string()
            };
            AmqpMessage {
                exchange: m.exchange.clone(),
                routing_key: m.routing_key.clone(),
                body: body.into_bytes(),
            }
        })
        .collect()
}
