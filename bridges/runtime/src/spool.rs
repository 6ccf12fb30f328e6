//! The spool: every event a source hands over waits here until the broker
//! has acknowledged it (PUBACK), in memory and, with `--spool DIR`, on disk.
//!
//! On disk the spool is a write-ahead log of segment files
//! (`<first seq>.spool`), each a run of records
//! `len u32 | crc32 u32 | seq u64 | flags u8 | topic len u16 | topic | payload`
//! (big-endian), plus `acked`, the sequence number below which everything
//! was acknowledged. A bridge that stops, crashes or loses the broker
//! finds its unacknowledged events here when it starts again. A record cut
//! off by a crash fails its length or checksum and is counted, never
//! delivered half. Segments wholly below `acked` are deleted.
//!
//! The spool is size-capped (`--spool-max-bytes`): when it is full the
//! oldest event is dropped and counted, so a long broker outage costs the
//! oldest events, never the bridge's memory or disk.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// One event ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
}

impl Record {
    fn size(&self) -> usize {
        self.topic.len() + self.payload.len() + 32
    }
}

/// Spool errors: the disk failed us, or the directory is taken.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool directory {path}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("spool file {path}")]
    File { path: PathBuf, source: io::Error },
    #[error("spool directory {path} is in use by another process{}; give each bridge its own --spool", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { path: PathBuf, holder: Option<u32> },
    #[error("topic of {0} bytes is longer than a spool record (and MQTT) allows (65,535)")]
    TopicTooLong(usize),
}

/// What `open` found on disk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Unacknowledged events found, to be delivered.
    pub events: usize,
    /// Records cut off or corrupt (not delivered).
    pub corrupt: usize,
}

/// What [`Spool::push`] did.
#[derive(Debug)]
pub struct Pushed {
    /// The event's sequence number.
    pub seq: u64,
    /// Old events dropped to make room (the spool is full).
    pub dropped: usize,
    /// The disk write failed; the event is held in memory only.
    pub disk_error: Option<SpoolError>,
}

/// Rotate to a new segment file beyond this size.
const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
const HEADER: usize = 4 + 4;

/// The queue between sources and the broker connection.
pub struct Spool {
    disk: Option<Disk>,
    /// Unacknowledged events, oldest first.
    records: VecDeque<(u64, Record)>,
    bytes: usize,
    max_bytes: usize,
    next_seq: u64,
    /// Everything below this was sent on the current connection.
    send_from: u64,
    /// Acknowledged, but not at the front yet.
    acked: HashSet<u64>,
}

struct Disk {
    dir: PathBuf,
    /// `DIR/lock`, locked while this spool is open: one bridge per spool.
    _lock: File,
    /// The segment being appended to, for the periodic fsync ([`Syncer`]).
    current: Arc<Mutex<Option<File>>>,
    /// First seq of each segment file -> path.
    segments: BTreeMap<u64, PathBuf>,
    writer: Option<(BufWriter<File>, u64)>,
    /// Watermark last written to `acked`.
    saved_watermark: u64,
}

impl Spool {
    /// A spool in memory only, capped at `max_bytes`.
    pub fn memory(max_bytes: usize) -> Spool {
        Spool {
            disk: None,
            records: VecDeque::new(),
            bytes: 0,
            max_bytes,
            next_seq: 1,
            send_from: 1,
            acked: HashSet::new(),
        }
    }

