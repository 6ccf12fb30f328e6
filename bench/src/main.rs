//! `firehose-load`: load cases for an MQTT broker, each measured end to end
//! and printed as one `key=value` line that `scripts/bench*` turn into
//! tables. Every loop is bounded by a count and by `--timeout`.
//!
//! - `fanout`: P publishers → S subscribers, N messages each (wall time,
//!   delivered / expected, latency percentiles);
//! - `latency`: a fixed publish rate to S subscribers (latency
//!   percentiles, broker CPU);
//! - `idle`: N idle subscribers, each with its own filter (connect time,
//!   broker RSS per client);
//! - `rounds`: N idle clients connect and leave, R times (RSS after each);
//! - `churn`: N short connections, each with a random filter (time, RSS
//!   growth);
//! - `topics`: N distinct topics published once (RSS growth).
//!
//! Memory and CPU are read from `/proc/<--pid>`, the broker under test.

mod hostile;
mod raw;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Parser, Subcommand};
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS, Transport};

/// Load cases against an MQTT broker.
#[derive(Debug, Parser)]
#[command(name = "firehose-load", version)]
struct Cli {
    #[command(subcommand)]
    case: Case,
}

#[derive(Debug, Subcommand)]
enum Case {
    /// P publishers → S subscribers of `load/#`, N messages per publisher, as fast as they go.
    Fanout(Fanout),
    /// A fixed publish rate to S subscribers: latency percentiles and broker CPU.
    Latency(Latency),
    /// N idle subscribers, each with its own filter: connect time and broker RSS per client.
    Idle(Idle),
    /// N idle clients connect, idle, and disconnect, R times: broker RSS after each round.
    Rounds(Rounds),
    /// N short connections, each subscribing a random filter: time and broker RSS growth.
    Churn(Churn),
    /// N distinct topics published once each: broker RSS growth.
    Topics(Topics),
    /// A bridge-like QoS 1 publisher's throughput beside R hostile readers
    /// (issue #18): slow on purpose, never acking, or never reading.
    Hostile(HostileArgs),
    /// R retained messages, then one client sends P SUBSCRIBEs repeating
    /// `#` N times each and never reads: broker RSS growth, and whether
    /// another client is still served.
    SubFlood(SubFlood),
}

#[derive(Debug, ClapArgs)]
struct HostileArgs {
    #[command(flatten)]
    t: Target,
    /// Hostile readers attached (0: the publisher alone).
    #[arg(long, default_value_t = 0)]
    readers: usize,
    #[arg(long, value_enum, default_value_t = hostile::Manner::SlowAck)]
    manner: hostile::Manner,
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    #[arg(long, default_value_t = 256)]
    size: usize,
}

#[derive(Debug, ClapArgs)]
struct SubFlood {
    #[command(flatten)]
    t: Target,
    #[arg(long, default_value_t = 100_000)]
    retained: u64,
    #[arg(long, default_value_t = 5)]
    packets: u16,
    #[arg(long, default_value_t = 20_000)]
    repeat: usize,
    /// Seconds RSS is watched after the flood.
    #[arg(long, default_value_t = 5)]
    settle: u64,
}

/// Where the broker is and who publishes.
#[derive(Debug, Clone, ClapArgs)]
struct Target {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1", global = true)]
    host: String,
    /// Broker port (MQTT over TCP, or websockets with --ws).
    #[arg(long, default_value_t = 1883, global = true)]
    port: u16,
    /// Connect over websockets (path /mqtt).
    #[arg(long, global = true)]
    ws: bool,
    /// Publisher user name.
    #[arg(long, global = true)]
    username: Option<String>,
    /// Publisher password.
    #[arg(long, global = true)]
    password: Option<String>,
    /// PID of the broker, for its RSS and CPU time.
    #[arg(long, global = true)]
    pid: Option<u32>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120, global = true)]
    timeout: u64,
    /// QoS 1/2 publishes a publisher keeps unacknowledged. mosquitto
    /// refuses QoS 2 publishes beyond its max_inflight_messages (20; PUBREC
    /// 0x97, which a 3.1.1 client never sees), so QoS 2 comparisons use 20.
    #[arg(long, default_value_t = 1000, global = true)]
    inflight: u16,
    /// Label printed with the results.
    #[arg(long, default_value = "broker", global = true)]
    label: String,
    /// Subscribers keep persistent sessions (clean session 0), which a
    /// broker with persistence writes to disk.
    #[arg(long, global = true)]
    persistent: bool,
}

