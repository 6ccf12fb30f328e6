//! Subunit v2, the binary test-result stream `stestr` and `python-subunit`
//! write: a sequence of packets, each
//!
//! ```text
//! 0xB3 | flags (u16, version 0x2 in the top nibble) | length (number)
//!      | [timestamp: u32 seconds + number nanoseconds] | [test id]
//!      | [tags: number count, strings] | [MIME type]
//!      | [file: name, number length, bytes] | [route code] | CRC32 (u32)
//! ```
//!
//! where a *number* is big-endian in 1 to 4 bytes, its top two bits
//! giving the length, a *string* is a number of bytes then UTF-8 without
//! NUL, the length counts the whole packet and the CRC32 (zlib's) covers
//! everything before it. Field order and flag bits are python-subunit's
//! `subunit/v2.py` (docs/subunit.md). Pure: no I/O, unit-tested, fuzzed.
//!
//! A v1 stream (text lines such as `test: name` / `success: name`) is
//! recognized and refused with its own error: the original worker read v2
//! only.

/// The packet signature.
const SIGNATURE: u8 = 0xB3;
const FLAG_TEST_ID: u16 = 0x0800;
const FLAG_ROUTE_CODE: u16 = 0x0400;
const FLAG_TIMESTAMP: u16 = 0x0200;
const FLAG_RUNNABLE: u16 = 0x0100;
const FLAG_TAGS: u16 = 0x0080;
const FLAG_FILE_CONTENT: u16 = 0x0040;
const FLAG_MIME_TYPE: u16 = 0x0020;
const FLAG_EOF: u16 = 0x0010;
/// A packet's length fits 3 bytes of number (python-subunit's writer and
/// reader both hold it to 4 MiB).
const MAX_PACKET: usize = 4 * 1024 * 1024;

/// A test's status as subunit names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// No status: the packet carries a file or tags only.
    Undefined,
    /// The test exists (an enumeration, not a run).
    Exists,
    InProgress,
    Success,
    /// Unexpected success.
    UxSuccess,
    Skip,
    Fail,
    /// Expected failure.
    XFail,
}

impl Status {
    fn from_bits(b: u16) -> Status {
        match b & 0x7 {
            1 => Status::Exists,
            2 => Status::InProgress,
            3 => Status::Success,
            4 => Status::UxSuccess,
            5 => Status::Skip,
            6 => Status::Fail,
            7 => Status::XFail,
            _ => Status::Undefined,
        }
    }

    /// subunit's own name for it (`success`, `fail`, `skip`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Status::Undefined => "undefined",
            Status::Exists => "exists",
            Status::InProgress => "inprogress",
            Status::Success => "success",
            Status::UxSuccess => "uxsuccess",
            Status::Skip => "skip",
            Status::Fail => "fail",
            Status::XFail => "xfail",
        }
    }

    /// Whether this ends a test's run (a result, not a state).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Success | Status::UxSuccess | Status::Skip | Status::Fail | Status::XFail
        )
    }
}

/// A file attachment (`traceback`, `reason`, `stdout`...), or a piece of
/// one: a file may span packets until the one marked `eof`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File<'a> {
    pub name: &'a str,
    pub bytes: &'a [u8],
    pub eof: bool,
}

/// One packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    pub status: Status,
    pub test_id: Option<&'a str>,
    /// Seconds and nanoseconds since the Unix epoch.
    pub timestamp: Option<(u32, u32)>,
    pub tags: Vec<&'a str>,
    pub mime_type: Option<&'a str>,
    pub file: Option<File<'a>>,
    pub route_code: Option<&'a str>,
    pub runnable: bool,
}

