//! The Source API: what a bridge implements ([`Source`]), what the runtime
//! gives it ([`SourceContext`]) and what it hands back ([`Event`]).
//!
//! A source only connects to its upstream, reads, and turns what it reads
//! into events with [`SourceContext::publish`]. The runtime owns the rest:
//! it calls [`Source::run`] again after a capped, jittered backoff when it
//! fails ([`drive`]), keeps the upstream's connected/degraded/down state for
//! the status message, stops it on SIGTERM, and applies `--payload
//! raw|cloudevents`. A source that must ack its upstream only once the
//! broker has its events opens a [`Batch`](crate::ack::Batch) per unit of
//! input (see [`crate::ack`]).

use firehose::report::Chain;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use firehose::{PayloadMode, Publishable};
use tokio::sync::{mpsc, watch};

use crate::ack::{Batch, Finalizer};
use crate::deadletter::DeadLetters;
use crate::stats::Stats;
use firehose::backoff::Backoff;

/// Errors a source's `run` ends with. The runtime retries all but
/// [`SourceError::Fatal`] and [`SourceError::Stopped`].
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The upstream could not be reached or was lost (retried).
    #[error("{context}")]
    Lost {
        context: String,
        #[source]
        source: BoxError,
    },
    /// The upstream ended the stream without an error (retried).
    #[error("{0}")]
    Ended(String),
    /// Cannot go on (a replay file that does not open, ...): the bridge
    /// stops with this error.
    #[error("{context}")]
    Fatal {
        context: String,
        #[source]
        source: BoxError,
    },
    /// The runtime is stopping: no more events are taken.
    #[error("the publishing runtime has stopped")]
    Stopped,
}

/// Any error, boxed, as upstream client libraries return many kinds.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Adds what was being done to an upstream library's error.
pub trait ResultExt<T> {
    /// Lost connection or refused: the runtime retries.
    fn lost(self, context: impl Into<String>) -> Result<T, SourceError>;
    /// Cannot go on: the bridge stops with this error.
    fn fatal(self, context: impl Into<String>) -> Result<T, SourceError>;
}

impl<T, E: Into<BoxError>> ResultExt<T> for Result<T, E> {
    fn lost(self, context: impl Into<String>) -> Result<T, SourceError> {
        self.map_err(|e| SourceError::Lost {
            context: context.into(),
            source: e.into(),
        })
    }
    fn fatal(self, context: impl Into<String>) -> Result<T, SourceError> {
        self.map_err(|e| SourceError::Fatal {
            context: context.into(),
            source: e.into(),
        })
    }
}

/// An upstream a bridge reads: SSH stream-events, a RabbitMQ queue, an
/// IMAP folder, a socket, a file.
pub trait Source: Send + 'static {
    /// The upstream's name in the status message and logs (a deployment,
    /// a host); several sources of one bridge have distinct names.
    fn name(&self) -> String;

    /// One connection's life: connect, read and publish until the input
    /// ends (`Ok`: the source is finished, e.g. a replayed file) or the
    /// connection fails (`Err`: retried after a backoff). Call
    /// [`SourceContext::connected`] once the upstream is reached. The
    /// future is dropped when the bridge stops: what was read and not yet
    /// acked upstream is simply read again next time.
    fn run(&mut self, ctx: &SourceContext) -> impl Future<Output = Result<(), SourceError>> + Send;
}

/// A source of any type: a bridge that picks its source from the
/// configuration (Gerrit or a replay; IMAP, a maildir or an mbox) hands the
/// runtime these, so it needs no enum that repeats every method.
pub struct BoxedSource(Box<dyn ErasedSource>);

impl BoxedSource {
    pub fn new(source: impl Source) -> BoxedSource {
        BoxedSource(Box::new(source))
    }
}

/// [`Source`] with its future boxed, so it can live behind a `dyn`.
trait ErasedSource: Send {
    fn name(&self) -> String;
    fn run<'a>(
        &'a mut self,
        ctx: &'a SourceContext,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send + 'a>>;
}

impl<S: Source> ErasedSource for S {
    fn name(&self) -> String {
        Source::name(self)
    }
    fn run<'a>(
        &'a mut self,
        ctx: &'a SourceContext,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send + 'a>> {
        Box::pin(Source::run(self, ctx))
    }
}

impl Source for BoxedSource {
    fn name(&self) -> String {
        self.0.name()
    }
    async fn run(&mut self, ctx: &SourceContext) -> Result<(), SourceError> {
        self.0.run(ctx).await
    }
}

