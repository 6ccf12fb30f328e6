//! `nova-throughput`: notifications per second through firehose-nova versus
//! a bare lapin consumer draining the same messages from the same RabbitMQ,
//! in one run. Both queues are bound to nova's exchange and filled by the
//! same publishes; each consumer acks every message (the bridge only after
//! the broker's PUBACK). Starts its own RabbitMQ node and firehose-broker on
//! loopback (testkit), prints one line per consumer and the ratio.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

#[derive(Debug, Parser)]
#[command(name = "nova-throughput", version)]
struct Args {
    /// Notifications to push through each consumer.
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Prefetch for both consumers.
    #[arg(long, default_value_t = 200)]
    prefetch: u16,
}

const KEYS: [&str; 2] = ["notifications.*", "versioned_notifications.*"];

/// `count` fixture notifications, each with its own message_id.
fn bodies(count: usize) -> Result<Vec<(String, Vec<u8>)>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/nova");
    let mut fx = Vec::new();
    for f in ["versioned.jsonl", "legacy.jsonl"] {
        for line in std::fs::read_to_string(dir.join(f))?.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let key = v["routing_key"].as_str().unwrap_or_default().to_owned();
            fx.push((key, v["body"].as_str().unwrap_or_default().to_owned()));
        }
    }
    Ok((0..count)
        .map(|i| {
            let (key, body) = &fx[i % fx.len()];
            let outer: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            let body = match outer.get("oslo.message").and_then(|m| m.as_str()) {
                Some(inner) => {
                    let mut m: serde_json::Value = serde_json::from_str(inner).unwrap_or_default();
                    m["message_id"] = format!("bench-{i}").into();
                    serde_json::json!({"oslo.version": "2.0", "oslo.message": m.to_string()})
                        .to_string()
                }
                None => {
                    let mut m = outer.clone();
                    m["message_id"] = format!("bench-{i}").into();
                    m.to_string()
                }
            };
            (key.clone(), body.into_bytes())
        })
        .collect())
}

async fn fill(url: &str, count: usize) -> Result<()> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        "nova".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    for q in ["bench.bare", "firehose.bench"] {
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(q.into(), opts, FieldTable::default())
            .await?;
        for k in KEYS {
            ch.queue_bind(
                q.into(),
                "nova".into(),
                k.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
    }
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    for chunk in bodies(count)?.chunks(1000) {
        let mut confirms = Vec::new();
        for (key, body) in chunk {
            let c = ch
                .basic_publish(
                    "nova".into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    body,
                    BasicProperties::default(),
                )
                .await?;
            confirms.push(c);
        }
        for c in confirms {
            c.await?;
        }
    }
    Ok(())
}

/// Drains `bench.bare`, acking each message; returns the time it took.
async fn bare(url: &str, count: usize, prefetch: u16) -> Result<Duration> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let start = Instant::now();
    let mut consumer = ch
        .basic_consume(
            "bench.bare".into(),
            "bare".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut n = 0;
    while n < count {
        let d = tokio::time::timeout(Duration::from_secs(60), consumer.next())
            .await
            .context("bare consumer stalled")?
            .context("consumer ended")??;
        // Parse as the bridge would, so both do the same work per message.
        let _: serde_json::Value = serde_json::from_slice(&d.data)?;
        d.ack(BasicAckOptions::default()).await?;
        n += 1;
    }
    Ok(start.elapsed())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("exe dir")?.to_owned();
    std::env::set_var("FIREHOSE_BIN_DIR", &bin_dir);
    let dir = tempfile::tempdir()?;
    let rabbit = firehose_testkit::RabbitMq::start(&dir.path().join("rabbit"));
    let passwd = firehose_testkit::passwd_file(dir.path(), &[("bench", "bench")]);
    let broker =
        firehose_testkit::BrokerProc::start(&["--passwd", passwd.to_str().context("path")?]);
    let pass = firehose_testkit::private_file(&dir.path().join("bench.pass"), "bench\n");
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(fill(&rabbit.url(), args.count))?;
    let bare_time = rt.block_on(bare(&rabbit.url(), args.count, args.prefetch))?;

    let start = Instant::now();
    let bridge = firehose_testkit::Proc::spawn(
        "firehose-nova",
        std::process::Command::new(bin_dir.join("firehose-nova"))
            .env("FIREHOSE_LOG", "info")
            .args(["--amqp", &rabbit.url(), "--deployment", "bench"])
            .args(["--prefetch", &args.prefetch.to_string()])
            .args(["--broker", &format!("mqtt://bench@{}", broker.mqtt())])
            .arg("--password-file")
            .arg(&pass)
            .arg("--dead-letter")
            .arg(dir.path().join("dl.jsonl"))
            .args(["--metrics", "127.0.0.1:0"]),
    );
    let addr = bridge.metrics_addr();
    let sample = "firehose_bridge_events_published_total{bridge=\"nova\"}";
    // Polled every 5 ms: the measurement's resolution.
    firehose_testkit::poll_every(
        Duration::from_millis(5),
        Duration::from_secs(300),
        || {
            (firehose_testkit::metric_at(addr, sample).unwrap_or(0) as usize >= args.count)
                .then_some(())
        },
        || format!("firehose-nova to publish {} notifications", args.count),
    );
    let bridge_time = start.elapsed();
    let rate = |d: Duration| args.count as f64 / d.as_secs_f64();
    println!(
        "bare lapin consumer: {} notifications in {:.3}s = {:.0}/s",
        args.count,
        bare_time.as_secs_f64(),
        rate(bare_time)
    );
    println!(
        "firehose-nova:       {} notifications in {:.3}s = {:.0}/s (each acked after its PUBACK)",
        args.count,
        bridge_time.as_secs_f64(),
        rate(bridge_time)
    );
    println!(
        "ratio (bridge / bare): {:.2}x",
        rate(bridge_time) / rate(bare_time)
    );
    Ok(())
}
