//! `history-load`: publishes N nova-shaped events (versioned instance
//! notifications, each with its own message_id, four per instance:
//! create start/end, delete start/end) at QoS 1 as fast as the broker
//! takes them, for `scripts/bench-history`. Prints the publish time.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[derive(Debug, Parser)]
#[command(name = "history-load", version)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long)]
    port: u16,
    #[arg(long)]
    username: String,
    #[arg(long)]
    password: String,
    /// Events to publish.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Payload bytes per event (padded with noise: see `pad`).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// The first event's number (a second run adds new events).
    #[arg(long, default_value_t = 0)]
    start: u64,
}

const PHASES: [(&str, &str); 4] = [
    ("create", "start"),
    ("create", "end"),
    ("delete", "start"),
    ("delete", "end"),
];

/// `n` characters of base64 noise, different for every event: the
/// pessimistic case for history's compression (6 bits in 8 are news, as
/// in a key or a digest), where repeated letters would shrink to nothing.
fn pad(i: u64, n: usize) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            // xorshift64: cheap, and no two events share their noise.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(ALPHABET[(x >> 58) as usize])
        })
        .collect()
}

/// Event `i`: (topic, payload).
fn event(i: u64, size: usize) -> (String, Vec<u8>) {
    let (op, phase) = PHASES[(i % 4) as usize];
    let instance = format!("{:08x}-0000-4000-8000-{:012x}", i / 4, i / 4);
    let secs = 1_700_000_000 + i / 4 * 60 + if phase == "end" { 30 + i % 7 } else { 0 };
    let t = time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let ts = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.000000",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let mut v = serde_json::json!({
        "event_type": format!("instance.{op}.{phase}"),
        "message_id": format!("bench-{i:012}"),
        "timestamp": ts,
        "publisher_id": format!("nova-compute:host-{}", i % 97),
        "priority": "INFO",
        "_context_request_id": format!("req-{:032x}", i / 2),
        "payload": {
            "nova_object.name": "InstanceActionPayload",
            "nova_object.namespace": "nova",
            "nova_object.version": "1.8",
            "nova_object.data": {
                "uuid": instance,
                "host": format!("host-{}", i % 97),
                "state": if phase == "end" { "active" } else { "building" },
                "pad": "",
            }
        }
    });
    let len = v.to_string().len();
    if len < size {
        v["payload"]["nova_object.data"]["pad"] = pad(i, size - len).into();
    }
    (
        format!("nova/bench/instance/{op}/{phase}"),
        v.to_string().into_bytes(),
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let mut opts = MqttOptions::new(
        format!("history-load-{}", std::process::id()),
        &a.host,
        a.port,
    );
    opts.set_credentials(&a.username, &a.password);
    opts.set_inflight(1000);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(opts, 1000);
    let (n, size, start) = (a.events, a.size, a.start);
    let publisher = tokio::spawn(async move {
        for i in start..start + n {
            let (t, p) = event(i, size);
            client.publish(t, QoS::AtLeastOnce, false, p).await?;
        }
        anyhow::Ok(client)
    });
    let began = Instant::now();
    let mut acked = 0u64;
    let deadline = began + Duration::from_secs(600);
    while acked < n {
        if Instant::now() > deadline {
            bail!("only {acked} of {n} PUBACKs in 600 s");
        }
        match tokio::time::timeout(Duration::from_secs(30), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(Event::Incoming(Packet::ConnAck(c))))
                if c.code != rumqttc::ConnectReturnCode::Success =>
            {
                bail!("refused: {:?}", c.code)
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e).context("connection"),
            Err(_) => bail!("no progress for 30 s ({acked} of {n} acknowledged)"),
        }
    }
    let took = began.elapsed();
    let _ = publisher.await;
    println!(
        "published={n} seconds={:.3} rate={:.0}",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    Ok(())
}
