//! The publishing runtime: the sources on one side, one sink on the other
//! (the broker, with the spool in between, or stdout for `--print`; both
//! settle finalizers by one contract, see [`Sink`]).
//!
//! ```text
//!  sources ──publish──▶ mpsc ──▶ Spool (memory [+ disk]) ──▶ PUBLISH QoS 1 ──▶ broker
//!     ▲                              ▲ ack(seq)                    │
//!     └── Finalizer::delivered ──────┴───────────── PUBACK(pkid) ◀─┘
//! ```
//!
//! Each source runs in its own task under [`crate::source::drive`] (backoff,
//! status, shutdown). Everything a source hands over is spooled first, then
//! published with our own packet ids; a PUBACK removes it from the spool and
//! settles the event's [`Finalizer`] (see [`crate::ack`]). When the connection drops, everything not
//! acknowledged is sent again on the next one (same payload, same id), after
//! a capped, jittered backoff. Meanwhile the source keeps running and the
//! spool keeps filling (up to its cap). The bridge's status is a retained
//! message, with a retained last will saying "down".

use firehose::report::Chain;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use firehose::status::{State, Status};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::Publish;
use crate::deadletter::DeadLetters;
use crate::ledger::{Ledger, Sent};
use crate::mqtt::{reason_name, ConnectOptions, Connection, Incoming, MqttError};
use crate::print::PrintFormat;
use crate::source::{drive, Event, Source, SourceContext, SourceError, Upstream, Upstreams};
use crate::spool::{Record, Spool, SpoolError};
use crate::stats::Stats;
use firehose::backoff::Backoff;

/// Events taken from the source queue per wakeup.
const BATCH: usize = 256;
/// Status refresh (counters) when nothing else changes.
const STATUS_EVERY: Duration = Duration::from_secs(60);

