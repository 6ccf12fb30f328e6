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
//! to twice what is live ([`log::rewrite`]). A write that fails is retried
//! every second from the same offset (the file is cut back first): the
//! watermark stands still meanwhile, so nothing is acknowledged that is not
//! on disk.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::image::Image;
use super::log;
use super::record::{Clock, Record};
use super::Fsync;
use crate::stats::Stats;

/// The file is rewritten only once it is at least this large, and twice
/// what a rewrite would leave.
const COMPACT_MIN: u64 = 64 << 20;
/// Retries of a failing write while the broker is stopping.
const RETRIES_AT_STOP: u32 = 5;

/// Records submitted and not yet taken by the thread.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub recs: Vec<Record>,
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
}

impl Writer {
    /// Runs until the store is closed and everything submitted is written.
    pub(crate) fn run(mut self) {
        let mut buf = Vec::new();
        let mut dirty = false;
        let mut last_sync = Instant::now();
        loop {
            let (recs, high, closing) = self.next_batch(dirty, last_sync);
            let clock = Clock::now();
            let n = recs.len() as u64;
            for r in recs {
                log::frame(&r, clock, &mut buf);
                self.image.apply(r);
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
            if closing {
                return;
            }
            if self.len >= COMPACT_MIN && self.len > 2 * self.image.estimate() {
                self.compact();
            }
        }
    }

    /// Waits for records (or for the period's sync to come due), then takes
    /// them all: the records, the highest ticket among them, and whether
    /// the store is closing (then this batch is the last).
    fn next_batch(&self, dirty: bool, last_sync: Instant) -> (Vec<Record>, u64, bool) {
        let mut q = self.shared.lock();
        while q.recs.is_empty() && !q.closing {
            match self.shared.fsync {
                Fsync::Every(p) if dirty => {
                    let left = p.saturating_sub(last_sync.elapsed());
                    if left.is_zero() {
                        break;
                    }
                    q = self
                        .shared
                        .wake
                        .wait_timeout(q, left)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                _ => {
                    q = self.shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
        let recs = std::mem::take(&mut q.recs);
        (recs, q.next_ticket.saturating_sub(1), q.closing)
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
                        tracing::error!(path = %self.path.display(), error = %e, failures, "cannot write the store; acknowledgements that need it wait (free disk space or fix the directory)");
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
                tracing::error!(path = %self.path.display(), error = %e, "store fsync failed");
            }
        }
    }

    /// Rewrites the file from the image. On failure the old file goes on.
    fn compact(&mut self) {
        let start = Instant::now();
        let before = self.len;
        let recs = self.image.snapshot();
        match log::rewrite(&self.path, &recs, Clock::now()) {
            Ok((file, len)) => {
                self.file = file;
                self.len = len;
                self.shared.stats.store.compactions.fetch_add(1, Relaxed);
                tracing::info!(path = %self.path.display(), before, after = len, records = recs.len(), ms = start.elapsed().as_millis() as u64, "store compacted");
            }
            Err(e) => {
                self.shared.stats.store.write_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "store compaction failed; the log goes on growing");
            }
        }
    }
}