/// One event to publish, as the runtime spools it.
#[derive(Debug)]
pub struct Event {
    pub topic: String,
    pub payload: Bytes,
    /// Retained (state such as a service's up/down), or not (events).
    pub retain: bool,
    /// Settles the event's share of a source's batch (see [`crate::ack`]).
    pub finalizer: Option<Finalizer>,
}

/// Whether the sources' upstreams are reachable, as the status message says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upstream {
    pub connected: bool,
    /// Why not, when not (`name: error; ...` for several sources).
    pub error: Option<String>,
}

/// Every source's state, folded into one [`Upstream`]: connected only when
/// every source is.
#[derive(Clone)]
pub(crate) struct Upstreams {
    states: Arc<Mutex<BTreeMap<String, Option<String>>>>,
    tx: Arc<watch::Sender<Upstream>>,
    several: bool,
}

impl Upstreams {
    pub(crate) fn new(names: &[String], tx: watch::Sender<Upstream>) -> Upstreams {
        let states = names
            .iter()
            .map(|n| (n.clone(), Some("not connected yet".to_owned())))
            .collect();
        let u = Upstreams {
            states: Arc::new(Mutex::new(states)),
            tx: Arc::new(tx),
            several: names.len() > 1,
        };
        u.publish();
        u
    }

    /// Folds every source's state into the one the status message shows.
    fn publish(&self) -> bool {
        let m = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let down: Vec<String> = m
            .iter()
            .filter_map(|(n, e)| {
                e.as_ref().map(|e| match self.several {
                    true => format!("{n}: {e}"),
                    false => e.clone(),
                })
            })
            .collect();
        self.tx.send_replace(Upstream {
            connected: down.is_empty(),
            error: (!down.is_empty()).then(|| down.join("; ")),
        });
        down.is_empty()
    }

    fn set(&self, name: &str, error: Option<String>, stats: &Stats) {
        self.states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), error);
        stats.set_source_connected(self.publish());
    }
}

/// What the runtime gives a source.
#[derive(Clone)]
pub struct SourceContext {
    tx: mpsc::Sender<Event>,
    name: String,
    upstreams: Upstreams,
    pub dead_letters: DeadLetters,
    pub stats: Arc<Stats>,
    /// Becomes true when the bridge is shutting down.
    pub shutdown: watch::Receiver<bool>,
    pub payload: PayloadMode,
    /// `--base-topic`, put before every topic.
    base_topic: String,
    /// Set by [`Self::connected`]: when this source last reached its upstream.
    connected_at: Arc<Mutex<Option<Instant>>>,
}

impl SourceContext {
    /// A context for no source yet: see [`Self::for_source`].
    pub(crate) fn new(
        tx: mpsc::Sender<Event>,
        upstreams: Upstreams,
        dead_letters: DeadLetters,
        stats: Arc<Stats>,
        shutdown: watch::Receiver<bool>,
        payload: PayloadMode,
        base_topic: String,
    ) -> SourceContext {
        SourceContext {
            tx,
            name: String::new(),
            upstreams,
            dead_letters,
            stats,
            shutdown,
            payload,
            base_topic,
            connected_at: Arc::new(Mutex::new(None)),
        }
    }

    /// The context of the source named `name`.
    pub(crate) fn for_source(&self, name: &str) -> SourceContext {
        SourceContext {
            name: name.to_owned(),
            connected_at: Arc::new(Mutex::new(None)),
            ..self.clone()
        }
    }

    /// Publishes a typed event in the form `--payload` asks for, under
    /// `--base-topic`. `source` is the upstream's URI (CloudEvents
    /// `source`). Waits while the runtime is busy (backpressure), never
    /// drops.
    pub async fn publish(
        &self,
        ev: &impl Publishable,
        source: &str,
        batch: Option<&Batch>,
    ) -> Result<(), SourceError> {
        let payload = match self.payload {
            PayloadMode::Raw => ev.raw(),
            PayloadMode::Cloudevents => ev
                .cloudevent(source, time::OffsetDateTime::now_utc())
                .to_json(),
        };
        self.send(self.topic(&ev.topic()), payload.into(), false, batch)
            .await
    }

    /// Publishes a retained state message (JSON, the same in both payload
    /// modes), e.g. a nova service's up/down. An empty payload would delete
    /// the retained message, so it is refused.
    pub async fn retain(
        &self,
        topic: &str,
        payload: Vec<u8>,
        batch: Option<&Batch>,
    ) -> Result<(), SourceError> {
        if payload.is_empty() {
            tracing::error!(
                topic,
                "empty retained state not published (it would delete the state)"
            );
            if let Some(b) = batch {
                b.fail();
            }
            return Ok(());
        }
        self.send(self.topic(topic), payload.into(), true, batch)
            .await
    }

