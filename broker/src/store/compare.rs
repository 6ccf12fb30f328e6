//! The figures behind the store's design (issue #19 point 3): the same
//! workload on this append-only log (through the real writer thread) and on
//! redb, a maintained embedded copy-on-write B-tree.
//!
//! Not a test: `#[ignore]`d, run by `scripts/bench-store`, which prints a
//! table for `BENCHMARKS.md`. It lives in the crate because the log's
//! record types and writer are `pub(crate)`.
//!
//! The workload is the broker's heaviest persistent one, a QoS 1 fan-out
//! 1 → `SESSIONS` persistent readers, in batches of `BATCH` publishes (a
//! bridge's window): per batch, the messages with their queue entries,
//! then the packet ids they were sent with, then their acknowledgements;
//! one commit (and, under `always`, one fsync) per step, as the broker's
//! group commit does. Recovery: `QUEUED` messages queued for one offline
//! reader, the store closed, then opened and read back to what the broker
//! needs in memory (each queued delivery's number and location).

use super::record::{Record, SessionRec, Target};
use super::{Fsync, Store};
use crate::message::Message;
use crate::stats::Stats;
use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SESSIONS: u64 = 50;
const BATCH: u64 = 100;
const PAYLOAD: usize = 256;

/// redb: message bodies by number; queue entries by (session, number) with
/// the packet id they were sent with (0: not yet sent).
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const QUEUES: TableDefinition<(u64, u64), u16> = TableDefinition::new("queues");

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn payload(seq: u64) -> Bytes {
    let mut p = format!("{{\"event\":{seq},\"pad\":\"").into_bytes();
    p.resize(PAYLOAD - 2, b'x');
    p.extend_from_slice(b"\"}");
    Bytes::from(p)
}

fn message(seq: u64) -> Arc<Message> {
    let m = Message::new(
        Bytes::from(format!("nova/prod/compute/host-{}", seq % 64)),
        payload(seq),
        1,
        false,
        None,
        1,
    );
    m.seq.store(seq, std::sync::atomic::Ordering::Relaxed);
    m
}

fn targets(keys: impl Iterator<Item = u64>) -> Vec<Target> {
    keys.map(|key| Target {
        key,
        qos: 1,
        retain: false,
        sub_ids: vec![],
    })
    .collect()
}