#[derive(Debug, ClapArgs)]
struct Fanout {
    #[command(flatten)]
    t: Target,
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    #[arg(long, default_value_t = 50)]
    subscribers: usize,
    /// Messages per publisher.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Payload bytes per message (at least 16).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// QoS for publishes and subscriptions.
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// The topics' first level: publishers on `<prefix>/<n>`, readers on
    /// `<prefix>/#` (bench-history compares a prefix history stores with
    /// one it does not, on the same broker).
    #[arg(long, default_value = "load")]
    prefix: String,
}

#[derive(Debug, ClapArgs)]
struct Latency {
    #[command(flatten)]
    t: Target,
    #[arg(long, default_value_t = 50)]
    subscribers: usize,
    /// Messages per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// The clients: `bare` (hand-written MQTT 3.1.1, one socket read per
    /// wake-up: measures the broker) or `rumqttc` (a full client library:
    /// measures what an application would see).
    #[arg(long, value_enum, default_value_t = LatencyClient::Bare)]
    client: LatencyClient,
}

/// Which clients the latency case runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LatencyClient {
    Bare,
    Rumqttc,
}

#[derive(Debug, ClapArgs)]
struct Idle {
    #[command(flatten)]
    t: Target,
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Spread clients over this many source addresses 127.0.0.1..N
    /// (one address has about 28,000 ephemeral ports).
    #[arg(long, default_value_t = 1)]
    sources: u8,
}

#[derive(Debug, ClapArgs)]
struct Rounds {
    #[command(flatten)]
    t: Target,
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

#[derive(Debug, ClapArgs)]
struct Churn {
    #[command(flatten)]
    t: Target,
    #[arg(long, default_value_t = 20_000)]
    connections: usize,
    /// Connections open at once.
    #[arg(long, default_value_t = 50)]
    parallel: usize,
}

#[derive(Debug, ClapArgs)]
struct Topics {
    #[command(flatten)]
    t: Target,
    #[arg(long, default_value_t = 100_000)]
    topics: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    raise_fd_limit();
    match Cli::parse().case {
        Case::Fanout(a) => fanout(a).await,
        Case::Latency(a) => latency(a).await,
        Case::Idle(a) => idle(a).await,
        Case::Rounds(a) => rounds(a).await,
        Case::Churn(a) => churn(a).await,
        Case::Topics(a) => topics(a).await,
        Case::Hostile(a) => hostile_case(a).await,
        Case::SubFlood(a) => sub_flood(a).await,
    }
}

/// Raises the soft open-files limit to the hard one: idle cases hold one
/// socket per client.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) used by `pid`.
fn cpu_secs(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name; utime and stime are 14 and 15.
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

fn options(t: &Target, id: &str) -> MqttOptions {
    let mut o = if t.ws {
        let mut o = MqttOptions::new(id, format!("ws://{}:{}/mqtt", t.host, t.port), t.port);
        o.set_transport(Transport::Ws);
        o
    } else {
        MqttOptions::new(id, &t.host, t.port)
    };
    o.set_keep_alive(Duration::from_secs(60));
    o.set_clean_session(!t.persistent);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(1000);
    o
}

/// A client with TCP_NODELAY, as brokers' own clients use: without it,
/// Nagle's algorithm adds tens of milliseconds to small messages.
fn client(o: MqttOptions) -> (AsyncClient, EventLoop) {
    let (c, mut ev) = AsyncClient::new(o, 10_000);
    let mut n = NetworkOptions::new();
    n.set_tcp_nodelay(true);
    ev.set_network_options(n);
    (c, ev)
}

fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Subscribers of `filter` that count and time what they receive until
/// `expected` arrived each, or the deadline.
struct Subscribers {
    tasks: Vec<tokio::task::JoinHandle<(u64, Histogram<u64>)>>,
    last: Arc<AtomicU64>,
    /// Set when every publisher is done: from then on a subscriber that
    /// hears nothing for [`QUIET`] stops waiting (the broker dropped the rest).
    done: Arc<std::sync::atomic::AtomicBool>,
}

/// How long a subscriber waits for more once the publishers are done.
const QUIET: Duration = Duration::from_secs(5);

async fn subscribers(
    t: &Target,
    n: usize,
    filter: &str,
    q: u8,
    expected: u64,
    epoch: Instant,
    deadline: Instant,
) -> Result<Subscribers> {
    let last = Arc::new(AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n.max(1));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (client, mut ev) = client(options(t, &format!("load-sub-{i}")));
        client.subscribe(filter, qos(q)).await?;
        let last = last.clone();
        let done = done.clone();
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let mut got = 0u64;
            while got < expected && Instant::now() < deadline {
                let until = deadline.min(Instant::now() + QUIET);
                let ev = match tokio::time::timeout_at(until.into(), ev.poll()).await {
                    Ok(Ok(e)) => e,
                    Ok(Err(e)) => {
                        eprintln!("subscriber {i}: {e}");
                        break;
                    }
                    Err(_) if done.load(Relaxed) => break,
                    Err(_) => continue,
                };
                match ev {
                    Event::Incoming(Packet::SubAck(_)) => {
                        let _ = ready.send(()).await;
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        got += 1;
                        let now = epoch.elapsed().as_nanos() as u64;
                        let sent = p
                            .payload
                            .get(..8)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_be_bytes)
                            .unwrap_or(now);
                        let _ = h.record(now.saturating_sub(sent) / 1000);
                        last.fetch_max(now, Relaxed);
                    }
                    _ => {}
                }
            }
            let _ = client.disconnect().await;
            (got, h)
        }));
    }
    drop(ready_tx);
    for _ in 0..n {
        tokio::time::timeout_at(deadline.into(), ready_rx.recv())
            .await
            .context("subscribers did not all get their SUBACK in time")?;
    }
    Ok(Subscribers { tasks, last, done })
}