/// Errors that stop a bridge.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("metrics listener {addr}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("--print: cannot write to stdout")]
    Print(#[source] std::io::Error),
    #[error("signal handler")]
    Signal(#[source] std::io::Error),
    #[error("source {name}")]
    Source {
        name: String,
        #[source]
        error: SourceError,
    },
    #[error("source {name} panicked: {message}")]
    Panicked { name: String, message: String },
    #[error("{0} event(s) not delivered and lost (no --spool to keep them)")]
    Undelivered(usize),
    #[error("the broker refused {n} event(s) (not authorized, ...); they are in the dead-letter file {}", file.display())]
    Rejected { n: u64, file: std::path::PathBuf },
    #[error("not retrying (fix the credentials, or pass --retry-auth to keep trying)")]
    Refused(#[source] MqttError),
}

/// A bridge: its name (`gerrit`, `nova`, ...) and publishing config.
pub struct Bridge {
    name: &'static str,
    version: &'static str,
    cfg: Publish,
    stats: Arc<Stats>,
    print: Option<PrintFormat>,
}

/// How a connected period ended.
enum Ended {
    Lost(MqttError),
    Finished,
}

impl Bridge {
    /// A bridge named `name` (used in topics, ids and metrics).
    pub fn new(name: &'static str, version: &'static str, cfg: Publish) -> Bridge {
        Bridge {
            name,
            version,
            cfg,
            stats: Arc::new(Stats::default()),
            print: None,
        }
    }

    /// Prints events to stdout instead of publishing them (an operator
    /// checking a setup). No broker, no spool, no status.
    pub fn print_only(mut self, format: PrintFormat) -> Bridge {
        self.print = Some(format);
        self
    }

    /// The bridge's counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Runs every source until all finish (a replay) or SIGTERM/SIGINT,
    /// then flushes the spool to the broker and says "down".
    pub async fn run<S: Source>(self, sources: Vec<S>) -> Result<(), RuntimeError> {
        let (tx, rx) = mpsc::channel(1024);
        let (upstream_tx, upstream_rx) = watch::channel(Upstream::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let names: Vec<String> = sources.iter().map(Source::name).collect();
        let upstreams = Upstreams::new(&names, upstream_tx);
        let dead_letters = DeadLetters::new(&self.cfg.dead_letter);
        let dead_letters_rt = dead_letters.clone();
        let template = SourceContext::new(
            tx,
            upstreams,
            dead_letters,
            self.stats.clone(),
            stop_rx,
            self.cfg.payload,
            self.cfg.base_topic.clone(),
        );
        let contexts: Vec<(String, S, SourceContext)> = sources
            .into_iter()
            .zip(names)
            .map(|(source, name)| {
                let ctx = template.for_source(&name);
                (name, source, ctx)
            })
            .collect();
        // The template's sender goes with it: the queue closes once every
        // source has finished.
        drop(template);
        match self.print {
            Some(format) => drive_into(Printer(format), contexts, rx, stop_tx).await,
            None => {
                let sink = BrokerSink::open(self, dead_letters_rt, upstream_rx).await?;
                drive_into(sink, contexts, rx, stop_tx).await
            }
        }
    }
}

/// Where a bridge's events go: the broker ([`BrokerSink`]) or stdout
/// (`--print`, [`Printer`]). Both keep one contract with the sources: an
/// event's finalizer says delivered once the sink has the event for good
/// (the broker's PUBACK; written and flushed to stdout), and is dropped,
/// failing its batch so that the source leaves the event upstream, in
/// every other case. A sink takes events until the queue closes (every
/// source finished) or the bridge is told to stop, then tells the sources
/// to stop.
trait Sink {
    async fn deliver(self, rx: mpsc::Receiver<Event>, stop: &watch::Sender<bool>) -> Outcome;
}

/// How a sink ended.
enum Outcome {
    /// The sink itself failed (the broker refused the login, stdout
    /// closed): the bridge's error, whatever the sources say.
    Failed(RuntimeError),
    /// It delivered what it could; its verdict (events left undelivered,
    /// refused by the broker) is the bridge's result unless a source failed.
    Done(Result<(), RuntimeError>),
}

/// Runs every source (each in its own task, under [`drive`]) into `sink`
/// until the input ends or SIGTERM/SIGINT, then joins the sources.
async fn drive_into<K: Sink, S: Source>(
    sink: K,
    sources: Vec<(String, S, SourceContext)>,
    rx: mpsc::Receiver<Event>,
    stop_tx: Arc<watch::Sender<bool>>,
) -> Result<(), RuntimeError> {
    let tasks = sources
        .into_iter()
        .map(|(name, source, ctx)| {
            let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
            (name, tokio::spawn(drive(source, ctx, backoff)))
        })
        .collect();
    spawn_signals(stop_tx.clone()).map_err(RuntimeError::Signal)?;
    let outcome = sink.deliver(rx, &stop_tx).await;
    // The sources may still be reading; they are told to stop.
    let _ = stop_tx.send(true);
    let joined = join_sources(tasks).await;
    match outcome {
        Outcome::Failed(e) => Err(e),
        Outcome::Done(verdict) => joined.and(verdict),
    }
}

/// `--print`: events to stdout (see [`crate::print`]). No broker, no
/// spool, no status.
struct Printer(PrintFormat);

impl Sink for Printer {
    async fn deliver(self, mut rx: mpsc::Receiver<Event>, stop: &watch::Sender<bool>) -> Outcome {
        let mut stopping = stop.subscribe();
        let stdout = std::io::stdout();
        let outcome = loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => {
                        if let Err(e) = crate::print::event(self.0, ev, &mut stdout.lock()) {
                            tracing::error!(error = %Chain(&e), "cannot write to stdout; stopping (what was not printed stays upstream)");
                            break Outcome::Failed(RuntimeError::Print(e));
                        }
                    }
                    None => break Outcome::Done(Ok(())),
                },
                _ = stopping.changed() => break Outcome::Done(Ok(())),
            }
        };
        let _ = stop.send(true);
        // Events already queued fail their batches with the queue.
        drop(rx);
        outcome
    }
}

