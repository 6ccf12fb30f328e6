//! The persistent store (`--persistence DIR`): retained messages,
//! persistent sessions and what is queued for them survive a restart and a
//! crash.
//!
//! An append-only log of checksummed records ([`log`], [`record`]), one
//! writer thread with group commit ([`writer`]), and the image the records
//! add up to ([`image`]), replayed at start and rewritten from memory when
//! the history has grown to twice what is live. Why a log of our own and
//! not an embedded database, with the figures: `docs/persistence.md`.
//!
//! The broker's side is three calls: [`Store::submit`] a record (a lock and
//! a push: no I/O on the caller's task), [`Store::durable`] to wait until a
//! ticket is on disk before a PUBACK that promises it, [`Store::next_seq`]
//! to number a message before its fan-out, and [`Store::load`] to read
//! back what an offline queue keeps on disk only (past its
//! [`Store::queue_memory`]). Clean sessions and QoS 0 never come here: a
//! reader that keeps nothing costs nothing.

#[cfg(test)]
mod compare;
mod image;
mod log;
mod record;
mod writer;

use firehose::report::Chain;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub(crate) use image::{Image, SessionImage};
pub(crate) use record::{unix_ms, Record, SessionRec, SubRec, Target};
pub(crate) use writer::Loaded;

use crate::message::Message;
use crate::stats::{Reason, Stats};

/// When the log reaches the disk (`--fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before every acknowledgement that depends on it (group commit: one
    /// fsync covers every record written since the last).
    Always,
    /// At most this long after a write. PUBACKs wait for the write (a
    /// crash of the broker loses nothing acknowledged), not for the sync (a
    /// power loss loses at most this much).
    Every(Duration),
    /// Left to the operating system; PUBACKs do not wait at all.
    Never,
}

impl Default for Fsync {
    fn default() -> Self {
        Fsync::Every(Duration::from_millis(100))
    }
}

impl std::str::FromStr for Fsync {
    type Err = String;

    fn from_str(s: &str) -> Result<Fsync, String> {
        let s = s.trim();
        match s {
            "always" => return Ok(Fsync::Always),
            "never" => return Ok(Fsync::Never),
            _ => {}
        }
        let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let n: u64 = num.parse().map_err(|_| {
            format!("--fsync {s:?}: expected always, never or a period like 100ms or 1s")
        })?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            _ => {
                return Err(format!(
                    "--fsync {s:?}: the period needs a unit, ms or s (e.g. 100ms)"
                ))
            }
        };
        if d.is_zero() {
            return Err("--fsync 0: say always (sync before each acknowledgement) or never".into());
        }
        Ok(Fsync::Every(d))
    }
}

impl std::fmt::Display for Fsync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fsync::Always => f.write_str("always"),
            Fsync::Never => f.write_str("never"),
            Fsync::Every(d) => write!(f, "{}ms", d.as_millis()),
        }
    }
}