impl Subscribers {
    async fn finish(self) -> Result<(u64, Histogram<u64>, u64)> {
        self.done.store(true, Relaxed);
        let mut total = Histogram::<u64>::new(3)?;
        let mut delivered = 0;
        for s in self.tasks {
            let (n, h) = s.await?;
            delivered += n;
            total.add(h)?;
        }
        Ok((delivered, total, self.last.load(Relaxed)))
    }
}

fn publisher(t: &Target, id: &str) -> (AsyncClient, tokio::task::JoinHandle<()>, Instant) {
    let mut po = options(t, id);
    po.set_inflight(t.inflight);
    if let (Some(u), Some(p)) = (&t.username, &t.password) {
        po.set_credentials(u, p);
    }
    let (client, mut ev) = client(po);
    let deadline = Instant::now() + Duration::from_secs(t.timeout);
    let task = tokio::spawn(async move {
        while Instant::now() < deadline {
            match tokio::time::timeout_at(deadline.into(), ev.poll()).await {
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
    });
    (client, task, deadline)
}

fn stamp(payload: &mut [u8], epoch: Instant, seq: u64) {
    let now = epoch.elapsed().as_nanos() as u64;
    payload[..8].copy_from_slice(&now.to_be_bytes());
    payload[8..16].copy_from_slice(&seq.to_be_bytes());
}

async fn fanout(a: Fanout) -> Result<()> {
    if a.size < 16 {
        bail!("--size must be at least 16 (the payload carries a timestamp)");
    }
    let t = &a.t;
    let deadline = Instant::now() + Duration::from_secs(t.timeout);
    let epoch = Instant::now();
    let expected_each = a.messages * a.publishers as u64;
    let subs = subscribers(
        t,
        a.subscribers,
        &format!("{}/#", a.prefix),
        a.qos,
        expected_each,
        epoch,
        deadline,
    )
    .await?;
    let start_ns = epoch.elapsed().as_nanos() as u64;
    let mut pubs = Vec::new();
    for p in 0..a.publishers {
        let (client, task, _) = publisher(t, &format!("load-pub-{p}"));
        let (n, size, q) = (a.messages, a.size, a.qos);
        let topic = format!("{}/{p}", a.prefix);
        pubs.push(tokio::spawn(async move {
            let mut payload = vec![b'x'; size];
            for i in 0..n {
                stamp(&mut payload, epoch, i);
                if client
                    .publish(&topic, qos(q), false, payload.clone())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            (client, task)
        }));
    }
    let mut keep = Vec::new();
    for p in pubs {
        keep.push(p.await?);
    }
    let (delivered, h, last) = subs.finish().await?;
    for (_, task) in keep {
        task.abort();
    }
    let wall = Duration::from_nanos(last.saturating_sub(start_ns));
    let expected = expected_each * a.subscribers as u64;
    println!(
        "{} case=fanout transport={} publishers={} subscribers={} messages={} size={} qos={} wall_s={:.3} delivered={} expected={} lost={} p50_us={} p99_us={} max_us={}",
        t.label,
        if t.ws { "ws" } else { "tcp" },
        a.publishers,
        a.subscribers,
        a.messages,
        a.size,
        a.qos,
        wall.as_secs_f64(),
        delivered,
        expected,
        expected - delivered.min(expected),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    );
    if delivered < expected {
        // The line above says how many; the exit code says it happened.
        std::process::exit(2);
    }
    Ok(())
}

async fn latency(a: Latency) -> Result<()> {
    if a.size < 16 {
        bail!("--size must be at least 16 (the payload carries a timestamp)");
    }
    let t = &a.t;
    let total = a.rate * a.seconds;
    let deadline = Instant::now() + Duration::from_secs(t.timeout.max(a.seconds + 30));
    let epoch = Instant::now();
    let (cpu0, t0, delivered, h) = match a.client {
        LatencyClient::Rumqttc => {
            let subs = subscribers(t, a.subscribers, "load/#", 0, total, epoch, deadline).await?;
            let (client, task, _) = publisher(t, "load-pub-rate");
            let cpu0 = cpu_secs(t.pid);
            let t0 = Instant::now();
            paced(&a, epoch, |payload| {
                let client = client.clone();
                async move {
                    client
                        .publish("load/rate", QoS::AtMostOnce, false, payload)
                        .await
                        .map_err(anyhow::Error::from)
                }
            })
            .await?;
            let (delivered, h, _) = subs.finish().await?;
            task.abort();
            (cpu0, t0, delivered, h)
        }
        LatencyClient::Bare => {
            let mut tasks = Vec::new();
            for i in 0..a.subscribers {
                let s = raw::subscriber(t, &format!("load-sub-{i}"), "load/#").await?;
                tasks.push(tokio::spawn(async move {
                    let mut h = Histogram::<u64>::new(3).expect("histogram");
                    let got = raw::read_publishes(s, total, deadline, |p| {
                        let now = epoch.elapsed().as_nanos() as u64;
                        if let Some(sent) = p.get(..8).and_then(|b| b.try_into().ok()) {
                            let _ = h.record(now.saturating_sub(u64::from_be_bytes(sent)) / 1000);
                        }
                    })
                    .await;
                    (got, h)
                }));
            }
            let pubs = tokio::sync::Mutex::new(raw::publisher(t, "load-pub-rate").await?);
            let pubs = &pubs;
            let cpu0 = cpu_secs(t.pid);
            let t0 = Instant::now();
            paced(&a, epoch, |payload| async move {
                let packet = firehose_testkit::raw::publish(4, b"load/rate", &payload, 0, 0);
                tokio::io::AsyncWriteExt::write_all(&mut *pubs.lock().await, &packet).await?;
                Ok(())
            })
            .await?;
            let mut h = Histogram::<u64>::new(3)?;
            let mut delivered = 0;
            for task in tasks {
                let (n, one) = task.await?;
                delivered += n;
                h.add(one)?;
            }
            (cpu0, t0, delivered, h)
        }
    };
    let cpu = cpu_secs(t.pid) - cpu0;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{} case=latency client={:?} rate={} seconds={} subscribers={} delivered={} expected={} p50_us={} p99_us={} p999_us={} max_us={} cpu_pct={:.1}",
        t.label,
        a.client,
        a.rate,
        a.seconds,
        a.subscribers,
        delivered,
        total * a.subscribers as u64,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        100.0 * cpu / secs
    );
    Ok(())
}

/// Sends `rate × seconds` stamped payloads at a fixed rate through `send`
/// (the stamp is taken right before each send).
async fn paced<F, Fut>(a: &Latency, epoch: Instant, send: F) -> Result<()>
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / a.rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut payload = vec![b'x'; a.size];
    for i in 0..a.rate * a.seconds {
        tick.tick().await;
        stamp(&mut payload, epoch, i);
        send(payload.clone()).await?;
    }
    Ok(())
}

async fn idle(a: Idle) -> Result<()> {
    let t = &a.t;
    let deadline = Instant::now() + Duration::from_secs(t.timeout);
    let before = rss_kib(t.pid);
    let t0 = Instant::now();
    let conns = raw::open_idle(t, a.clients, (1, a.sources), "idle", deadline).await?;
    let connect_s = t0.elapsed().as_secs_f64();
    // Let the broker settle (buffers of the handshakes released).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(t.pid);
    let n = conns.len();
    raw::disconnect_all(conns).await;
    println!(
        "{} case=idle clients={} connect_s={:.3} rss_before_kib={} rss_after_kib={} per_client_bytes={}",
        t.label,
        n,
        connect_s,
        before,
        after,
        (after.saturating_sub(before) * 1024) / n.max(1) as u64
    );
    Ok(())
}

async fn rounds(a: Rounds) -> Result<()> {
    let t = &a.t;
    let (mut during, mut after) = (Vec::new(), Vec::new());
    for r in 0..a.rounds {
        let deadline = Instant::now() + Duration::from_secs(t.timeout);
        // Clients leave with DISCONNECT, so their ports are free at once.
        let conns = raw::open_idle(t, a.clients, (1, 1), &format!("round{r}"), deadline).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        during.push(rss_kib(t.pid));
        raw::disconnect_all(conns).await;
        // The broker frees lazily (and gives memory back on its $SYS tick).
        tokio::time::sleep(Duration::from_secs(3)).await;
        after.push(rss_kib(t.pid));
    }
    let list = |v: &[u64]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let ratio = |v: &[u64]| {
        v.last().copied().unwrap_or(0) as f64 / v.first().copied().unwrap_or(0).max(1) as f64
    };
    println!(
        "{} case=rounds clients={} rounds={} rss_connected_kib={} rss_after_kib={} connected_last_vs_first={:.2} after_last_vs_first={:.2}",
        t.label,
        a.clients,
        a.rounds,
        list(&during),
        list(&after),
        ratio(&during),
        ratio(&after)
    );
    Ok(())
}

async fn churn(a: Churn) -> Result<()> {
    let t = &a.t;
    let deadline = Instant::now() + Duration::from_secs(t.timeout);
    let before = rss_kib(t.pid);
    let t0 = Instant::now();
    let done = raw::churn(t, a.connections, a.parallel, deadline).await?;
    let wall = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(t.pid);
    println!(
        "{} case=churn connections={} done={} wall_s={:.3} rss_growth_kib={}",
        t.label,
        a.connections,
        done,
        wall,
        after as i64 - before as i64
    );
    Ok(())
}

async fn topics(a: Topics) -> Result<()> {
    let t = &a.t;
    let before = rss_kib(t.pid);
    let (client, task, deadline) = publisher(t, "load-pub-topics");
    let payload = vec![b'x'; 16];
    for i in 0..a.topics {
        if Instant::now() > deadline {
            bail!("timed out after {i} topics");
        }
        client
            .publish(
                format!("load/topics/{i}"),
                QoS::AtMostOnce,
                false,
                payload.clone(),
            )
            .await?;
    }
    // A QoS 1 publish at the end: its PUBACK means the broker read them all.
    client
        .publish("load/topics/done", QoS::AtLeastOnce, false, payload)
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    task.abort();
    let after = rss_kib(t.pid);
    println!(
        "{} case=topics topics={} rss_growth_kib={} per_topic_bytes={}",
        t.label,
        a.topics,
        after as i64 - before as i64,
        (after as i64 - before as i64) * 1024 / a.topics.max(1) as i64
    );
    Ok(())
}

/// Publishes `n` QoS 1 messages to `topic(i)` as an authenticated
/// publisher (a bridge's window: `--inflight`) and returns the time from
/// the first publish to the last PUBACK, or an error past the deadline.
async fn publish_acked(
    t: &Target,
    id: &str,
    n: u64,
    size: usize,
    retain: bool,
    topic: impl Fn(u64) -> String + Send + 'static,
) -> Result<Duration> {
    let mut po = options(t, id);
    po.set_inflight(t.inflight);
    if let (Some(u), Some(p)) = (&t.username, &t.password) {
        po.set_credentials(u, p);
    }
    let (c, mut ev) = client(po);
    let deadline = Instant::now() + Duration::from_secs(t.timeout);
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        let payload = vec![b'x'; size];
        for i in 0..n {
            if c.publish(topic(i), QoS::AtLeastOnce, retain, payload.clone())
                .await
                .is_err()
            {
                break;
            }
        }
        c
    });
    let mut acked = 0;
    while acked < n {
        match tokio::time::timeout_at(deadline.into(), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("publisher: {e} after {acked} of {n} acknowledged"),
            Err(_) => bail!("publisher: {acked} of {n} acknowledged in {}s", t.timeout),
        }
    }
    let took = start.elapsed();
    let _ = sender.await?.disconnect().await;
    Ok(took)
}