/// The broker: the spool, one connection at a time, the retained status
/// ([`Publisher`] does the work).
struct BrokerSink {
    bridge: Bridge,
    spool: Spool,
    dead_letters: DeadLetters,
    upstream: watch::Receiver<Upstream>,
}

impl BrokerSink {
    /// Opens the spool (recovering what a previous run left) and the
    /// metrics listener, before any source starts.
    async fn open(
        bridge: Bridge,
        dead_letters: DeadLetters,
        upstream: watch::Receiver<Upstream>,
    ) -> Result<BrokerSink, RuntimeError> {
        let cfg = &bridge.cfg;
        let (spool, recovered) = match &cfg.spool {
            Some(dir) => {
                let (s, r) = Spool::open(dir, cfg.spool_max_bytes)?;
                (s, Some(r))
            }
            None => (Spool::memory(cfg.spool_max_bytes), None),
        };
        if let Some(r) = recovered {
            tracing::info!(spool = %cfg.spool.as_deref().unwrap_or_else(|| std::path::Path::new("")).display(), recovered = r.events, corrupt = r.corrupt, "spool opened");
        }
        bridge.stats.pending.store(spool.len() as i64, Relaxed);
        if let (Some(syncer), Some(every)) = (spool.syncer(), cfg.spool_fsync) {
            tokio::spawn(sync_spool(syncer, every));
        }
        if let Some(addr) = cfg.metrics {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| RuntimeError::Metrics { addr, source })?;
            let bound = listener.local_addr().unwrap_or(addr);
            tracing::info!(addr = %bound, "metrics listening");
            let (stats, name) = (bridge.stats.clone(), bridge.name);
            tokio::spawn(firehose::metrics::serve(listener, move || {
                stats.prometheus(name)
            }));
        }
        Ok(BrokerSink {
            bridge,
            spool,
            dead_letters,
            upstream,
        })
    }
}

impl Sink for BrokerSink {
    async fn deliver(self, rx: mpsc::Receiver<Event>, stop: &watch::Sender<bool>) -> Outcome {
        let BrokerSink {
            bridge,
            spool,
            dead_letters,
            upstream,
        } = self;
        let started = firehose::envelope::rfc3339(time::OffsetDateTime::now_utc());
        let status_topic = firehose::topic::status(bridge.name, &bridge.cfg.instance);
        let mut p = Publisher {
            cfg: bridge.cfg.clone(),
            stats: bridge.stats.clone(),
            spool,
            rx,
            rx_open: true,
            ledger: Ledger::new(),
            refusals: None,
            status_dirty: false,
            dead_letters,
            stopping: stop.subscribe(),
            upstream,
            status_topic,
            bridge: bridge.name,
            version: bridge.version,
            started,
            host: crate::config::hostname(),
            dropped_logged: 0,
            finish_by: None,
            refused: None,
        };
        p.run().await;
        let synced = p.spool.sync();
        // Whatever is still unacknowledged fails its batch now, so sources
        // leave it upstream.
        p.ledger.fail_all();
        if let Some(e) = p.refused.take() {
            return Outcome::Failed(RuntimeError::Refused(e));
        }
        if let Err(e) = synced {
            return Outcome::Failed(e.into());
        }
        let undelivered = p.spool.len();
        // The input ended by itself (a replay, a backfill, one run): the
        // exit code says whether the broker took all of it.
        let input_ended = !p.rx_open && !*stop.borrow();
        let rejected = bridge.stats.rejected.load(Relaxed);
        if undelivered > 0 && bridge.cfg.spool.is_none() {
            return Outcome::Done(Err(RuntimeError::Undelivered(undelivered)));
        }
        if input_ended && rejected > 0 {
            return Outcome::Done(Err(RuntimeError::Rejected {
                n: rejected,
                file: bridge.cfg.dead_letter.clone(),
            }));
        }
        Outcome::Done(Ok(()))
    }
}