/// The persistent sessions' records (the log drops queue entries of a
/// session it does not know).
fn sessions(keys: impl Iterator<Item = u64>) -> Vec<Record> {
    keys.map(|key| {
        Record::Session(Box::new(SessionRec {
            key,
            client_id: format!("reader-{key}"),
            user: None,
            level: 4,
            expiry_secs: u64::from(u32::MAX),
            subs: vec![],
            will: None,
            departed_ms: None,
            will_armed: false,
        }))
    })
    .collect()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// One engine's figures for one durability policy.
struct Row {
    engine: &'static str,
    policy: &'static str,
    publishes_per_s: f64,
    bytes_after: u64,
    recovery: Duration,
    recovered: u64,
    recovery_bytes: u64,
}

struct Log {
    store: Store,
    rt: tokio::runtime::Runtime,
}

impl Log {
    fn open(dir: &Path, fsync: Fsync) -> Log {
        let store = Store::open(dir, fsync, 0, Arc::new(Stats::default()))
            .and_then(|p| p.start())
            .unwrap_or_else(|e| panic!("log store in {}: {e}", dir.display()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        Log { store, rt }
    }

    /// Submits `rs` and waits until the writer says they are durable under
    /// the policy (written; fsynced under `always`).
    fn commit(&self, rs: Vec<Record>) {
        let t = self.store.submit_all(rs);
        let mut rx = self.store.durable();
        self.rt
            .block_on(async { rx.wait_for(|d| *d >= t).await.map(|_| ()) })
            .unwrap_or_else(|e| panic!("writer gone: {e}"));
    }
}

fn log_fanout(dir: &Path, fsync: Fsync, publishes: u64) -> f64 {
    let log = Log::open(dir, fsync);
    log.commit(sessions(1..=SESSIONS));
    let start = Instant::now();
    for b in 0..publishes / BATCH {
        let seqs: Vec<u64> = (0..BATCH).map(|_| log.store.next_seq()).collect();
        log.commit(
            seqs.iter()
                .map(|&s| Record::Msg {
                    msg: message(s),
                    retained: false,
                    targets: targets(1..=SESSIONS),
                    more: false,
                })
                .collect(),
        );
        log.commit(
            (1..=SESSIONS)
                .map(|key| Record::Sent {
                    key,
                    sent: seqs
                        .iter()
                        .enumerate()
                        .map(|(i, &s)| (s, (b * BATCH + i as u64) as u16 % 65535 + 1))
                        .collect(),
                })
                .collect(),
        );
        log.commit(
            (1..=SESSIONS)
                .map(|key| Record::Acked {
                    key,
                    seqs: seqs.clone(),
                })
                .collect(),
        );
    }
    let rate = publishes as f64 / start.elapsed().as_secs_f64();
    log.store.close();
    rate
}

fn log_recovery(dir: &Path, queued: u64) -> (Duration, u64, u64) {
    let log = Log::open(dir, Fsync::Never);
    log.commit(sessions(std::iter::once(1)));
    for _ in 0..queued / 1000 {
        let rs = (0..1000)
            .map(|_| Record::Msg {
                msg: message(log.store.next_seq()),
                retained: false,
                targets: targets(std::iter::once(1)),
                more: false,
            })
            .collect();
        log.commit(rs);
    }
    log.store.close();
    drop(log);
    let bytes = dir_bytes(dir);
    let start = Instant::now();
    let p = Store::open(dir, Fsync::Never, 0, Arc::new(Stats::default()))
        .unwrap_or_else(|e| panic!("reopen: {e}"));
    let n = p
        .image
        .sessions()
        .map(|s| s.queue.len() as u64)
        .sum::<u64>();
    (start.elapsed(), n, bytes)
}

fn redb_commit(db: &Database, durability: Durability, f: impl FnOnce(&redb::WriteTransaction)) {
    let mut tx = db
        .begin_write()
        .unwrap_or_else(|e| panic!("redb begin: {e}"));
    tx.set_durability(durability)
        .unwrap_or_else(|e| panic!("redb durability: {e}"));
    f(&tx);
    tx.commit().unwrap_or_else(|e| panic!("redb commit: {e}"));
}

fn redb_fanout(dir: &Path, durability: Durability, publishes: u64) -> f64 {
    let db = Database::create(dir.join("store.redb")).unwrap_or_else(|e| panic!("redb: {e}"));
    let start = Instant::now();
    let mut next = 1u64;
    for b in 0..publishes / BATCH {
        let seqs: Vec<u64> = (next..next + BATCH).collect();
        next += BATCH;
        redb_commit(&db, durability, |tx| {
            let mut m = tx.open_table(MESSAGES).unwrap();
            let mut q = tx.open_table(QUEUES).unwrap();
            for &s in &seqs {
                let msg = message(s);
                let mut body = msg.topic.to_vec();
                body.extend_from_slice(&msg.payload);
                m.insert(s, body.as_slice()).unwrap();
                for key in 1..=SESSIONS {
                    q.insert((key, s), 0u16).unwrap();
                }
            }
        });
        redb_commit(&db, durability, |tx| {
            let mut q = tx.open_table(QUEUES).unwrap();
            for key in 1..=SESSIONS {
                for (i, &s) in seqs.iter().enumerate() {
                    let pkid = (b * BATCH + i as u64) as u16 % 65535 + 1;
                    q.insert((key, s), pkid).unwrap();
                }
            }
        });
        redb_commit(&db, durability, |tx| {
            let mut m = tx.open_table(MESSAGES).unwrap();
            let mut q = tx.open_table(QUEUES).unwrap();
            for key in 1..=SESSIONS {
                for &s in &seqs {
                    q.remove((key, s)).unwrap();
                }
            }
            for &s in &seqs {
                m.remove(s).unwrap();
            }
        });
    }
    publishes as f64 / start.elapsed().as_secs_f64()
}

fn redb_recovery(dir: &Path, queued: u64) -> (Duration, u64, u64) {
    let path = dir.join("store.redb");
    {
        let db = Database::create(&path).unwrap_or_else(|e| panic!("redb: {e}"));
        let mut next = 1u64;
        for _ in 0..queued / 1000 {
            redb_commit(&db, Durability::None, |tx| {
                let mut m = tx.open_table(MESSAGES).unwrap();
                let mut q = tx.open_table(QUEUES).unwrap();
                for s in next..next + 1000 {
                    let msg = message(s);
                    let mut body = msg.topic.to_vec();
                    body.extend_from_slice(&msg.payload);
                    m.insert(s, body.as_slice()).unwrap();
                    q.insert((1, s), 0u16).unwrap();
                }
            });
            next += 1000;
        }
        redb_commit(&db, Durability::Immediate, |_| {});
    }
    let bytes = dir_bytes(dir);
    let start = Instant::now();
    let db = Database::open(&path).unwrap_or_else(|e| panic!("redb open: {e}"));
    let rx = db.begin_read().unwrap();
    let q = rx.open_table(QUEUES).unwrap();
    let mut n = 0u64;
    for e in q.iter().unwrap() {
        let (k, _pkid) = e.unwrap();
        std::hint::black_box(k.value());
        n += 1;
    }
    (start.elapsed(), n, bytes)
}

#[test]
#[ignore = "a measurement, not a test: scripts/bench-store runs it"]
fn store_engines_compared() {
    let publishes = env("BENCH_PUBLISHES", 20_000) / BATCH * BATCH;
    let queued = env("BENCH_QUEUED", 1_000_000) / 1000 * 1000;
    let base = std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let fresh = |name: &str| {
        tempfile::Builder::new()
            .prefix(name)
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("temp dir in {}: {e}", base.display()))
    };
    let mut rows = Vec::new();
    let (log_rec, redb_rec) = {
        let d = fresh("log-recovery");
        let l = log_recovery(d.path(), queued);
        let d = fresh("redb-recovery");
        (l, redb_recovery(d.path(), queued))
    };
    for (policy, fsync, durability) in [
        ("always", Fsync::Always, Durability::Immediate),
        ("never", Fsync::Never, Durability::None),
    ] {
        let d = fresh("log-fanout");
        let rate = log_fanout(d.path(), fsync, publishes);
        rows.push(Row {
            engine: "firehose log",
            policy,
            publishes_per_s: rate,
            bytes_after: dir_bytes(d.path()),
            recovery: log_rec.0,
            recovered: log_rec.1,
            recovery_bytes: log_rec.2,
        });
        let d = fresh("redb-fanout");
        let rate = redb_fanout(d.path(), durability, publishes);
        rows.push(Row {
            engine: "redb 4.6",
            policy,
            publishes_per_s: rate,
            bytes_after: dir_bytes(d.path()),
            recovery: redb_rec.0,
            recovered: redb_rec.1,
            recovery_bytes: redb_rec.2,
        });
    }
    println!();
    println!(
        "fan-out 1 -> {SESSIONS} persistent readers, {publishes} QoS 1 x {PAYLOAD} B publishes in batches of {BATCH}; recovery of {queued} queued"
    );
    println!("| store | commit | publishes/s | disk after (all acknowledged) | recovery: open + read the queue | disk read at recovery |");
    println!("|---|---|---:|---:|---:|---:|");
    for r in &rows {
        assert_eq!(
            r.recovered, queued,
            "{} recovered every queued message",
            r.engine
        );
        println!(
            "| {} | {} | {:.0} | {:.1} MB | {:.2} s ({} messages) | {:.0} MB |",
            r.engine,
            r.policy,
            r.publishes_per_s,
            r.bytes_after as f64 / 1e6,
            r.recovery.as_secs_f64(),
            r.recovered,
            r.recovery_bytes as f64 / 1e6,
        );
    }
    for policy in ["always", "never"] {
        let rate = |e: &str| {
            rows.iter()
                .find(|r| r.engine.starts_with(e) && r.policy == policy)
                .map_or(0.0, |r| r.publishes_per_s)
        };
        println!(
            "{policy}: the log commits {:.2}x the publishes of redb",
            rate("firehose") / rate("redb").max(1e-9)
        );
    }
}