    /// Opens (or creates) a spool directory and recovers what it holds.
    pub fn open(dir: &Path, max_bytes: usize) -> Result<(Spool, Recovered), SpoolError> {
        let derr = |source| SpoolError::Dir {
            path: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(derr)?;
        let lock = lock_dir(dir)?;
        let watermark: u64 = match fs::read_to_string(dir.join("acked")) {
            Ok(s) => s.trim().parse().unwrap_or(0),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(derr(e)),
        };
        let mut segments = BTreeMap::new();
        for entry in fs::read_dir(dir).map_err(derr)? {
            let path = entry.map_err(derr)?.path();
            let first = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".spool"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(first) = first {
                segments.insert(first, path);
            }
        }
        let mut spool = Spool::memory(max_bytes);
        let mut rec = Recovered::default();
        let mut last_seq = watermark.saturating_sub(1);
        for path in segments.values() {
            let data = fs::read(path).map_err(|source| SpoolError::File {
                path: path.clone(),
                source,
            })?;
            let (records, corrupt) = decode_segment(&data);
            rec.corrupt += corrupt;
            for (seq, r) in records {
                last_seq = last_seq.max(seq);
                if seq >= watermark {
                    spool.bytes += r.size();
                    spool.records.push_back((seq, r));
                }
            }
        }
        spool.records.make_contiguous().sort_by_key(|(seq, _)| *seq);
        rec.events = spool.records.len();
        spool.next_seq = last_seq.saturating_add(1);
        spool.send_from = spool.records.front().map_or(spool.next_seq, |r| r.0);
        spool.disk = Some(Disk {
            dir: dir.to_owned(),
            _lock: lock,
            current: Arc::new(Mutex::new(None)),
            segments,
            writer: None,
            saved_watermark: watermark,
        });
        spool.trim_to_cap();
        Ok((spool, rec))
    }

    /// Adds an event; says its sequence number, how many old events were
    /// dropped to make room, and whether the disk took it.
    pub fn push(&mut self, r: Record) -> Pushed {
        let seq = self.next_seq;
        self.next_seq += 1;
        // A disk that fails does not lose the event: it stays in memory.
        // (The runtime refuses topics over 65,535 bytes before they get
        // here; `append` refuses them too rather than write a bad record.)
        let disk_error = self.disk.as_mut().and_then(|d| d.append(seq, &r).err());
        self.bytes += r.size();
        self.records.push_back((seq, r));
        Pushed {
            seq,
            dropped: self.trim_to_cap(),
            disk_error,
        }
    }

    /// Drops the oldest events while over the cap (never the newest).
    fn trim_to_cap(&mut self) -> usize {
        let mut dropped = 0;
        while self.bytes > self.max_bytes && self.records.len() > 1 {
            if let Some((seq, r)) = self.records.pop_front() {
                self.bytes -= r.size();
                self.acked.remove(&seq);
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.send_from = self.send_from.max(self.front_seq());
        }
        dropped
    }

    /// The next event not sent on this connection yet, oldest first.
    pub fn next_unsent(&mut self) -> Option<(u64, Record)> {
        let start = self.records.partition_point(|(s, _)| *s < self.send_from);
        let found = self
            .records
            .range(start..)
            .find(|(s, _)| !self.acked.contains(s))
            .cloned();
        if let Some((seq, _)) = &found {
            self.send_from = seq + 1;
        }
        found
    }

    /// The broker acknowledged `seq`.
    pub fn ack(&mut self, seq: u64) {
        if seq < self.front_seq() {
            return;
        }
        self.acked.insert(seq);
        while let Some((front, _)) = self.records.front() {
            if !self.acked.remove(front) {
                break;
            }
            if let Some((_, r)) = self.records.pop_front() {
                self.bytes -= r.size();
            }
        }
    }

    /// A new connection: everything unacknowledged is sent again.
    pub fn rewind(&mut self) {
        self.send_from = self.front_seq();
    }

    /// Events waiting for an acknowledgement.
    pub fn len(&self) -> usize {
        self.records.len() - self.acked.len()
    }

    /// True when everything was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sequence number of the oldest event still held.
    pub fn oldest(&self) -> u64 {
        self.front_seq()
    }

    fn front_seq(&self) -> u64 {
        self.records.front().map_or(self.next_seq, |r| r.0)
    }

    /// Makes the disk state current: flushes appended records, records the
    /// acknowledged watermark, deletes segments nobody needs. Cheap when
    /// nothing changed; call it when idle and before exit.
    pub fn checkpoint(&mut self) -> Result<(), SpoolError> {
        let watermark = self.front_seq();
        let Some(d) = self.disk.as_mut() else {
            return Ok(());
        };
        if let Some((w, _)) = d.writer.as_mut() {
            w.flush().map_err(|source| SpoolError::File {
                path: d.dir.clone(),
                source,
            })?;
        }
        if watermark != d.saved_watermark {
            let tmp = d.dir.join("acked.tmp");
            let ferr = |source| SpoolError::File {
                path: tmp.clone(),
                source,
            };
            fs::write(&tmp, format!("{watermark}\n")).map_err(ferr)?;
            fs::rename(&tmp, d.dir.join("acked")).map_err(ferr)?;
            d.saved_watermark = watermark;
            // A segment is done when the next one starts at or below the watermark.
            let firsts: Vec<u64> = d.segments.keys().copied().collect();
            for pair in firsts.windows(2) {
                if pair[1] <= watermark {
                    if let Some(p) = d.segments.remove(&pair[0]) {
                        let _ = fs::remove_file(p);
                    }
                }
            }
        }
        Ok(())
    }

    /// Hands appended records to the OS, so they survive the bridge being
    /// killed (not a machine crash: that is what [`Spool::sync`] is for).
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        if let Some(Disk {
            writer: Some((w, _)),
            dir,
            ..
        }) = self.disk.as_mut()
        {
            w.flush().map_err(|source| SpoolError::File {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Flushes and syncs to disk (before exit).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.checkpoint()?;
        if let Some(Disk {
            writer: Some((w, _)),
            dir,
            ..
        }) = self.disk.as_mut()
        {
            w.get_ref().sync_all().map_err(|source| SpoolError::File {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

impl Disk {
    fn append(&mut self, seq: u64, r: &Record) -> Result<(), SpoolError> {
        if r.topic.len() > u16::MAX as usize {
            return Err(SpoolError::TopicTooLong(r.topic.len()));
        }
        if self
            .writer
            .as_ref()
            .is_none_or(|(_, n)| *n >= SEGMENT_BYTES)
        {
            if let Some((mut w, _)) = self.writer.take() {
                // The finished segment is complete on disk before the next
                // starts: a failure here is a disk error like any other.
                w.flush()
                    .and_then(|()| w.get_ref().sync_data())
                    .map_err(|source| SpoolError::File {
                        path: self.dir.clone(),
                        source,
                    })?;
            }
            let path = self.dir.join(format!("{seq:020}.spool"));
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| SpoolError::File {
                    path: path.clone(),
                    source,
                })?;
            self.segments.insert(seq, path);
            *self.current.lock().unwrap_or_else(|e| e.into_inner()) = f.try_clone().ok();
            self.writer = Some((BufWriter::new(f), 0));
        }
        let body = encode_body(seq, r);
        let Some((w, n)) = self.writer.as_mut() else {
            return Ok(());
        };
        let mut head = [0u8; HEADER];
        head[..4].copy_from_slice(&(body.len() as u32).to_be_bytes());
        head[4..].copy_from_slice(&crc32fast::hash(&body).to_be_bytes());
        w.write_all(&head)
            .and_then(|_| w.write_all(&body))
            .map_err(|source| SpoolError::File {
                path: self.dir.clone(),
                source,
            })?;
        *n += (HEADER + body.len()) as u64;
        Ok(())
    }
}

fn encode_body(seq: u64, r: &Record) -> Vec<u8> {
    let mut b = Vec::with_capacity(11 + r.topic.len() + r.payload.len());
    b.extend_from_slice(&seq.to_be_bytes());
    b.push(r.retain as u8);
    // `append` refused topics over 65,535 bytes: the length fits.
    b.extend_from_slice(&(r.topic.len() as u16).to_be_bytes());
    b.extend_from_slice(r.topic.as_bytes());
    b.extend_from_slice(&r.payload);
    b
}

/// Locks `DIR/lock` (and writes our pid in it), or says who holds it.
fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join("lock");
    let ferr = |source| SpoolError::File {
        path: path.clone(),
        source,
    };
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(ferr)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = f.read_to_string(&mut text);
            return Err(SpoolError::Locked {
                path: dir.to_owned(),
                holder: text.trim().parse().ok(),
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(ferr(e)),
    }
    f.set_len(0)
        .and_then(|()| f.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .map_err(ferr)?;
    Ok(f)
}

/// Syncs the spool's current segment to disk on a timer
/// (`--spool-fsync`), so a machine crash loses at most that interval of
/// events the broker had not acknowledged yet. It holds its own handle of
/// the file: the runtime's loop never waits for the disk.
#[derive(Clone)]
pub struct Syncer {
    current: Arc<Mutex<Option<File>>>,
    dir: PathBuf,
}

impl Syncer {
    /// fsyncs what was handed to the OS so far.
    pub fn sync(&self) -> Result<(), SpoolError> {
        let f = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match f.as_ref() {
            Some(f) => f.sync_data().map_err(|source| SpoolError::File {
                path: self.dir.clone(),
                source,
            }),
            None => Ok(()),
        }
    }
}

impl Spool {
    /// The periodic fsync's handle; `None` for a memory spool.
    pub fn syncer(&self) -> Option<Syncer> {
        self.disk.as_ref().map(|d| Syncer {
            current: d.current.clone(),
            dir: d.dir.clone(),
        })
    }
}

/// Decodes a segment; stops at the first record that is cut off or fails
/// its checksum (everything after a torn write is suspect).
fn decode_segment(mut data: &[u8]) -> (Vec<(u64, Record)>, usize) {
    let mut out = Vec::new();
    while !data.is_empty() {
        let mut head = [0u8; HEADER];
        if (&data[..]).read_exact(&mut head).is_err() {
            return (out, 1);
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let Some(body) = data.get(HEADER..HEADER + len) else {
            return (out, 1);
        };
        if crc32fast::hash(body) != crc || body.len() < 11 {
            return (out, 1);
        }
        let seq = u64::from_be_bytes(body[..8].try_into().unwrap_or_default());
        let retain = body[8] == 1;
        let tl = u16::from_be_bytes([body[9], body[10]]) as usize;
        let (Some(topic), Some(payload)) = (body.get(11..11 + tl), body.get(11 + tl..)) else {
            return (out, 1);
        };
        let Ok(topic) = std::str::from_utf8(topic) else {
            return (out, 1);
        };
        out.push((
            seq,
            Record {
                topic: topic.to_owned(),
                payload: Bytes::copy_from_slice(payload),
                retain,
            },
        ));
        data = &data[HEADER + len..];
    }
    (out, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize) -> Record {
        Record {
            topic: format!("t/{i}"),
            payload: Bytes::from(format!("payload {i}")),
            retain: i.is_multiple_of(2),
        }
    }

    #[test]
    fn memory_order_ack_rewind() {
        let mut s = Spool::memory(1 << 20);
        for i in 0..5 {
            s.push(rec(i));
        }
        let sent: Vec<u64> = std::iter::from_fn(|| s.next_unsent().map(|r| r.0)).collect();
        assert_eq!(sent, vec![1, 2, 3, 4, 5]);
        s.ack(2); // out of order
        s.ack(1);
        assert_eq!(s.len(), 3);
        s.rewind();
        let again: Vec<u64> = std::iter::from_fn(|| s.next_unsent().map(|r| r.0)).collect();
        assert_eq!(again, vec![3, 4, 5]);
        s.ack(4);
        s.rewind();
        let again: Vec<u64> = std::iter::from_fn(|| s.next_unsent().map(|r| r.0)).collect();
        assert_eq!(again, vec![3, 5], "acked events are not sent again");
    }

    #[test]
    fn cap_drops_oldest() {
        let mut s = Spool::memory(rec(0).size() * 3);
        let mut dropped = 0;
        for i in 0..10 {
            dropped += s.push(rec(i)).dropped;
        }
        assert_eq!(dropped, 7);
        assert_eq!(s.next_unsent().unwrap().1, rec(7));
    }

    #[test]
    fn garbage_segments_never_panic() {
        let mut x: u64 = 7;
        for round in 0..200 {
            let len = (round * 37) % 400;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let (records, corrupt) = decode_segment(&data);
            assert!(records.is_empty() || corrupt <= 1);
        }
        // A garbage file in a spool directory is counted, not delivered.
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("00000000000000000001.spool"),
            b"\x00\x00\x01\x00garbage",
        )
        .unwrap();
        let (s, r) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((r.events, r.corrupt, s.len()), (0, 1, 0));
    }

    #[test]
    fn disk_survives_restart_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, r) = Spool::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(r, Recovered::default());
            for i in 0..6 {
                s.push(rec(i));
            }
            s.ack(1);
            s.ack(2);
            s.checkpoint().unwrap();
        }
        // A torn write at the end of the segment.
        let seg = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "spool"))
            .unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0, 0, 0, 50, 1, 2]).unwrap();
        drop(f);
        let (mut s, r) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            r,
            Recovered {
                events: 4,
                corrupt: 1
            }
        );
        let got: Vec<Record> = std::iter::from_fn(|| s.next_unsent().map(|r| r.1)).collect();
        assert_eq!(got, (2..6).map(rec).collect::<Vec<_>>());
        // New events continue the sequence in a new segment.
        let seq = s.push(rec(9)).seq;
        assert_eq!(seq, 7);
        for seq in 3..=7 {
            s.ack(seq);
        }
        s.checkpoint().unwrap();
        drop(s);
        let (s, r) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(r.events, 0);
        assert!(s.is_empty());
        // The old segment (all acked, followed by a newer one) is gone.
        assert!(!seg.exists());
    }

    #[test]
    fn one_bridge_per_spool_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        let e = Spool::open(dir.path(), 1 << 20).err().expect("locked");
        let text = e.to_string();
        assert!(
            text.contains("in use by another process")
                && text.contains(&format!("pid {}", std::process::id()))
                && text.contains("its own --spool"),
            "{text}"
        );
        drop(first);
        assert!(
            Spool::open(dir.path(), 1 << 20).is_ok(),
            "free again once closed"
        );
    }

    #[test]
    fn a_topic_too_long_for_a_record_is_refused_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), 1 << 24).unwrap();
        let long = Record {
            topic: "t".repeat(70_000),
            payload: Bytes::from_static(b"x"),
            retain: false,
        };
        let pushed = s.push(long);
        assert!(matches!(
            pushed.disk_error,
            Some(SpoolError::TopicTooLong(70_000))
        ));
        s.push(rec(1));
        s.sync().unwrap();
        s.syncer().unwrap().sync().unwrap();
        drop(s);
        let (mut again, r) = Spool::open(dir.path(), 1 << 24).unwrap();
        assert_eq!(
            r,
            Recovered {
                events: 1,
                corrupt: 0
            },
            "no bad record on disk"
        );
        assert_eq!(again.next_unsent().map(|(_, r)| r), Some(rec(1)));
    }
}
