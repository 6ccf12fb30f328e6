//! What a source gets from the runtime ([`SourceContext`]) and hands back
//! ([`Event`]). A source is a future that reads its upstream (an SSH stream,
//! a RabbitMQ queue, a mailbox, a file), turns what it reads into events and
//! sends them; it says whether its upstream is connected, dead-letters what
//! is not an event, and stops when asked.
//!
//! An event may carry an acknowledgement ([`Event::ack`]) that resolves once
//! the broker has acknowledged the publish (PUBACK), as Vector's sources do:
//! a RabbitMQ source acks its message only then.

use std::sync::Arc;

use bytes::Bytes;
use firehose::PayloadMode;
use tokio::sync::{mpsc, oneshot, watch};

use crate::deadletter::DeadLetters;
use crate::stats::Stats;

/// One event to publish.
#[derive(Debug)]
pub struct Event {
    pub topic: String,
    pub payload: Bytes,
    /// Retained (state such as a service's up/down), or not (events).
    pub retain: bool,
    /// Resolved when the broker acknowledged this event; dropped unresolved
    /// if the event was lost (spool overflow).
    pub ack: Option<oneshot::Sender<()>>,
}

/// The runtime stopped: no more events are taken.
#[derive(Debug, thiserror::Error)]
#[error("the publishing runtime has stopped")]
pub struct Stopped;

/// The sending side of the runtime's queue, counting what it is given.
#[derive(Clone)]
pub struct Events {
    pub(crate) tx: mpsc::Sender<Event>,
    pub(crate) stats: Arc<Stats>,
}

impl Events {
    /// Hands an event to the runtime. Waits when the runtime is busy
    /// (backpressure on the source), never drops.
    pub async fn send(&self, ev: Event) -> Result<(), Stopped> {
        self.stats.event_read();
        self.tx.send(ev).await.map_err(|_| Stopped)
    }
}

/// Whether the source's upstream is reachable, as the status message says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upstream {
    pub connected: bool,
    /// Why not, when not.
    pub error: Option<String>,
}

/// What the runtime gives a source.
#[derive(Clone)]
pub struct SourceContext {
    pub events: Events,
    upstream: Arc<watch::Sender<Upstream>>,
    pub dead_letters: DeadLetters,
    pub stats: Arc<Stats>,
    /// Becomes true when the bridge is shutting down.
    pub shutdown: watch::Receiver<bool>,
    pub payload: PayloadMode,
    /// `--base-topic`, to put before every topic ([`Self::topic`]).
    pub base_topic: String,
}

impl SourceContext {
    pub(crate) fn new(
        events: Events,
        upstream: Arc<watch::Sender<Upstream>>,
        dead_letters: DeadLetters,
        shutdown: watch::Receiver<bool>,
        payload: PayloadMode,
        base_topic: String,
    ) -> SourceContext {
        let stats = events.stats.clone();
        SourceContext {
            events,
            upstream,
            dead_letters,
            stats,
            shutdown,
            payload,
            base_topic,
        }
    }

    /// The source reached its upstream.
    pub fn connected(&self) {
        self.stats.set_source_connected(true);
        self.upstream.send_replace(Upstream {
            connected: true,
            error: None,
        });
    }

    /// The source lost (or could not reach) its upstream.
    pub fn disconnected(&self, why: impl Into<String>) {
        self.stats.set_source_connected(false);
        self.upstream.send_replace(Upstream {
            connected: false,
            error: Some(why.into()),
        });
    }

    /// Counts a reconnection attempt to the upstream.
    pub fn reconnecting(&self) {
        self.stats
            .source_reconnects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// `topic` under `--base-topic`.
    pub fn topic(&self, topic: &str) -> String {
        firehose::topic::with_base(&self.base_topic, topic)
    }

    /// Counts, logs and dead-letters input that is not an event.
    pub fn malformed(&self, source: &str, reason: &str, input: &[u8], len: usize) {
        let n = self
            .stats
            .malformed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let file = self.dead_letters.path();
        if let Err(e) = self.dead_letters.write(source, reason, input, len) {
            tracing::error!(error = %e, file = %file.display(), "cannot write the dead-letter file");
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
}
