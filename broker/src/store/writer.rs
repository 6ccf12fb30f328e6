//! The store's one writer: a thread that appends what the broker submits,
//! many records per write and per fsync (group commit), then says how far
//! the log is durable ([`super::Store::durable`]).
//!
//! Sessions never touch the disk: they hand records to [`Queue`] (one lock,
//! a push) and, when a publisher's PUBACK depends on them, wait for the
//! watermark to pass their ticket. The thread takes everything queued at
//! once, frames it, writes it with one `write`, syncs per the policy
//! ([`Fsync`]), moves the watermark, and applies the records to its
//! [`Image`], from which it rewrites the file when the history has grown
//! to twice what is live ([`log::rewrite`], copying each live message from
//! where it is). It also reads messages back for queues that keep them on
//! disk only ([`Load`]), after the batch that wrote them. A write that fails is retried
//! every second from the same offset (the file is cut back first): the
//! watermark stands still meanwhile, so nothing is acknowledged that is not
//! on disk.

use firehose::report::Chain;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::image::{Image, Snap};
use super::log::{self, Loc};
use super::record::{Clock, Record};
use super::Fsync;
use crate::message::Message;
use crate::stats::Stats;

/// The file is rewritten only once it is at least this large, and twice
/// what a rewrite would leave.
const COMPACT_MIN: u64 = 64 << 20;
/// Retries of a failing write while the broker is stopping.
const RETRIES_AT_STOP: u32 = 5;
/// A load that names a message not yet in the image (its record is still
/// on its way from the publisher, a few microseconds behind the fan-out
/// that paged it) is tried again after each batch, this often when idle,
/// for at most [`LOAD_WAIT`].
const LOAD_RETRY: Duration = Duration::from_millis(5);
const LOAD_WAIT: Duration = Duration::from_secs(2);

/// Messages read back from the store, in the order asked; `None`: not
/// there (damaged, or never written).
pub(crate) type Loaded = Vec<Option<Arc<Message>>>;

/// A queue's request for messages it keeps on disk only.
pub(crate) struct Load {
    pub seqs: Vec<u64>,
    /// Called on the writer's thread with the messages.
    pub reply: Box<dyn FnOnce(Loaded) + Send>,
    pub since: Instant,
}

/// Records submitted and not yet taken by the thread.
#[derive(Default)]
pub(crate) struct Queue {
    pub recs: Vec<Record>,
    pub loads: Vec<Load>,
    /// Ticket of the next record submitted (the first is 1).
    pub next_ticket: u64,
    pub closing: bool,
}

/// What the broker shares with the thread.
pub(crate) struct Shared {
    pub queue: Mutex<Queue>,
    pub wake: Condvar,
    /// The highest ticket written (and synced, under `always`).
    pub durable: tokio::sync::watch::Sender<u64>,
    pub fsync: Fsync,
    pub stats: Arc<Stats>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The thread's state.
pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub path: PathBuf,
    pub file: File,
    pub len: u64,
    pub image: Image,
    /// Loads waiting for their messages' records.
    pub deferred: Vec<Load>,
}

impl Writer {
    /// Runs until the store is closed and everything submitted is written.
    pub(crate) fn run(mut self) {
        let mut buf = Vec::new();
        let mut dirty = false;
        let mut last_sync = Instant::now();
        loop {
            let (recs, loads, high, closing) = self.next_batch(dirty, last_sync);
            let clock = Clock::now();
            let n = recs.len() as u64;
            for r in recs {
                let at = self.len + buf.len() as u64;
                let len = log::frame(&r, clock, &mut buf);
                self.image.apply(r, Loc { at, len });
            }
            if !buf.is_empty() {
                self.write(&buf, closing);
                dirty = true;
                if buf.capacity() > 16 << 20 {
                    buf = Vec::new();
                } else {
                    buf.clear();
                }
            }
            let sync_now = match self.shared.fsync {
                Fsync::Always => dirty,
                Fsync::Every(p) => dirty && (closing || last_sync.elapsed() >= p),
                Fsync::Never => dirty && closing,
            };
            if sync_now {
                self.sync();
                dirty = false;
                last_sync = Instant::now();
            }
            let st = &self.shared.stats.store;
            st.records.fetch_add(n, Relaxed);
            let (msgs, queued, _) = self.image.size();
            st.messages.store(msgs as i64, Relaxed);
            st.queued.store(queued as i64, Relaxed);
            st.file_bytes.store(self.len as i64, Relaxed);
            self.shared.durable.send_replace(high);
            self.serve(loads, clock, closing);
            if closing {
                return;
            }
            if self.len >= COMPACT_MIN && self.len > 2 * self.image.estimate() {
                self.compact();
            }
        }
    }