impl serde::Serialize for Fsync {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fsync {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Fsync, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why the store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create or open the store directory {path}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the store {path} is in use by another broker (pid {pid}); stop it, or give this one its own --persistence directory")]
    Locked { path: PathBuf, pid: String },
    #[error("{path} is not a firehose-broker store (its header is wrong); move it away or point --persistence elsewhere")]
    NotAStore { path: PathBuf },
    #[error("{path} was written by a newer firehose-broker (store format {found}; this one reads up to {}); run the newer broker, or move the directory away to start empty", log::FORMAT)]
    Newer { path: PathBuf, found: u32 },
    #[error("cannot read the store {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the store {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What opening the store found, for the start-up log line.
#[derive(Debug, Clone)]
pub(crate) struct Opened {
    pub path: PathBuf,
    pub bytes: u64,
    pub records: u64,
    /// Bytes cut off the end, and why (see [`log`]).
    pub cut: Option<(&'static str, u64)>,
    pub took: Duration,
}

/// The handle the broker holds; cheap to clone. See the module documentation.
#[derive(Clone)]
pub(crate) struct Store {
    shared: Arc<writer::Shared>,
    seq: Arc<AtomicU64>,
    queue_memory: usize,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("fsync", &self.shared.fsync)
            .finish()
    }
}

/// A store opened and read, its writer not yet started: the broker
/// restores from [`Pending::image`], then [`Pending::start`]s the writer
/// with it.
pub(crate) struct Pending {
    pub store: Store,
    pub image: Image,
    pub opened: Opened,
    path: PathBuf,
    file: File,
    len: u64,
    _lock: File,
}

impl Store {
    /// Opens (creating it if need be) the store in `dir`, locks it, reads
    /// it (cutting a damaged tail, counted), and returns it with its image.
    /// `queue_memory`: see [`Store::queue_memory`].
    pub(crate) fn open(
        dir: &Path,
        fsync: Fsync,
        queue_memory: usize,
        stats: Arc<Stats>,
    ) -> Result<Pending, StoreError> {
        let start = Instant::now();
        create_dir(dir)?;
        let lock = lock(dir)?;
        let path = dir.join("store.log");
        let mut image = Image::default();
        let (scan, bytes) = if path.exists() {
            let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
            let clock = record::Clock::now();
            (
                Some(log::read(&path, clock, |r, loc| image.apply(r, loc))?),
                bytes,
            )
        } else {
            (None, 0)
        };
        let cut = scan
            .and_then(|s| s.damage)
            .map(|(d, at)| (d.as_str(), bytes.saturating_sub(at)));
        if let Some((why, cut_bytes)) = cut {
            stats.count(Reason::StoreDamage);
            tracing::warn!(path = %path.display(), damage = why, cut_bytes, kept_records = scan.map_or(0, |s| s.records), "store ends in a damaged record; cut at the last good one");
        }
        let good = scan.map(|s| s.good_len);
        let file = log::open_append(&path, Some(good.unwrap_or(0)))?;
        let len = good
            .filter(|g| *g >= log::HEADER_LEN)
            .unwrap_or(log::HEADER_LEN);
        let (durable, _) = tokio::sync::watch::channel(0);
        let store = Store {
            shared: Arc::new(writer::Shared {
                queue: Mutex::new(writer::Queue {
                    next_ticket: 1,
                    ..Default::default()
                }),
                wake: Condvar::new(),
                durable,
                fsync,
                stats,
            }),
            seq: Arc::new(AtomicU64::new(image.max_seq + 1)),
            queue_memory,
            thread: Arc::new(Mutex::new(None)),
        };
        let opened = Opened {
            path: path.clone(),
            bytes,
            records: scan.map_or(0, |s| s.records),
            cut,
            took: start.elapsed(),
        };
        Ok(Pending {
            store,
            image,
            opened,
            path,
            file,
            len,
            _lock: lock,
        })
    }

    /// A number for a message about to be fanned out (see [`Record::Msg`]).
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Relaxed)
    }

    /// Queues a record for the writer; returns its ticket (see [`Store::durable`]).
    pub(crate) fn submit(&self, r: Record) -> u64 {
        let mut q = self.shared.lock();
        let t = q.next_ticket;
        q.next_ticket += 1;
        q.recs.push(r);
        let first = q.recs.len() == 1;
        drop(q);
        if first {
            self.shared.wake.notify_one();
        }
        t
    }

    /// Queues several records at once; returns the last one's ticket.
    pub(crate) fn submit_all(&self, rs: impl IntoIterator<Item = Record>) -> u64 {
        let mut q = self.shared.lock();
        let was_empty = q.recs.is_empty();
        for r in rs {
            q.recs.push(r);
            q.next_ticket += 1;
        }
        let t = q.next_ticket - 1;
        drop(q);
        if was_empty {
            self.shared.wake.notify_one();
        }
        t
    }

    /// Bytes of an offline persistent session's queue kept in memory
    /// (`[persistence] queue_memory`); what arrives beyond them is on disk
    /// only, read back ([`Store::load`]) when its client returns.
    pub(crate) fn queue_memory(&self) -> usize {
        self.queue_memory
    }

    /// Reads messages `seqs` back from the file (after every record
    /// submitted before this call is written); `reply` gets them in order,
    /// on the writer's thread, so it must be quick (a lock and a push).
    pub(crate) fn load(&self, seqs: Vec<u64>, reply: impl FnOnce(Loaded) + Send + 'static) {
        self.shared.lock().loads.push(writer::Load {
            seqs,
            reply: Box::new(reply),
            since: Instant::now(),
        });
        self.shared.wake.notify_one();
    }

    /// The highest ticket on disk (written; synced under `always`).
    pub(crate) fn durable(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.durable.subscribe()
    }