async fn hostile_case(a: HostileArgs) -> Result<()> {
    let t = &a.t;
    let deadline = Instant::now() + Duration::from_secs(t.timeout);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers = hostile::readers(t, a.readers, a.manner, stop.clone(), deadline).await?;
    let took = publish_acked(t, "hostile-bench-pub", a.messages, a.size, false, |i| {
        format!("load/{}", i % 16)
    })
    .await;
    stop.store(true, Relaxed);
    for r in readers {
        r.abort();
    }
    let took = took?;
    println!(
        "{} case=hostile readers={} manner={:?} messages={} publish_s={:.3} rate={:.0}",
        t.label,
        a.readers,
        a.manner,
        a.messages,
        took.as_secs_f64(),
        a.messages as f64 / took.as_secs_f64()
    );
    Ok(())
}

async fn sub_flood(a: SubFlood) -> Result<()> {
    let t = &a.t;
    publish_acked(t, "retainer", a.retained, 100, true, |i| format!("r/{i}")).await?;
    let before = rss_kib(t.pid);
    let flood = hostile::subscribe_flood(t, a.packets, a.repeat).await?;
    let mut peak = before;
    let until = Instant::now() + Duration::from_secs(a.settle);
    while Instant::now() < until {
        peak = peak.max(rss_kib(t.pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Is everyone else still served? A fresh subscriber and one message.
    let (c, mut ev) = client(options(t, "flood-canary"));
    c.subscribe("served/x", QoS::AtMostOnce).await?;
    let served_deadline = Instant::now() + Duration::from_secs(30);
    let mut published = None;
    let mut served_ms = None;
    while served_ms.is_none() && Instant::now() < served_deadline {
        match tokio::time::timeout_at(served_deadline.into(), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                published = Some(Instant::now());
                publish_acked(t, "flood-pub", 1, 16, false, |_| "served/x".into()).await?;
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic == "served/x" => {
                served_ms = published.map(|s| s.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
    let after = rss_kib(t.pid);
    drop(flood);
    println!(
        "{} case=sub-flood retained={} packets={} repeat={} rss_before_mb={:.1} rss_peak_growth_mb={:.1} rss_after_growth_mb={:.1} others_served={} served_ms={}",
        t.label,
        a.retained,
        a.packets,
        a.repeat,
        before as f64 / 1024.0,
        peak.saturating_sub(before) as f64 / 1024.0,
        after.saturating_sub(before) as f64 / 1024.0,
        served_ms.is_some(),
        served_ms.map_or("-".into(), |m| format!("{m:.1}"))
    );
    Ok(())
}