/// Why a stream is not one this parser reads; each names the byte offset
/// where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error(
        "this is a subunit v1 (text) stream; firehose-subunit reads v2: convert it with `subunit-1to2`"
    )]
    V1,
    #[error("byte {offset}: not a subunit v2 packet (0x{byte:02x}, where 0xb3 starts one)")]
    Signature { offset: usize, byte: u8 },
    #[error("byte {offset}: packet version {version}, where subunit v2 is 2")]
    Version { offset: usize, version: u16 },
    #[error("byte {offset}: the stream ends inside a packet")]
    Truncated { offset: usize },
    #[error("byte {offset}: a packet of {length} bytes, more than subunit's 4 MiB")]
    TooLong { offset: usize, length: usize },
    #[error("byte {offset}: bad checksum (computed 0x{computed:08x}, stored 0x{stored:08x})")]
    Checksum {
        offset: usize,
        computed: u32,
        stored: u32,
    },
    #[error("byte {offset}: a field runs past the end of its packet")]
    Overrun { offset: usize },
    #[error("byte {offset}: a string that is not UTF-8 or holds a NUL")]
    Text { offset: usize },
}

/// The packets of a whole stream, in order; stops at the first error.
pub fn packets(stream: &[u8]) -> Packets<'_> {
    Packets {
        stream,
        pos: 0,
        failed: false,
    }
}

/// See [`packets`].
pub struct Packets<'a> {
    stream: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Iterator for Packets<'a> {
    type Item = Result<Packet<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.stream.len() {
            return None;
        }
        let at = self.pos;
        match packet(self.stream, at) {
            Ok((p, len)) => {
                self.pos = at + len;
                Some(Ok(p))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Whether `stream` looks like subunit v1: text lines such as `test: `,
/// `time: `, `tags: ` where a v2 packet would start.
fn looks_v1(stream: &[u8]) -> bool {
    const V1: &[&[u8]] = &[
        b"test:",
        b"test ",
        b"testing",
        b"time:",
        b"tags:",
        b"success",
        b"failure",
        b"error",
        b"skip",
        b"xfail",
        b"progress:",
    ];
    V1.iter().any(|w| stream.starts_with(w))
}

/// A cursor over one packet's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The packet's offset in the stream, for errors.
    base: usize,
}

impl<'a> Reader<'a> {
    fn overrun(&self) -> ParseError {
        ParseError::Overrun {
            offset: self.base + self.pos,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.overrun())?;
        let out = self.buf.get(self.pos..end).ok_or_else(|| self.overrun())?;
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn number(&mut self) -> Result<usize, ParseError> {
        let (v, n) =
            number(&self.buf[self.pos.min(self.buf.len())..]).ok_or_else(|| self.overrun())?;
        self.pos += n;
        Ok(v as usize)
    }

    fn string(&mut self) -> Result<&'a str, ParseError> {
        let len = self.number()?;
        let at = self.base + self.pos;
        let b = self.take(len)?;
        if b.contains(&0) {
            return Err(ParseError::Text { offset: at });
        }
        std::str::from_utf8(b).map_err(|_| ParseError::Text { offset: at })
    }
}

/// A subunit number at the start of `b`: (value, bytes used).
fn number(b: &[u8]) -> Option<(u32, usize)> {
    let first = *b.first()?;
    let n = 1 + usize::from(first >> 6);
    let bytes = b.get(..n)?;
    let mut v = u32::from(first & 0x3F);
    for x in &bytes[1..] {
        v = (v << 8) | u32::from(*x);
    }
    Some((v, n))
}

/// The packet at `at`: it and its length.
fn packet(stream: &[u8], at: usize) -> Result<(Packet<'_>, usize), ParseError> {
    let rest = &stream[at..];
    let truncated = ParseError::Truncated { offset: at };
    if rest[0] != SIGNATURE {
        if at == 0 && looks_v1(rest) {
            return Err(ParseError::V1);
        }
        return Err(ParseError::Signature {
            offset: at,
            byte: rest[0],
        });
    }
    let flags = match rest.get(1..3) {
        Some(f) => u16::from_be_bytes([f[0], f[1]]),
        None => return Err(truncated),
    };
    if flags >> 12 != 2 {
        return Err(ParseError::Version {
            offset: at,
            version: flags >> 12,
        });
    }
    let (length, n) = number(&rest[3..]).ok_or(truncated.clone())?;
    let length = length as usize;
    if n == 4 || length > MAX_PACKET {
        return Err(ParseError::TooLong { offset: at, length });
    }
    if length < 3 + n + 4 {
        return Err(ParseError::Overrun { offset: at });
    }
    let whole = rest.get(..length).ok_or(truncated)?;
    let (body, crc) = whole.split_at(length - 4);
    let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(ParseError::Checksum {
            offset: at,
            computed,
            stored,
        });
    }
    let mut r = Reader {
        buf: body,
        pos: 3 + n,
        base: at,
    };
    let timestamp = if flags & FLAG_TIMESTAMP != 0 {
        let secs = r.u32()?;
        let nanos = r.number()? as u32;
        Some((secs, nanos))
    } else {
        None
    };
    let test_id = (flags & FLAG_TEST_ID != 0)
        .then(|| r.string())
        .transpose()?;
    let mut tags = Vec::new();
    if flags & FLAG_TAGS != 0 {
        let count = r.number()?;
        for _ in 0..count {
            tags.push(r.string()?);
        }
    }
    let mime_type = (flags & FLAG_MIME_TYPE != 0)
        .then(|| r.string())
        .transpose()?;
    let file = if flags & FLAG_FILE_CONTENT != 0 {
        let name = r.string()?;
        let len = r.number()?;
        let bytes = r.take(len)?;
        Some(File {
            name,
            bytes,
            eof: flags & FLAG_EOF != 0,
        })
    } else {
        None
    };
    let route_code = (flags & FLAG_ROUTE_CODE != 0)
        .then(|| r.string())
        .transpose()?;
    Ok((
        Packet {
            status: Status::from_bits(flags),
            test_id,
            timestamp,
            tags,
            mime_type,
            file,
            route_code,
            runnable: flags & FLAG_RUNNABLE != 0,
        },
        length,
    ))
}