    /// The highest ticket on disk now.
    pub(crate) fn durable_now(&self) -> u64 {
        *self.shared.durable.borrow()
    }

    /// Whether acknowledgements wait for the store (all but `never`).
    pub(crate) fn holds_acks(&self) -> bool {
        self.shared.fsync != Fsync::Never
    }

    /// Writes and syncs everything submitted, then stops the writer.
    pub(crate) fn close(&self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

impl Pending {
    /// The stored message `seq`, read back from the file (at start, to
    /// restore retained messages and the heads of queues).
    pub(crate) fn message(&self, seq: u64) -> Option<Arc<Message>> {
        let (loc, _) = self.image.stored(seq)?;
        read_counted(
            &self.file,
            loc,
            record::Clock::now(),
            &self.store.shared.stats,
        )
    }

    /// Starts the writer thread with the image (after the broker restored
    /// from it); records submitted meanwhile are written first.
    pub(crate) fn start(self) -> Result<Store, StoreError> {
        let w = writer::Writer {
            shared: self.store.shared.clone(),
            path: self.path.clone(),
            file: self.file,
            len: self.len,
            image: self.image,
            deferred: Vec::new(),
        };
        let lock = self._lock;
        let handle = std::thread::Builder::new()
            .name("firehose-store".into())
            .spawn(move || {
                // The lock lives as long as the writer.
                let _lock = lock;
                w.run()
            })
            .map_err(|source| StoreError::Write {
                path: self.path.clone(),
                source,
            })?;
        *self.store.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(self.store)
    }
}

/// Reads the message at `loc` back. A record that cannot be read is
/// counted (`store_damage`) and logged, and the message is lost for its
/// queues: the others go on.
fn read_counted(
    file: &File,
    loc: log::Loc,
    clock: record::Clock,
    stats: &Stats,
) -> Option<Arc<Message>> {
    match log::read_message(file, loc, clock) {
        Ok(m) => Some(m),
        Err(e) => {
            stats.count(Reason::StoreDamage);
            let cause = std::error::Error::source(&e).map(|c| c.to_string());
            tracing::error!(offset = loc.at, error = %Chain(&e), cause, "a stored message cannot be read back; it is lost for the queues that held it");
            None
        }
    }
}

fn create_dir(dir: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::Dir {
        path: dir.to_owned(),
        source,
    };
    if !dir.exists() {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(dir).map_err(err)?;
    }
    Ok(())
}

/// Holds `DIR/lock` for the broker's life: two brokers appending to one
/// log would interleave records. The holder's pid is written in it.
fn lock(dir: &Path) -> Result<File, StoreError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("lock");
    let err = |source| StoreError::Dir {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(err)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            return Err(StoreError::Locked {
                path: dir.to_owned(),
                pid: pid.trim().to_owned(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
    }
    f.set_len(0).map_err(err)?;
    f.seek(std::io::SeekFrom::Start(0)).map_err(err)?;
    writeln!(f, "{}", std::process::id()).map_err(err)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A started store in `dir` (`--fsync never`) and its counters.
    fn started(dir: &Path) -> (Store, Arc<Stats>) {
        let stats = Arc::new(Stats::default());
        let store = Store::open(dir, Fsync::Never, 0, stats.clone())
            .unwrap()
            .start()
            .unwrap();
        (store, stats)
    }

    #[test]
    fn fsync_policies_parse_and_say_what_is_wrong() {
        assert_eq!("always".parse(), Ok(Fsync::Always));
        assert_eq!("never".parse(), Ok(Fsync::Never));
        assert_eq!(
            "100ms".parse(),
            Ok(Fsync::Every(Duration::from_millis(100)))
        );
        assert_eq!("2s".parse(), Ok(Fsync::Every(Duration::from_secs(2))));
        assert!("100".parse::<Fsync>().unwrap_err().contains("unit"));
        assert!("0ms".parse::<Fsync>().unwrap_err().contains("always"));
        assert!("sometimes".parse::<Fsync>().is_err());
        assert_eq!(Fsync::default().to_string(), "100ms");
    }

    #[test]
    fn what_is_submitted_is_on_disk_at_the_ticket_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let p = Store::open(dir.path(), Fsync::Always, 0, stats.clone()).unwrap();
        assert!(p.opened.cut.is_none());
        let store = p.start().unwrap();
        let other = Store::open(dir.path(), Fsync::Always, 0, stats.clone());
        assert!(matches!(other, Err(StoreError::Locked { .. })), "locked");
        let m = record::tests::msg("a/b", store.next_seq(), None);
        store.submit(Record::Msg {
            msg: m,
            retained: true,
            targets: vec![],
            more: false,
        });
        let t = store.submit_all((0..3).map(|k| Record::SessionEnd { key: k }));
        assert_eq!(t, 4);
        let mut rx = store.durable();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { rx.wait_for(|d| *d >= t).await.map(|_| ()) })
            .unwrap();
        assert!(stats.store.syncs.load(Relaxed) >= 1);
        store.close();
        let p = Store::open(dir.path(), Fsync::Always, 0, stats).unwrap();
        assert_eq!(p.opened.records, 4);
        assert_eq!(p.image.retained().count(), 1);
        assert_eq!(p.store.next_seq(), 2, "numbers go on from the stored ones");
    }

    /// A load may come before the record of its message (the publisher
    /// writes it after its fan-out): it waits for it. One for a message
    /// that never comes is answered empty, counted, after a bound.
    #[test]
    fn a_load_waits_for_its_message_and_gives_up_on_one_that_never_comes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, stats) = started(dir.path());
        let seq = store.next_seq();
        let (tx, rx) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        store.load(vec![seq], move |m| tx.send(m).unwrap());
        store.load(vec![seq + 100], move |m| tx2.send(m).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        let m = record::tests::msg("late/topic", seq, None);
        store.submit(Record::Msg {
            msg: m,
            retained: true,
            targets: vec![],
            more: false,
        });
        let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].as_ref().map(|m| m.seq()), Some(seq));
        assert_eq!(&first[0].as_ref().unwrap().topic[..], b"late/topic");
        let never = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(never[0].is_none());
        assert_eq!(stats.dropped(Reason::StoreDamage), 1);
        store.close();
    }

    /// The writer rewrites the file once it is large and mostly history;
    /// what was live is all there after a restart.
    #[test]
    fn a_log_of_mostly_history_is_compacted_and_reads_back_live() {
        let dir = tempfile::tempdir().unwrap();
        let (store, stats) = started(dir.path());
        let session = |key| {
            Record::Session(Box::new(SessionRec {
                key,
                client_id: "ingester".into(),
                user: Some("history".into()),
                level: 5,
                expiry_secs: 3600,
                subs: vec![],
                will: None,
                departed_ms: None,
                will_armed: false,
            }))
        };
        store.submit(session(1));
        let big = bytes::Bytes::from(vec![b'x'; 64 << 10]);
        let target = || {
            vec![Target {
                key: 1,
                qos: 1,
                retain: false,
                sub_ids: vec![],
            }]
        };
        // 80 MiB of messages, each acknowledged but the last.
        let n = 1280;
        let mut last = 0;
        for i in 0..n {
            let m = crate::message::Message::new(
                bytes::Bytes::from_static(b"t"),
                big.clone(),
                1,
                false,
                None,
                0,
            );
            let seq = store.next_seq();
            m.seq.store(seq, Relaxed);
            store.submit(Record::Msg {
                msg: m,
                retained: false,
                targets: target(),
                more: false,
            });
            if i + 1 < n {
                store.submit(Record::Acked {
                    key: 1,
                    seqs: vec![seq],
                });
            }
            last = seq;
        }
        let t = store.submit(Record::Released { key: 1, pkid: 0 });
        let mut rx = store.durable();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async { rx.wait_for(|d| *d >= t).await.map(|_| ()) })
            .unwrap();
        store.close();
        assert!(stats.store.compactions.load(Relaxed) >= 1, "compacted");
        let len = std::fs::metadata(dir.path().join("store.log"))
            .unwrap()
            .len();
        assert!(len < 32 << 20, "the file holds little history: {len} bytes");
        let p = Store::open(dir.path(), Fsync::Never, 0, stats).unwrap();
        assert!(p.opened.cut.is_none());
        let s: Vec<_> = p.image.sessions().collect();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].queue.keys().copied().collect::<Vec<_>>(), vec![last]);
        assert_eq!(p.message(last).map(|m| m.payload.len()), Some(64 << 10));
    }
}
