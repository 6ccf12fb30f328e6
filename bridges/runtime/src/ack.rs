//! End-to-end acknowledgements: how a source learns that what it read
//! reached the broker, so it acks upstream only then (a RabbitMQ message,
//! an IMAP mail marked seen, an ansible run's exit).
//!
//! In the spirit of Vector's `BatchNotifier`: a source opens a [`Batch`]
//! for one unit of upstream input (one AMQP delivery, one mail), tagged with
//! whatever it needs to ack it (`T`: a delivery tag, an IMAP UID). Every
//! event published with that batch carries a [`Finalizer`]. The runtime
//! marks each finalizer delivered when the broker's PUBACK arrives;
//! anything else (dropped from a full spool, refused by the broker, the
//! bridge stopped first) counts as failed. When the batch and all its
//! finalizers are gone, `(T, BatchStatus)` comes out of the source's
//! [`Acks`] stream, once.
//!
//! ```text
//!  source: acks.batch(tag) ─▶ ctx.publish(ev, &batch) ─▶ spool ─▶ PUBLISH
//!       ▲                                                          │
//!       └── acks.next() = (tag, Delivered) ◀── Finalizer dropped ◀─┘ PUBACK
//! ```

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// What became of everything published in one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStatus {
    /// The broker acknowledged every event of the batch.
    Delivered,
    /// At least one event was not delivered (dropped from a full spool, or
    /// the bridge stopped before its PUBACK): the upstream must keep the
    /// input, to be read again.
    Failed,
    /// The broker refused an event (an MQTT 5 PUBACK reason 0x80 or above,
    /// e.g. not authorized): it was dead-lettered. Sending it again would
    /// be refused again, so the upstream must not redeliver it, nor take it
    /// as delivered.
    Rejected,
}

/// The shared state of one batch: its tag, whether anything failed, and
/// where to report once the last holder is gone.
struct Inner<T: Send + 'static> {
    tag: Mutex<Option<T>>,
    failed: AtomicBool,
    rejected: AtomicBool,
    report: mpsc::UnboundedSender<(T, BatchStatus)>,
    pending: Arc<AtomicUsize>,
}

impl<T: Send + 'static> Drop for Inner<T> {
    fn drop(&mut self) {
        let tag = self.tag.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tag) = tag {
            let status = if self.rejected.load(Ordering::Acquire) {
                BatchStatus::Rejected
            } else if self.failed.load(Ordering::Acquire) {
                BatchStatus::Failed
            } else {
                BatchStatus::Delivered
            };
            self.pending.fetch_sub(1, Ordering::AcqRel);
            // The source stopped listening: nothing left to ack.
            let _ = self.report.send((tag, status));
        }
    }
}

/// Marks a batch failed; type-erased so events need not know `T`.
trait Fail: Send + Sync {
    fn fail(&self);
    fn reject(&self);
}

impl<T: Send + 'static> Fail for Inner<T> {
    fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }
    fn reject(&self) {
        self.rejected.store(true, Ordering::Release);
    }
}

/// One unit of upstream input. Publish its events with it, then drop it;
/// its status is reported when every event is settled.
#[derive(Clone)]
pub struct Batch(Arc<dyn Fail>);

impl Batch {
    /// A finalizer for one more event of this batch.
    pub(crate) fn finalizer(&self) -> Finalizer {
        Finalizer {
            batch: Some(self.0.clone()),
        }
    }

    /// Marks the whole batch failed (e.g. part of it could not be published).
    pub fn fail(&self) {
        self.0.fail();
    }
}

/// Carried by one event: settles its share of a batch. Dropped without
/// [`Finalizer::delivered`], it fails the batch.
pub struct Finalizer {
    batch: Option<Arc<dyn Fail>>,
}

impl Finalizer {
    /// The broker acknowledged the event.
    pub fn delivered(mut self) {
        self.batch = None;
    }

    /// The broker refused the event (see [`BatchStatus::Rejected`]).
    pub fn rejected(mut self) {
        if let Some(b) = self.batch.take() {
            b.reject();
        }
    }
}

impl Drop for Finalizer {
    fn drop(&mut self) {
        if let Some(b) = self.batch.take() {
            b.fail();
        }
    }
}

impl std::fmt::Debug for Finalizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Finalizer")
    }
}

/// A source's stream of settled batches.
pub struct Acks<T: Send + 'static> {
    tx: mpsc::UnboundedSender<(T, BatchStatus)>,
    rx: mpsc::UnboundedReceiver<(T, BatchStatus)>,
    pending: Arc<AtomicUsize>,
}

impl<T: Send + 'static> Default for Acks<T> {
    fn default() -> Self {
        Acks::new()
    }
}

impl<T: Send + 'static> Acks<T> {
    pub fn new() -> Acks<T> {
        let (tx, rx) = mpsc::unbounded_channel();
        Acks {
            tx,
            rx,
            pending: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Opens a batch for the input `tag` stands for.
    pub fn batch(&self, tag: T) -> Batch {
        self.pending.fetch_add(1, Ordering::AcqRel);
        Batch(Arc::new(Inner {
            tag: Mutex::new(Some(tag)),
            failed: AtomicBool::new(false),
            rejected: AtomicBool::new(false),
            report: self.tx.clone(),
            pending: self.pending.clone(),
        }))
    }

    /// The next settled batch. Waits forever when none is open (use it in
    /// a `select!` beside the upstream's reads).
    pub async fn next(&mut self) -> (T, BatchStatus) {
        match self.rx.recv().await {
            Some(settled) => settled,
            // Unreachable while `self.tx` lives; wait like an idle stream.
            None => std::future::pending().await,
        }
    }

    /// A settled batch, if one is ready now.
    pub fn try_next(&mut self) -> Option<(T, BatchStatus)> {
        self.rx.try_recv().ok()
    }

    /// Batches opened and not yet settled.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivered_only_when_every_event_is() {
        let mut acks = Acks::new();
        let b = acks.batch(7u64);
        let (f1, f2) = (b.finalizer(), b.finalizer());
        drop(b);
        assert_eq!(acks.pending(), 1);
        f1.delivered();
        assert!(acks.try_next().is_none());
        f2.delivered();
        assert_eq!(acks.next().await, (7, BatchStatus::Delivered));
        assert_eq!(acks.pending(), 0);

        let b = acks.batch(8);
        let (f1, f2) = (b.finalizer(), b.finalizer());
        drop(b);
        f1.delivered();
        drop(f2); // lost: dropped from the spool, or the bridge stopped
        assert_eq!(acks.next().await, (8, BatchStatus::Failed));

        let b = acks.batch(10);
        let (f1, f2) = (b.finalizer(), b.finalizer());
        drop(b);
        f1.rejected();
        drop(f2);
        assert_eq!(
            acks.next().await,
            (10, BatchStatus::Rejected),
            "refused wins"
        );

        // A batch with no events settles as delivered when dropped.
        drop(acks.batch(9));
        assert_eq!(acks.next().await, (9, BatchStatus::Delivered));
    }
}