/// Waits (a little) for sources told to stop, and passes on the first
/// failure.
async fn join_sources(
    tasks: Vec<(String, tokio::task::JoinHandle<Result<(), SourceError>>)>,
) -> Result<(), RuntimeError> {
    let mut first = Ok(());
    for (name, task) in tasks {
        let r = match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Err(error))) => Err(RuntimeError::Source { name, error }),
            Ok(Err(e)) => Err(RuntimeError::Panicked {
                name,
                message: e.to_string(),
            }),
            _ => Ok(()),
        };
        if first.is_ok() {
            first = r;
        }
    }
    first
}

/// fsyncs the spool's current segment every `every` (`--spool-fsync`),
/// off the runtime's loop, so a machine crash loses at most that much of
/// what the broker had not acknowledged.
async fn sync_spool(syncer: crate::spool::Syncer, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u64;
    loop {
        tick.tick().await;
        let s = syncer.clone();
        let r = tokio::task::spawn_blocking(move || s.sync()).await;
        if let Ok(Err(e)) = r {
            failures += 1;
            if failures.is_power_of_two() {
                tracing::error!(error = %Chain(&e), failures, "spool fsync failed");
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// SIGTERM / SIGINT set the stop flag.
fn spawn_signals(stop: Arc<watch::Sender<bool>>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: flushing and stopping"),
            _ = int.recv() => tracing::info!("SIGINT: flushing and stopping"),
        }
        let _ = stop.send(true);
    });
    Ok(())
}

struct Publisher {
    cfg: Publish,
    stats: Arc<Stats>,
    spool: Spool,
    rx: mpsc::Receiver<Event>,
    rx_open: bool,
    /// Packet ids in flight and the finalizers their PUBACKs settle.
    ledger: Ledger,
    /// Publishes the broker refused (MQTT 5 reason >= 0x80) and the last
    /// one's reason: the status says "degraded" with it.
    refusals: Option<(u64, String)>,
    /// The status message must be published again (state changed).
    status_dirty: bool,
    dead_letters: DeadLetters,
    stopping: watch::Receiver<bool>,
    upstream: watch::Receiver<Upstream>,
    status_topic: String,
    bridge: &'static str,
    version: &'static str,
    started: String,
    /// This machine's name, read once at start.
    host: String,
    dropped_logged: u64,
    /// Set once the bridge is finishing (SIGTERM, or the source ended):
    /// the last moment to deliver what is spooled.
    finish_by: Option<Instant>,
    /// Set when the broker refused our credentials and `retry_auth` is off.
    refused: Option<MqttError>,
}

impl Publisher {
    /// Says, once the bridge gives up delivering (`why`), where what the
    /// broker has not acknowledged is: in the spool directory for the next
    /// start, or, with no `--spool`, nowhere (the bridge's exit error
    /// counts them).
    fn left_undelivered(&self, why: &str) {
        match &self.cfg.spool {
            Some(dir) => {
                tracing::warn!(pending = self.spool.len(), spool = %dir.display(), why, "undelivered events stay in the spool for the next start")
            }
            None => {
                tracing::warn!(
                    pending = self.spool.len(),
                    why,
                    "undelivered events are lost (no --spool to keep them)"
                )
            }
        }
    }

    /// The delivery deadline once the bridge is finishing, else `None`.
    fn finish_deadline(&mut self) -> Option<Instant> {
        if self.finish_by.is_none() && (*self.stopping.borrow() || !self.rx_open) {
            self.finish_by = Some(Instant::now() + self.cfg.flush_timeout);
            if !self.spool.is_empty() {
                tracing::info!(pending = self.spool.len(), timeout = ?self.cfg.flush_timeout, "delivering what is spooled before exit");
            }
        }
        self.finish_by
    }

    fn done(&self) -> bool {
        (*self.stopping.borrow() || !self.rx_open) && self.spool.is_empty()
    }

    fn status(&self, state: State) -> Vec<u8> {
        let mut up = self.upstream.borrow().clone();
        if let Some((n, last)) = &self.refusals {
            let refused = format!("{n} event(s) refused by the broker, last: {last}");
            up.error = Some(match up.error {
                Some(e) => format!("{e}; {refused}"),
                None => refused,
            });
        }
        let state = match state {
            State::Up if !up.connected || self.refusals.is_some() => State::Degraded,
            s => s,
        };
        let s = Status {
            state,
            version: format!("firehose-{} {}", self.bridge, self.version),
            host: self.host.clone(),
            started: self.started.clone(),
            upstream_connected: up.connected,
            upstream_error: up.error,
            last_event: self.stats.last_event(),
            counters: self.stats.counters(),
        };
        serde_json::to_vec(&s)
            .expect("a Status is strings, numbers and bools: it always serializes (never empty)")
    }

    /// Takes an event from the source into the spool.
    fn accept(&mut self, ev: Event) {
        if ev.topic.len() > u16::MAX as usize {
            // No MQTT packet (nor spool record) can carry it: refused here,
            // dead-lettered whole, its batch rejected.
            let n = self.stats.malformed.fetch_add(1, Relaxed) + 1;
            let reason = format!(
                "topic of {} bytes is longer than MQTT allows (65,535)",
                ev.topic.len()
            );
            if let Err(e) =
                self.dead_letters
                    .write("runtime", &reason, &ev.payload, ev.payload.len())
            {
                tracing::error!(error = %Chain(&e), "cannot write the dead-letter file");
            }
            if n.is_power_of_two() {
                tracing::error!(topic = %ev.topic.get(..120).unwrap_or(""), %reason, malformed_total = n, "event refused; dead-lettered");
            }
            if let Some(f) = ev.finalizer {
                f.rejected();
            }
            return;
        }
        let rec = Record {
            topic: ev.topic,
            payload: ev.payload,
            retain: ev.retain,
        };
        let pushed = self.spool.push(rec);
        if let Some(f) = ev.finalizer {
            self.ledger.track(pushed.seq, f);
        }
        if let Some(e) = pushed.disk_error {
            // The disk failed: keep going in memory, loudly.
            tracing::error!(error = %Chain(&e), "spool write failed; event held in memory only");
        }
        if pushed.dropped > 0 {
            self.stats.dropped.fetch_add(pushed.dropped as u64, Relaxed);
            self.dropped_logged += pushed.dropped as u64;
            let oldest = self.spool.oldest();
            // Dropped events fail their batches: the upstream keeps them.
            self.ledger.dropped_before(oldest);
            if self.dropped_logged.is_power_of_two() || pushed.dropped > 1 {
                tracing::warn!(
                    dropped_total = self.stats.dropped.load(Relaxed),
                    max_bytes = self.cfg.spool_max_bytes,
                    "spool full: oldest events dropped"
                );
            }
        }
        self.stats.pending.store(self.spool.len() as i64, Relaxed);
    }

    /// What `rx.recv()` gave: an event (and whatever else is queued), or the
    /// end of the source.
    fn received(&mut self, ev: Option<Event>) {
        match ev {
            Some(ev) => {
                self.accept(ev);
                self.accept_ready();
            }
            None => self.rx_open = false,
        }
    }

    /// Drains what the source queued, without waiting, and hands the batch
    /// to the OS (so a killed bridge finds it in the spool).
    fn accept_ready(&mut self) {
        for _ in 0..BATCH {
            match self.rx.try_recv() {
                Ok(ev) => self.accept(ev),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.rx_open = false;
                    break;
                }
            }
        }
        if let Err(e) = self.spool.flush() {
            tracing::error!(error = %Chain(&e), "spool write failed");
        }
    }

    /// Encodes a PUBLISH for `conn`: QoS 1 (events unless `--qos 0`, and
    /// our status messages, `seq` 0) with one of our packet ids, or QoS 0
    /// (acked at once).
    fn encode(
        &mut self,
        conn: &Connection,
        topic: &str,
        payload: bytes::Bytes,
        retain: bool,
        seq: u64,
        out: &mut BytesMut,
    ) -> Option<u16> {
        let qos1 = self.cfg.qos == 1 || seq == 0;
        if let Some(max) = conn.max_packet {
            // Topic, payload and a generous header: over the broker's
            // limit it would close the connection, again and again.
            if seq != 0 && topic.len() + payload.len() + 16 > max as usize {
                self.refused(
                    seq,
                    topic,
                    &payload,
                    0x95,
                    Some(format!(
                        "larger than the broker's maximum packet size ({max} bytes)"
                    )),
                );
                return None;
            }
        }
        let pkid = if qos1 {
            let sent = Sent {
                seq,
                topic: topic.to_owned(),
                payload: payload.clone(),
            };
            // The window is below 65,535; this is only a guard.
            self.ledger.send(sent)?
        } else {
            0
        };
        if let Err(e) = conn.encode_publish(topic, payload.clone(), retain, pkid, out) {
            // Not written: not in flight, and never will be (the same bytes
            // would fail again). Dead-lettered like a refusal.
            self.ledger.unsend(pkid);
            tracing::error!(%topic, error = %Chain(&e), "cannot encode the PUBLISH");
            if seq != 0 {
                self.refused(seq, topic, &payload, 0x99, Some(e.to_string()));
            }
            return None;
        }
        if !qos1 {
            self.acked(seq);
        }
        qos1.then_some(pkid)
    }

    /// What a PUBACK says about a publish we sent.
    fn puback(&mut self, pkid: u16, reason: u8, why: Option<String>) -> Option<u64> {
        let sent = self.ledger.puback(pkid)?;
        if reason < 0x80 {
            self.acked(sent.seq);
        } else if sent.seq == 0 {
            tracing::error!(topic = %sent.topic, reason = reason_name(reason), code = reason, "the broker refused our status message; check the ACL for firehose/status/#");
        } else {
            self.refused(sent.seq, &sent.topic, &sent.payload, reason, why);
        }
        Some(sent.seq)
    }

    /// The broker refused an event: it leaves the spool (sending it again
    /// would be refused again), goes to the dead-letter file, is counted,
    /// its batch is rejected, and the status says degraded.
    fn refused(&mut self, seq: u64, topic: &str, payload: &[u8], code: u8, why: Option<String>) {
        let reason = match why {
            Some(w) => format!(
                "broker refused the publish on {topic}: 0x{code:02x} {} ({w})",
                reason_name(code)
            ),
            None => format!(
                "broker refused the publish on {topic}: 0x{code:02x} {}",
                reason_name(code)
            ),
        };
        self.spool.ack(seq);
        self.stats.pending.store(self.spool.len() as i64, Relaxed);
        let n = self.stats.rejected.fetch_add(1, Relaxed) + 1;
        if let Err(e) = self
            .dead_letters
            .write("broker", &reason, payload, payload.len())
        {
            tracing::error!(error = %Chain(&e), "cannot write the dead-letter file");
        }
        if n <= 10 || n.is_power_of_two() {
            tracing::error!(%topic, code, reason = reason_name(code), rejected_total = n, dead_letter = %self.dead_letters.path().display(), "the broker refused an event; dead-lettered (check the broker's ACL for this user)");
        }
        self.ledger.rejected(seq);
        self.refusals = Some((n, reason));
        self.status_dirty = true;
    }

    /// The broker has the event.
    fn acked(&mut self, seq: u64) {
        if seq == 0 {
            return;
        }
        self.spool.ack(seq);
        self.stats.published.fetch_add(1, Relaxed);
        self.stats.pending.store(self.spool.len() as i64, Relaxed);
        self.ledger.delivered(seq);
    }

    async fn run(&mut self) {
        let mut backoff = Backoff::default();
        let opts = |me: &Publisher| ConnectOptions {
            client_id: me.cfg.client_id.clone(),
            username: me.cfg.url.username.clone(),
            password: me.cfg.url.password.clone(),
            keep_alive: me.cfg.keep_alive,
            will: Some((me.status_topic.clone(), me.status(State::Down))),
        };
        loop {
            if self.done() {
                return;
            }
            let o = opts(self);
            let url = self.cfg.url.clone();
            let tls = self.cfg.tls.clone();
            let connect = Connection::open(&url, tls.as_ref(), &o, Duration::from_secs(10));
            tokio::pin!(connect);
            let res = loop {
                let deadline = self.finish_deadline();
                tokio::select! {
                    r = &mut connect => break Some(r),
                    ev = self.rx.recv(), if self.rx_open => self.received(ev),
                    _ = self.stopping.changed() => {}
                    _ = sleep_until_opt(deadline), if deadline.is_some() => break None,
                }
                if self.done() {
                    return;
                }
            };
            let Some(res) = res else {
                self.left_undelivered("broker unreachable at shutdown");
                return;
            };
            match res {
                Ok(conn) => {
                    tracing::info!(broker = %self.cfg.url, client_id = %self.cfg.client_id, pending = self.spool.len(), "connected to the broker");
                    backoff.reset();
                    self.stats.broker_connected.store(1, Relaxed);
                    let ended = self.connected(conn).await;
                    self.stats.broker_connected.store(0, Relaxed);
                    match ended {
                        Ended::Finished => return,
                        Ended::Lost(e) => {
                            tracing::warn!(broker = %self.cfg.url, error = %Chain(&e), pending = self.spool.len(), "broker connection lost; reconnecting");
                        }
                    }
                }
                Err(e @ crate::mqtt::MqttError::AuthRefused(_)) if !self.cfg.retry_auth => {
                    tracing::error!(broker = %self.cfg.url, error = %Chain(&e), pending = self.spool.len(), "the broker refused our credentials; stopping (--retry-auth keeps trying)");
                    self.refused = Some(e);
                    return;
                }
                Err(e) => {
                    tracing::warn!(broker = %self.cfg.url, error = %Chain(&e), attempt = backoff.attempts() + 1, pending = self.spool.len(), "cannot connect to the broker");
                }
            }
            self.stats.broker_reconnects.fetch_add(1, Relaxed);
            let delay = backoff.next_delay();
            let wake = Instant::now() + delay;
            loop {
                let deadline = self.finish_deadline();
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => break,
                    ev = self.rx.recv(), if self.rx_open => self.received(ev),
                    _ = self.stopping.changed() => break,
                    _ = sleep_until_opt(deadline), if deadline.is_some() => {
                        self.left_undelivered("broker unreachable");
                        return;
                    }
                }
            }
        }
    }

    /// Publishes until the connection drops or the work is done.
    async fn connected(&mut self, mut conn: Connection) -> Ended {
        self.spool.rewind();
        self.ledger.reconnected();
        // The broker's Receive Maximum (MQTT 5) bounds what is in flight.
        let window = match conn.receive_max {
            Some(r) => self.cfg.max_inflight.min(r.max(1) as usize),
            None => self.cfg.max_inflight,
        }
        .min(crate::ledger::MAX_IN_FLIGHT);
        let mut out = BytesMut::new();
        let topic = self.status_topic.clone();
        let status = self.status(State::Up);
        self.encode(&conn, &topic, status.into(), true, 0, &mut out);
        let mut ping = tokio::time::interval(self.cfg.keep_alive);
        ping.reset();
        let mut ping_outstanding = false;
        let mut status_tick = tokio::time::interval(STATUS_EVERY);
        status_tick.reset();
        let mut checkpoint = tokio::time::interval(Duration::from_millis(200));
        let mut upstream = self.upstream.clone();
        loop {
            // Fill the in-flight window.
            while self.ledger.in_flight() < window {
                let Some((seq, rec)) = self.spool.next_unsent() else {
                    break;
                };
                self.encode(&conn, &rec.topic, rec.payload, rec.retain, seq, &mut out);
            }
            if std::mem::take(&mut self.status_dirty) {
                let status = self.status(State::Up);
                self.encode(&conn, &topic, status.into(), true, 0, &mut out);
            }
            if !out.is_empty() {
                let w = tokio::time::timeout(self.cfg.keep_alive, conn.send(&out)).await;
                out.clear();
                match w {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Ended::Lost(e),
                    Err(_) => return Ended::Lost(MqttError::Timeout(self.cfg.keep_alive)),
                }
            }
            if self.done() {
                self.goodbye(conn).await;
                return Ended::Finished;
            }
            let flush_deadline = self.finish_deadline();
            tokio::select! {
                biased;
                p = conn.recv() => match p {
                    Ok(Incoming::PubAck { pkid, reason, why }) => {
                        self.puback(pkid, reason, why);
                    }
                    Ok(Incoming::PingResp) => ping_outstanding = false,
                    Ok(Incoming::Disconnect(code)) => {
                        return Ended::Lost(MqttError::Disconnected(code, reason_name(code)));
                    }
                    Ok(Incoming::Other) => {}
                    Err(e) => return Ended::Lost(e),
                },
                ev = self.rx.recv(), if self.rx_open => self.received(ev),
                _ = ping.tick() => {
                    if ping_outstanding {
                        return Ended::Lost(MqttError::Timeout(self.cfg.keep_alive));
                    }
                    ping_outstanding = true;
                    conn.encode_ping(&mut out);
                }
                r = upstream.changed() => {
                    if r.is_ok() {
                        let up = upstream.borrow_and_update().clone();
                        tracing::info!(upstream_connected = up.connected, error = up.error.as_deref().unwrap_or(""), "source state changed");
                        self.status_dirty = true;
                    }
                }
                _ = status_tick.tick() => self.status_dirty = true,
                _ = checkpoint.tick() => {
                    if let Err(e) = self.spool.checkpoint() {
                        tracing::error!(error = %Chain(&e), "spool checkpoint failed");
                    }
                }
                _ = self.stopping.changed() => {}
                _ = sleep_until_opt(flush_deadline), if flush_deadline.is_some() => {
                    self.left_undelivered("flush timed out");
                    self.goodbye(conn).await;
                    return Ended::Finished;
                }
            }
        }
    }

    /// A clean exit: retained "down", then DISCONNECT (so the will is not
    /// needed), then a graceful close.
    async fn goodbye(&mut self, mut conn: Connection) {
        let mut out = BytesMut::new();
        let status = self.status(State::Down);
        let topic = self.status_topic.clone();
        let down = self.encode(&conn, &topic, status.into(), true, 0, &mut out);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            if conn.send(&out).await.is_err() {
                return;
            }
            // Wait for this status's PUBACK (not an earlier status's) so
            // "down" is on the broker.
            while let Ok(p) = conn.recv().await {
                if let Incoming::PubAck { pkid, reason, why } = p {
                    self.puback(pkid, reason, why);
                    if Some(pkid) == down {
                        break;
                    }
                }
            }
        })
        .await;
        let mut out = BytesMut::new();
        conn.encode_disconnect(&mut out);
        if conn.send(&out).await.is_ok() {
            conn.close().await;
        }
        tracing::info!(
            published = self.stats.published.load(Relaxed),
            rejected = self.stats.rejected.load(Relaxed),
            pending = self.spool.len(),
            "disconnected from the broker"
        );
    }
}
