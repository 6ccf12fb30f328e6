//! The store's file: a header, then checksummed records, appended.
//!
//! ```text
//! header   "FIREHOSE" | format u32 LE | 0u32
//! record   length u32 LE | CRC-32 of the body u32 LE | body (record.rs)
//! ```
//!
//! Reading stops at the first record that is cut short, fails its
//! checksum or does not parse: a write torn by a crash or a power loss, or
//! a damaged disk. Everything before it is good and kept; the rest is cut
//! off (the caller truncates the file there and counts it), so the broker
//! always starts. A header with a newer format is refused: that store is
//! not ours to cut. Compaction writes a fresh file beside the old one and
//! renames it over (after an fsync of both the file and the directory), so
//! a crash during compaction leaves the old file whole.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Write};
use std::path::Path;

use super::record::{self, Clock, Record};
use super::StoreError;

const MAGIC: &[u8; 8] = b"FIREHOSE";
/// The store format this broker writes, and the newest it reads.
pub(crate) const FORMAT: u32 = 1;
pub(crate) const HEADER_LEN: u64 = 16;
/// No record is larger (a message is at most `max_packet_size`, itself at
/// most MQTT's 256 MiB): a length beyond it is damage, not an allocation.
const MAX_RECORD: usize = 300 << 20;

/// Why reading stopped before the end of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Damage {
    /// The file ends inside a record (a torn write).
    Torn,
    /// A record's checksum does not match.
    Checksum,
    /// A record passes its checksum but does not parse.
    Unreadable,
}

impl Damage {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Damage::Torn => "torn record",
            Damage::Checksum => "checksum mismatch",
            Damage::Unreadable => "unreadable record",
        }
    }
}

/// What reading the file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Bytes of good header and records: the file is cut to this.
    pub good_len: u64,
    /// Good records read.
    pub records: u64,
    /// Where reading stopped early, and why; `None` when it read to the end.
    pub damage: Option<(Damage, u64)>,
}

/// Where one framed record sits in the file: the offset of its length
/// field and its whole framed size. The image keeps this instead of a
/// message's bytes ([`read_at`] reads it back).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Loc {
    pub at: u64,
    pub len: u32,
}

/// Appends one framed record (length, checksum, body) to `out`; returns
/// its framed size.
pub(crate) fn frame(r: &Record, clock: Clock, out: &mut Vec<u8>) -> u32 {
    let at = out.len();
    out.extend_from_slice(&[0; 8]);
    record::encode(r, clock, out);
    let body = &out[at + 8..];
    let len = body.len() as u32;
    let crc = crc32fast::hash(body);
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    (out.len() - at) as u32
}

/// Reads the record framed at `loc` in `file` (the file being appended:
/// a message paged out of memory, read back for its reader or for a
/// compaction), checking its length and checksum.
pub(crate) fn read_at(file: &File, loc: Loc, clock: Clock) -> Result<Record, ReadAtError> {
    use std::os::unix::fs::FileExt;
    let len = loc.len as usize;
    if !(8..=MAX_RECORD + 8).contains(&len) {
        return Err(ReadAtError::Damaged);
    }
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, loc.at)
        .map_err(ReadAtError::Io)?;
    let body_len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[8..];
    if body_len != body.len() || crc32fast::hash(body) != crc {
        return Err(ReadAtError::Damaged);
    }
    record::decode(body, clock).map_err(|_| ReadAtError::Damaged)
}

/// Reads the message record framed at `loc` (see [`read_at`]).
pub(crate) fn read_message(
    file: &File,
    loc: Loc,
    clock: Clock,
) -> Result<std::sync::Arc<crate::message::Message>, ReadAtError> {
    match read_at(file, loc, clock)? {
        Record::Msg { msg, .. } => Ok(msg),
        _ => Err(ReadAtError::Damaged),
    }
}

/// Why [`read_at`] found no record.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadAtError {
    #[error("cannot read the store")]
    Io(#[source] std::io::Error),
    #[error("the record there is damaged (its length or checksum do not match)")]
    Damaged,
}

fn header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    h
}