/// Writes packets as python-subunit does: for tests and the fuzzer's seeds
/// (the bridge only reads).
#[cfg(any(test, feature = "writer"))]
pub mod write {
    use super::*;

    fn number(v: usize, out: &mut Vec<u8>) {
        let v = v as u32;
        if v < 0x40 {
            out.push(v as u8);
        } else if v < 0x4000 {
            out.extend_from_slice(&((v | 0x4000) as u16).to_be_bytes());
        } else if v < 0x40_0000 {
            let x = v | 0x80_0000;
            out.extend_from_slice(&[(x >> 16) as u8, (x >> 8) as u8, x as u8]);
        } else {
            out.extend_from_slice(&(v | 0xC000_0000).to_be_bytes());
        }
    }

    fn string(s: &str, out: &mut Vec<u8>) {
        number(s.len(), out);
        out.extend_from_slice(s.as_bytes());
    }

    /// One packet's bytes.
    pub fn packet(p: &Packet<'_>) -> Vec<u8> {
        let mut flags: u16 = 0x2000
            | match p.status {
                Status::Undefined => 0,
                Status::Exists => 1,
                Status::InProgress => 2,
                Status::Success => 3,
                Status::UxSuccess => 4,
                Status::Skip => 5,
                Status::Fail => 6,
                Status::XFail => 7,
            };
        let mut body = Vec::new();
        if let Some((s, ns)) = p.timestamp {
            flags |= FLAG_TIMESTAMP;
            body.extend_from_slice(&s.to_be_bytes());
            number(ns as usize, &mut body);
        }
        if let Some(id) = p.test_id {
            flags |= FLAG_TEST_ID;
            string(id, &mut body);
        }
        if !p.tags.is_empty() {
            flags |= FLAG_TAGS;
            number(p.tags.len(), &mut body);
            for t in &p.tags {
                string(t, &mut body);
            }
        }
        if p.runnable {
            flags |= FLAG_RUNNABLE;
        }
        if let Some(m) = p.mime_type {
            flags |= FLAG_MIME_TYPE;
            string(m, &mut body);
        }
        if let Some(f) = &p.file {
            flags |= FLAG_FILE_CONTENT;
            string(f.name, &mut body);
            number(f.bytes.len(), &mut body);
            body.extend_from_slice(f.bytes);
            if f.eof {
                flags |= FLAG_EOF;
            }
        }
        if let Some(r) = p.route_code {
            flags |= FLAG_ROUTE_CODE;
            string(r, &mut body);
        }
        let base = 1 + 2 + body.len() + 4;
        let total = base
            + match base {
                0..=62 => 1,
                63..=16381 => 2,
                _ => 3,
            };
        let mut out = vec![SIGNATURE];
        out.extend_from_slice(&flags.to_be_bytes());
        number(total, &mut out);
        out.extend_from_slice(&body);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test(id: &'static str, status: Status) -> Packet<'static> {
        Packet {
            status,
            test_id: Some(id),
            timestamp: Some((1_700_000_000, 250_000_000)),
            tags: vec!["worker-0"],
            mime_type: None,
            file: None,
            route_code: None,
            runnable: true,
        }
    }

    #[test]
    fn packets_round_trip_with_every_field() {
        let mut tb = test("t.a", Status::Fail);
        tb.mime_type = Some("text/x-traceback; charset=\"utf8\"");
        tb.file = Some(File {
            name: "traceback",
            bytes: b"Traceback (most recent call last):\n  boom\n",
            eof: true,
        });
        tb.route_code = Some("0");
        let big_bytes = vec![b'x'; 20_000];
        let mut big = test("t.big", Status::Undefined);
        big.file = Some(File {
            name: "stdout",
            bytes: &big_bytes,
            eof: false,
        });
        let ps = [
            test("t.a", Status::InProgress),
            tb,
            big,
            test("t.b", Status::Success),
        ];
        let stream: Vec<u8> = ps.iter().flat_map(write::packet).collect();
        let got: Vec<Packet<'_>> = packets(&stream).collect::<Result<_, _>>().unwrap();
        assert_eq!(got, ps);
    }

    #[test]
    fn a_bad_stream_says_where_and_what() {
        let good = write::packet(&test("t.a", Status::Success));
        let mut flipped = good.clone();
        let last = flipped.len() - 6;
        flipped[last] ^= 1;
        assert!(matches!(
            packets(&flipped).next(),
            Some(Err(ParseError::Checksum { offset: 0, .. }))
        ));
        let mut two = good.clone();
        two.extend_from_slice(&good[..good.len() - 3]);
        let all: Vec<_> = packets(&two).collect();
        assert!(all[0].is_ok());
        assert_eq!(all[1], Err(ParseError::Truncated { offset: good.len() }));
        assert_eq!(
            packets(b"test: foo\nsuccess: foo\n").next(),
            Some(Err(ParseError::V1))
        );
        assert!(matches!(
            packets(b"<html>").next(),
            Some(Err(ParseError::Signature { byte: b'<', .. }))
        ));
        let mut v3 = good.clone();
        v3[1] = 0x30;
        assert!(matches!(
            packets(&v3).next(),
            Some(Err(ParseError::Version { version: 3, .. }))
        ));
    }

    #[test]
    fn no_input_panics_the_parser() {
        // Every prefix and every one-byte corruption of a real packet.
        let mut p = test("tests.unit.test_x.TestX.test_y", Status::Fail);
        p.file = Some(File {
            name: "traceback",
            bytes: b"boom",
            eof: true,
        });
        let good = write::packet(&p);
        for n in 0..good.len() {
            let _ = packets(&good[..n]).count();
            for bit in 0..8 {
                let mut b = good.clone();
                b[n] ^= 1 << bit;
                let _ = packets(&b).count();
            }
        }
    }
}
