//! `firehose-load`: one publisher fanned out to N subscribers, measured
//! end to end. Prints wall time (first publish to last delivery), delivered
//! and lost counts, and latency percentiles from an HDR histogram. Every
//! loop is bounded by the message count and by `--timeout`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};

/// Fan-out load against an MQTT broker.
#[derive(Debug, Parser)]
#[command(name = "firehose-load", version)]
struct Args {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port (MQTT over TCP, or websockets with --ws).
    #[arg(long)]
    port: u16,
    /// Connect over websockets (path /mqtt).
    #[arg(long)]
    ws: bool,
    /// Subscribers.
    #[arg(long, default_value_t = 50)]
    subscribers: usize,
    /// Messages published.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Payload bytes per message (at least 16).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// QoS for publish and subscriptions.
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Publisher user name.
    #[arg(long)]
    username: Option<String>,
    /// Publisher password.
    #[arg(long)]
    password: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Label printed with the results.
    #[arg(long, default_value = "broker")]
    label: String,
}

fn options(a: &Args, id: &str) -> MqttOptions {
    let mut o = if a.ws {
        let mut o = MqttOptions::new(id, format!("ws://{}:{}/mqtt", a.host, a.port), a.port);
        o.set_transport(Transport::Ws);
        o
    } else {
        MqttOptions::new(id, &a.host, a.port)
    };
    o.set_keep_alive(Duration::from_secs(60));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(1000);
    o
}

fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    if a.size < 16 {
        bail!("--size must be at least 16 (the payload carries a timestamp)");
    }
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let epoch = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicU64::new(0));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(a.subscribers);
    let mut subs = Vec::new();
    for i in 0..a.subscribers {
        let (client, mut ev) = AsyncClient::new(options(&a, &format!("load-sub-{i}")), 10_000);
        client.subscribe("load/#", qos(a.qos)).await?;
        let received = received.clone();
        let last = last.clone();
        let ready = ready_tx.clone();
        let total = a.messages;
        subs.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let mut n = 0u64;
            while n < total && Instant::now() < deadline {
                let ev = match tokio::time::timeout_at(deadline.into(), ev.poll()).await {
                    Ok(Ok(e)) => e,
                    Ok(Err(e)) => {
                        eprintln!("subscriber {i}: {e}");
                        break;
                    }
                    Err(_) => break,
                };
                match ev {
                    Event::Incoming(Packet::SubAck(_)) => {
                        let _ = ready.send(()).await;
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        n += 1;
                        let now = epoch.elapsed().as_nanos() as u64;
                        let sent = u64::from_be_bytes(p.payload[..8].try_into().unwrap_or([0; 8]));
                        let _ = h.record(now.saturating_sub(sent) / 1000);
                        received.fetch_add(1, Relaxed);
                        last.fetch_max(now, Relaxed);
                    }
                    _ => {}
                }
            }
            let _ = client.disconnect().await;
            (n, h)
        }));
    }
    drop(ready_tx);
    for _ in 0..a.subscribers {
        tokio::time::timeout_at(deadline.into(), ready_rx.recv())
            .await
            .context("subscribers did not all get their SUBACK in time")?;
    }

    let mut po = options(&a, "load-pub");
    if let (Some(u), Some(p)) = (&a.username, &a.password) {
        po.set_credentials(u, p);
    }
    let (pubc, mut pev) = AsyncClient::new(po, 10_000);
    let pub_loop = tokio::spawn(async move {
        while Instant::now() < deadline {
            match tokio::time::timeout_at(deadline.into(), pev.poll()).await {
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
    });
    let start_ns = epoch.elapsed().as_nanos() as u64;
    let mut payload = vec![b'x'; a.size];
    for i in 0..a.messages {
        let now = epoch.elapsed().as_nanos() as u64;
        payload[..8].copy_from_slice(&now.to_be_bytes());
        payload[8..16].copy_from_slice(&i.to_be_bytes());
        pubc.publish("load/x", qos(a.qos), false, payload.clone())
            .await?;
    }
    let mut total = Histogram::<u64>::new(3)?;
    let mut delivered = 0;
    for s in subs {
        let (n, h) = s.await?;
        delivered += n;
        total.add(h)?;
    }
    pub_loop.abort();
    let wall = Duration::from_nanos(last.load(Relaxed).saturating_sub(start_ns));
    let expected = a.messages * a.subscribers as u64;
    println!(
        "{} transport={} subscribers={} messages={} size={} qos={} wall_s={:.3} delivered={} lost={} p50_us={} p99_us={} max_us={}",
        a.label,
        if a.ws { "ws" } else { "tcp" },
        a.subscribers,
        a.messages,
        a.size,
        a.qos,
        wall.as_secs_f64(),
        delivered,
        expected - delivered,
        total.value_at_quantile(0.5),
        total.value_at_quantile(0.99),
        total.max()
    );
    if delivered < expected {
        std::process::exit(2);
    }
    Ok(())
}