/// Reads `path` (which must exist), handing each good record to `each`
/// with where it sits.
pub(crate) fn read(
    path: &Path,
    clock: Clock,
    mut each: impl FnMut(Record, Loc),
) -> Result<Scan, StoreError> {
    let read_err = |source| StoreError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut h = [0u8; HEADER_LEN as usize];
    match r.read_exact(&mut h) {
        Ok(()) => {}
        // A file cut inside its header holds nothing: start it again.
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
            return Ok(Scan {
                good_len: 0,
                records: 0,
                damage: Some((Damage::Torn, 0)),
            })
        }
        Err(e) => return Err(read_err(e)),
    }
    if &h[..8] != MAGIC {
        return Err(StoreError::NotAStore {
            path: path.to_owned(),
        });
    }
    let found = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if found > FORMAT {
        return Err(StoreError::Newer {
            path: path.to_owned(),
            found,
        });
    }
    let mut scan = Scan {
        good_len: HEADER_LEN,
        records: 0,
        damage: None,
    };
    let mut body = Vec::new();
    loop {
        let mut fh = [0u8; 8];
        match read_full(&mut r, &mut fh).map_err(read_err)? {
            0 => return Ok(scan),
            8 => {}
            _ => return Ok(scan.stop(Damage::Torn)),
        }
        let len = u32::from_le_bytes([fh[0], fh[1], fh[2], fh[3]]) as usize;
        let crc = u32::from_le_bytes([fh[4], fh[5], fh[6], fh[7]]);
        if len > MAX_RECORD {
            return Ok(scan.stop(Damage::Checksum));
        }
        body.resize(len, 0);
        if read_full(&mut r, &mut body).map_err(read_err)? < len {
            return Ok(scan.stop(Damage::Torn));
        }
        if crc32fast::hash(&body) != crc {
            return Ok(scan.stop(Damage::Checksum));
        }
        let loc = Loc {
            at: scan.good_len,
            len: 8 + len as u32,
        };
        match record::decode(&body, clock) {
            Ok(rec) => each(rec, loc),
            Err(_) => return Ok(scan.stop(Damage::Unreadable)),
        }
        scan.good_len += 8 + len as u64;
        scan.records += 1;
        if body.capacity() > 1 << 20 {
            body = Vec::new();
        }
    }
}