    /// Waits for records or loads (or for the period's sync to come due,
    /// or a deferred load's retry), then takes them all: the records, the
    /// loads, the highest ticket among the records, and whether the store
    /// is closing (then this batch is the last).
    fn next_batch(&self, dirty: bool, last_sync: Instant) -> (Vec<Record>, Vec<Load>, u64, bool) {
        let mut q = self.shared.lock();
        while q.recs.is_empty() && q.loads.is_empty() && !q.closing {
            let sync_left = match self.shared.fsync {
                Fsync::Every(p) if dirty => Some(p.saturating_sub(last_sync.elapsed())),
                _ => None,
            };
            let retry = (!self.deferred.is_empty()).then_some(LOAD_RETRY);
            let left = match (sync_left, retry) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match left {
                Some(l) if l.is_zero() => break,
                Some(l) => {
                    let (g, timed_out) = match self.shared.wake.wait_timeout(q, l) {
                        Ok((g, t)) => (g, t.timed_out()),
                        Err(e) => (e.into_inner().0, true),
                    };
                    q = g;
                    if timed_out {
                        break;
                    }
                }
                None => {
                    q = self.shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
        let recs = std::mem::take(&mut q.recs);
        let loads = std::mem::take(&mut q.loads);
        (recs, loads, q.next_ticket.saturating_sub(1), q.closing)
    }

    /// Answers the loads whose messages are all in the image (or that
    /// waited long enough, or all of them at the last batch); keeps the
    /// others for the next round.
    fn serve(&mut self, new: Vec<Load>, clock: Clock, last: bool) {
        if new.is_empty() && self.deferred.is_empty() {
            return;
        }
        let mut loads = std::mem::take(&mut self.deferred);
        loads.extend(new);
        for load in loads {
            let ready = last
                || load.since.elapsed() >= LOAD_WAIT
                || load.seqs.iter().all(|s| self.image.stored(*s).is_some());
            if !ready {
                self.deferred.push(load);
                continue;
            }
            let stats = &self.shared.stats;
            let msgs = load
                .seqs
                .iter()
                .map(|seq| match self.image.stored(*seq) {
                    Some((loc, _)) => super::read_counted(&self.file, loc, clock, stats),
                    None => {
                        // A queue held a message the store never got: lost.
                        stats.count(crate::stats::Reason::StoreDamage);
                        tracing::error!(
                            seq,
                            "a queued message is not in the store; it is lost for its queue"
                        );
                        None
                    }
                })
                .collect();
            (load.reply)(msgs);
        }
    }

    /// Appends `buf`; on failure cuts the file back and tries again every
    /// second (a few times only while stopping).
    fn write(&mut self, buf: &[u8], closing: bool) {
        let mut failures = 0u32;
        loop {
            match self.file.write_all(buf) {
                Ok(()) => {
                    self.len += buf.len() as u64;
                    self.shared
                        .stats
                        .store
                        .bytes
                        .fetch_add(buf.len() as u64, Relaxed);
                    if failures > 0 {
                        tracing::info!(path = %self.path.display(), failures, "store writes work again");
                    }
                    return;
                }
                Err(e) => {
                    failures += 1;
                    self.shared.stats.store.write_errors.fetch_add(1, Relaxed);
                    if failures.is_power_of_two() {
                        tracing::error!(path = %self.path.display(), error = %Chain(&e), failures, "cannot write the store; acknowledgements that need it wait (free disk space or fix the directory)");
                    }
                    if closing && failures >= RETRIES_AT_STOP {
                        tracing::error!(path = %self.path.display(), bytes = buf.len(), "giving up writing the store at stop: the last changes are lost");
                        return;
                    }
                    // A partial write would leave half a record in the
                    // middle of the log: cut back to the good end first.
                    let _ = self.file.set_len(self.len);
                    use std::io::Seek;
                    let _ = self.file.seek(std::io::SeekFrom::End(0));
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    fn sync(&mut self) {
        match self.file.sync_data() {
            Ok(()) => {
                self.shared.stats.store.syncs.fetch_add(1, Relaxed);
            }
            Err(e) => {
                self.shared.stats.store.write_errors.fetch_add(1, Relaxed);
                tracing::error!(path = %self.path.display(), error = %Chain(&e), "store fsync failed");
            }
        }
    }

    /// Rewrites the file from the image, each live message copied from
    /// where it is. On failure the old file goes on.
    fn compact(&mut self) {
        let start = Instant::now();
        let before = self.len;
        let parts = self.image.snapshot();
        let records = parts.len();
        let clock = Clock::now();
        let (old, stats) = (&self.file, &self.shared.stats);
        let mut lost = Vec::new();
        let recs = parts.into_iter().filter_map(|p| match p {
            Snap::Rec(r) => Some(r),
            Snap::Msg {
                loc,
                retained,
                targets,
            } => match super::read_counted(old, loc, clock, stats) {
                Some(msg) => Some(Record::Msg {
                    msg,
                    retained,
                    targets,
                    more: false,
                }),
                None => {
                    lost.push(loc);
                    None
                }
            },
        });
        let mut moved = Vec::new();
        let written = log::rewrite(&self.path, recs, clock, |r, loc| {
            if let Record::Msg { msg, .. } = r {
                moved.push((msg.seq(), loc));
            }
        });
        match written {
            Ok((file, len)) => {
                self.file = file;
                self.len = len;
                // What could not be read back is gone (counted): the
                // image forgets it, so nothing points into the old file.
                if !lost.is_empty() {
                    self.image.keep_only(moved.iter().map(|(seq, _)| *seq));
                }
                for (seq, loc) in moved {
                    self.image.relocate(seq, loc);
                }
                self.shared.stats.store.compactions.fetch_add(1, Relaxed);
                tracing::info!(path = %self.path.display(), before, after = len, records, lost = lost.len(), ms = start.elapsed().as_millis() as u64, "store compacted");
            }
            Err(e) => {
                self.shared.stats.store.write_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %Chain(&e), "store compaction failed; the log goes on growing");
            }
        }
    }
}