    async fn send(
        &self,
        topic: String,
        payload: Bytes,
        retain: bool,
        batch: Option<&Batch>,
    ) -> Result<(), SourceError> {
        self.stats.event_read();
        let ev = Event {
            topic,
            payload,
            retain,
            finalizer: batch.map(Batch::finalizer),
        };
        self.tx.send(ev).await.map_err(|_| SourceError::Stopped)
    }

    /// The source reached its upstream.
    pub fn connected(&self) {
        *self.connected_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.upstreams.set(&self.name, None, &self.stats);
    }

    /// The source lost (or could not reach) its upstream.
    pub fn disconnected(&self, why: impl Into<String>) {
        self.upstreams
            .set(&self.name, Some(why.into()), &self.stats);
    }

    /// `topic` under `--base-topic`.
    pub fn topic(&self, topic: &str) -> String {
        firehose::topic::with_base(&self.base_topic, topic)
    }

    /// Counts, logs and dead-letters input that is not an event (its first
    /// 64 KiB; `len` is its whole length).
    pub fn malformed(&self, source: &str, reason: &str, input: &[u8], len: usize) {
        self.dead_letter(source, reason, input, len, crate::deadletter::MAX_KEPT);
    }

    /// As [`Self::malformed`], keeping the whole input (a mail).
    pub fn malformed_whole(&self, source: &str, reason: &str, input: &[u8]) {
        self.dead_letter(source, reason, input, input.len(), usize::MAX);
    }

    fn dead_letter(&self, source: &str, reason: &str, input: &[u8], len: usize, keep: usize) {
        let n = self.stats.malformed.fetch_add(1, Relaxed) + 1;
        let file = self.dead_letters.path();
        if let Err(e) = self
            .dead_letters
            .write_keeping(source, reason, input, len, keep)
        {
            tracing::error!(error = %Chain(&e), file = %file.display(), "cannot write the dead-letter file");
        }
        // Rate-limited: the first ten, then every power of two.
        if n <= 10 || n.is_power_of_two() {
            tracing::warn!(source, reason, bytes = len.max(input.len()), malformed_total = n, dead_letter = %file.display(), "input is not an event; dead-lettered");
        }
    }

    /// True once the bridge is shutting down.
    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// When the source last reached its upstream, then forgets it.
    fn take_connected_at(&self) -> Option<Instant> {
        self.connected_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// How long a stopping source may take to settle its acks.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A connection that lasted this long was a success: the next failure
/// starts the backoff from the beginning.
const STABLE: Duration = Duration::from_secs(10);

/// Runs `source` until it finishes, fails fatally, or the bridge stops:
/// every other failure is logged, shown in the status and retried after a
/// capped, jittered backoff.
pub(crate) async fn drive<S: Source>(
    mut source: S,
    ctx: SourceContext,
    mut backoff: Backoff,
) -> Result<(), SourceError> {
    let mut shutdown = ctx.shutdown.clone();
    let name = source.name();
    loop {
        if ctx.stopping() {
            return Ok(());
        }
        let run = source.run(&ctx);
        tokio::pin!(run);
        let result = tokio::select! {
            r = &mut run => r,
            _ = shutdown.changed() => {
                // A source that watches `ctx.shutdown` settles what it
                // already handed over (acks upstream) and returns; give it
                // a moment, then drop it.
                let _ = tokio::time::timeout(STOP_GRACE, &mut run).await;
                return Ok(());
            }
        };
        let was_up = ctx.take_connected_at();
        let error = match result {
            Ok(()) => {
                tracing::info!(source = %name, "source finished");
                return Ok(());
            }
            Err(SourceError::Stopped) => return Ok(()),
            Err(e @ SourceError::Fatal { .. }) => {
                ctx.disconnected(error_chain(&e));
                return Err(e);
            }
            Err(e) => e,
        };
        if ctx.stopping() {
            return Ok(());
        }
        if was_up.is_some_and(|t| t.elapsed() >= STABLE) {
            backoff.reset();
        }
        let why = error_chain(&error);
        let delay = backoff.next_delay();
        tracing::warn!(source = %name, error = %why, attempt = backoff.attempts(), retry_in = ?delay, "upstream lost or unreachable; reconnecting");
        ctx.disconnected(why);
        ctx.stats.source_reconnects.fetch_add(1, Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

pub use firehose::report::error_chain;