impl Scan {
    fn stop(mut self, d: Damage) -> Scan {
        self.damage = Some((d, self.good_len));
        self
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Opens `path` for appending: with `Some(good_len)`, cut to it (after
/// damage; below a header's length, started again with a fresh header);
/// with `None`, as it is.
pub(crate) fn open_append(path: &Path, good_len: Option<u64>) -> Result<File, StoreError> {
    let write_err = |source| StoreError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(write_err)?;
    match good_len {
        Some(n) if n < HEADER_LEN => {
            f.set_len(0).map_err(write_err)?;
            f.write_all(&header()).map_err(write_err)?;
            f.sync_all().map_err(write_err)?;
        }
        Some(n) => f.set_len(n).map_err(write_err)?,
        None => {}
    }
    use std::io::Seek;
    f.seek(std::io::SeekFrom::End(0)).map_err(write_err)?;
    Ok(f)
}

/// Writes a whole new file at `path` holding `records` (read one at a
/// time: a compaction reads its messages back from the old file as it
/// goes), durably, telling `placed` where each lands, and returns it open
/// for appending, with its length. The old file stays whole until the
/// rename.
pub(crate) fn rewrite(
    path: &Path,
    records: impl IntoIterator<Item = Record>,
    clock: Clock,
    mut placed: impl FnMut(&Record, Loc),
) -> Result<(File, u64), StoreError> {
    let tmp = path.with_extension("compacting");
    let err = |p: &Path| {
        let p = p.to_owned();
        move |source| StoreError::Write { path: p, source }
    };
    let mut len = HEADER_LEN;
    {
        let f = File::create(&tmp).map_err(err(&tmp))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        w.write_all(&header()).map_err(err(&tmp))?;
        let mut buf = Vec::new();
        for r in records {
            buf.clear();
            let n = frame(&r, clock, &mut buf);
            placed(&r, Loc { at: len, len: n });
            len += buf.len() as u64;
            w.write_all(&buf).map_err(err(&tmp))?;
        }
        let f = w.into_inner().map_err(|e| err(&tmp)(e.into_error()))?;
        f.sync_all().map_err(err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(err(path))?;
    sync_dir(path).map_err(err(path))?;
    Ok((open_append(path, None)?, len))
}

/// Makes a rename in the directory of `path` durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(d) => File::open(d)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::tests::msg;

    fn records() -> Vec<Record> {
        (1..=3)
            .map(|i| Record::Acked {
                key: i,
                seqs: vec![i, i + 1],
            })
            .chain(std::iter::once(Record::Msg {
                msg: msg("a/b", 4, None),
                retained: true,
                targets: vec![],
                more: false,
            }))
            .collect()
    }

    fn write(path: &Path, recs: &[Record]) -> Vec<u64> {
        let clock = Clock::now();
        let mut f = open_append(path, Some(0)).unwrap();
        let mut ends = Vec::new();
        let mut total = HEADER_LEN;
        for r in recs {
            let mut buf = Vec::new();
            frame(r, clock, &mut buf);
            f.write_all(&buf).unwrap();
            total += buf.len() as u64;
            ends.push(total);
        }
        ends
    }

    fn count(path: &Path) -> (Scan, usize) {
        let mut n = 0;
        let s = read(path, Clock::now(), |_, _| n += 1).unwrap();
        (s, n)
    }

    #[test]
    fn a_torn_or_damaged_tail_is_cut_at_the_last_good_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        let ends = write(&path, &records());
        let (s, n) = count(&path);
        assert_eq!((s.records, n, s.damage), (4, 4, None));
        assert_eq!(s.good_len, ends[3]);
        // Cut inside every byte of the last record: three records, torn.
        for cut in ends[2] + 1..ends[3] {
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(cut).unwrap();
            let (s, n) = count(&path);
            assert_eq!((s.records, n), (3, 3), "cut at {cut}");
            assert_eq!(s.damage, Some((Damage::Torn, ends[2])), "cut at {cut}");
            assert_eq!(s.good_len, ends[2]);
        }
        // Appending after the cut goes on from the good end.
        drop(open_append(&path, Some(ends[2])).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), ends[2]);
        // A flipped byte in the second record: one record kept.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[ends[0] as usize + 10] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (s, n) = count(&path);
        assert_eq!((s.records, n), (1, 1));
        assert_eq!(s.damage, Some((Damage::Checksum, ends[0])));
    }

    #[test]
    fn a_newer_or_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        let mut h = header();
        h[8..12].copy_from_slice(&(FORMAT + 1).to_le_bytes());
        std::fs::write(&path, h).unwrap();
        let e = read(&path, Clock::now(), |_, _| {}).unwrap_err();
        assert!(matches!(e, StoreError::Newer { found, .. } if found == FORMAT + 1));
        assert!(e.to_string().contains("newer"), "{e}");
        std::fs::write(&path, b"retained messages, but not ours").unwrap();
        assert!(matches!(
            read(&path, Clock::now(), |_, _| {}),
            Err(StoreError::NotAStore { .. })
        ));
        // Cut inside the header: nothing to keep, started again.
        std::fs::write(&path, &header()[..5]).unwrap();
        assert_eq!(count(&path).0.good_len, 0);
    }

    #[test]
    fn a_rewrite_replaces_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        write(&path, &records());
        let mut at = Vec::new();
        let (mut f, len) = rewrite(
            &path,
            [Record::SessionEnd { key: 1 }],
            Clock::now(),
            |_, l| at.push(l),
        )
        .unwrap();
        assert_eq!(
            at,
            [Loc {
                at: HEADER_LEN,
                len: (len - HEADER_LEN) as u32
            }]
        );
        let file = File::open(&path).unwrap();
        assert!(matches!(
            read_at(&file, at[0], Clock::now()),
            Ok(Record::SessionEnd { key: 1 })
        ));
        let shifted = Loc {
            at: at[0].at + 1,
            ..at[0]
        };
        assert!(matches!(
            read_at(&file, shifted, Clock::now()),
            Err(ReadAtError::Damaged | ReadAtError::Io(_))
        ));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        let mut framed = Vec::new();
        frame(&Record::SessionEnd { key: 2 }, Clock::now(), &mut framed);
        f.write_all(&framed).unwrap();
        let (s, n) = count(&path);
        assert_eq!((s.records, n, s.damage), (2, 2, None));
        assert!(!path.with_extension("compacting").exists());
    }
}
