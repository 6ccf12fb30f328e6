//! `sdk-decode`: events per second the SDK's `Client` delivers, typed and
//! normalized, on one core, versus a bare rumqttc loop that only counts the
//! same messages, in one run (issue #9: goal >= 0.5x).
//!
//! Both readers hold a persistent session subscribed to `gerrit/#`; while
//! both are away, `count` gerrit fixture events (alternately raw and
//! CloudEvents, each with its own id) are published into the broker, which
//! queues them for each. Then each reader drains its queue on a
//! current-thread runtime and is timed. Starts its own firehose-broker on
//! loopback (testkit).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use firehose::gerrit::GerritEvent;
use firehose::{Client, Filter, Publishable};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[derive(Debug, Parser)]
#[command(name = "sdk-decode", version)]
struct Args {
    /// Events queued for each reader.
    #[arg(long, default_value_t = 100_000)]
    count: usize,
}

const USER: (&str, &str) = ("bench", "bench-pw");

fn payloads(count: usize) -> Result<Vec<(String, Vec<u8>)>> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/gerrit/stream-events.jsonl");
    let fx: Vec<serde_json::Value> = std::fs::read_to_string(p)?
        .lines()
        .filter(|l| !l.is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let now = time::OffsetDateTime::now_utc();
    Ok((0..count)
        .map(|i| {
            let mut v = fx[i % fx.len()].clone();
            v["eventCreatedOn"] = (1_700_000_000 + i as i64).into();
            let g = GerritEvent::parse(v.to_string().as_bytes()).expect("fixture");
            let payload = if i % 2 == 0 {
                g.raw()
            } else {
                g.cloudevent("ssh://review.example.org:29418", now)
                    .to_json()
            };
            (g.topic(), payload)
        })
        .collect())
}

fn options(url_port: u16, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", url_port);
    o.set_clean_session(false);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// Connects a persistent session, subscribes, and leaves.
async fn register(port: u16, id: &str) -> Result<()> {
    let (c, mut ev) = AsyncClient::new(options(port, id), 100);
    c.subscribe("gerrit/#", QoS::AtLeastOnce).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await? {
            break;
        }
    }
    c.disconnect().await?;
    while ev.poll().await.is_ok() {}
    Ok(())
}

async fn publish(port: u16, msgs: &[(String, Vec<u8>)]) -> Result<()> {
    let mut o = MqttOptions::new("bench-publisher", "127.0.0.1", port);
    o.set_credentials(USER.0, USER.1);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(200);
    let (c, mut ev) = AsyncClient::new(o, 1000);
    let n = msgs.len();
    let msgs = msgs.to_vec();
    tokio::spawn(async move {
        for (t, p) in msgs {
            if c.publish(t, QoS::AtLeastOnce, false, p).await.is_err() {
                return;
            }
        }
    });
    let mut acked = 0;
    while acked < n {
        if let Event::Incoming(Packet::PubAck(_)) = ev.poll().await? {
            acked += 1;
        }
    }
    Ok(())
}

/// The bare loop: counts PUBLISH packets (rumqttc acks them).
async fn drain_bare(port: u16, n: usize) -> Result<Duration> {
    let (_c, mut ev) = AsyncClient::new(options(port, "bench-bare"), 1000);
    let start = Instant::now();
    let mut got = 0;
    while got < n {
        if let Event::Incoming(Packet::Publish(_)) = ev.poll().await? {
            got += 1;
        }
    }
    Ok(start.elapsed())
}

/// The SDK: typed, normalized events from a subscription. With `tree`,
/// the reader also asks for each event's whole JSON tree (`data()`), which
/// the SDK builds only on demand.
async fn drain_sdk(port: u16, n: usize, session: &str, tree: bool) -> Result<Duration> {
    let client = Client::builder(&format!("mqtt://127.0.0.1:{port}"))
        .session(session)
        .connect()
        .await?;
    let start = Instant::now();
    let mut sub = client.subscribe(Filter::gerrit()).await?;
    let mut got = 0;
    let mut typed = 0;
    while got < n {
        let ev = sub.next().await.context("the client stopped")?;
        if matches!(ev.body, firehose::reader::Body::Gerrit(_)) {
            typed += 1;
        }
        if tree {
            std::hint::black_box(ev.data());
        }
        got += 1;
    }
    let t = start.elapsed();
    anyhow::ensure!(typed == n, "only {typed} of {n} typed");
    Ok(t)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let queue = args.count.to_string();
    let bytes = (args.count * 4096).to_string();
    let broker = firehose_testkit::BrokerProc::with_users(
        dir.path(),
        &[USER],
        &[
            "--max-queued-messages",
            &queue,
            "--max-queued-bytes",
            &bytes,
            "--max-queued-bytes-total",
            &(args.count * 8192).to_string(),
        ],
    );
    let port = broker.mqtt().port();
    let msgs = payloads(args.count)?;
    // The decoding alone, for comparison with the whole path.
    let t = Instant::now();
    for (topic, p) in &msgs {
        std::hint::black_box(firehose::reader::decode(topic, p, false));
    }
    let decode_only = t.elapsed();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        register(port, "bench-bare").await?;
        register(port, "bench-sdk").await?;
        register(port, "bench-sdk-tree").await?;
        publish(port, &msgs).await
    })?;
    eprintln!("queued {} events for each reader", args.count);
    let bare = rt.block_on(drain_bare(port, args.count))?;
    let sdk = rt.block_on(drain_sdk(port, args.count, "bench-sdk", false))?;
    let tree = rt.block_on(drain_sdk(port, args.count, "bench-sdk-tree", true))?;
    let rate = |d: Duration| args.count as f64 / d.as_secs_f64();
    println!("| reader (one core) | time | events/s |");
    println!("|---|---|---|");
    println!(
        "| bare rumqttc loop, counting | {:.2} s | {:.0} |",
        bare.as_secs_f64(),
        rate(bare)
    );
    println!(
        "| firehose SDK, typed + normalized | {:.2} s | {:.0} |",
        sdk.as_secs_f64(),
        rate(sdk)
    );
    println!(
        "| **ratio** (SDK / bare) | | **{:.2}x** |",
        rate(sdk) / rate(bare)
    );
    println!(
        "| firehose SDK, and each event's whole JSON tree (`data()`) | {:.2} s | {:.0} ({:.2}x) |",
        tree.as_secs_f64(),
        rate(tree),
        rate(tree) / rate(bare)
    );
    println!(
        "| (reader::decode alone, no network) | {:.2} s | {:.0} |",
        decode_only.as_secs_f64(),
        rate(decode_only)
    );
    Ok(())
}
