//! The Gearman binary protocol, the worker's side: packets are
//! `\0REQ` (to the server) or `\0RES` (from it), a u32 type, a u32 size
//! and arguments separated by NUL (the last one may hold anything).
//! Types and arguments as gearman.org's PROTOCOL document gives them
//! (docs/subunit.md). Pure: framing only, no I/O, unit-tested.

/// The packet types a worker sends or reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    CanDo = 1,
    PreSleep = 4,
    Noop = 6,
    GrabJob = 9,
    NoJob = 10,
    JobAssign = 11,
    WorkStatus = 12,
    WorkComplete = 13,
    WorkFail = 14,
    EchoReq = 16,
    EchoRes = 17,
    Error = 19,
    SetClientId = 22,
    WorkException = 25,
    WorkWarning = 29,
}

impl Kind {
    fn from_u32(n: u32) -> Option<Kind> {
        Some(match n {
            1 => Kind::CanDo,
            4 => Kind::PreSleep,
            6 => Kind::Noop,
            9 => Kind::GrabJob,
            10 => Kind::NoJob,
            11 => Kind::JobAssign,
            12 => Kind::WorkStatus,
            13 => Kind::WorkComplete,
            14 => Kind::WorkFail,
            16 => Kind::EchoReq,
            17 => Kind::EchoRes,
            19 => Kind::Error,
            22 => Kind::SetClientId,
            25 => Kind::WorkException,
            29 => Kind::WorkWarning,
            _ => return None,
        })
    }
}

/// A packet's largest body this worker accepts: a job's arguments are a
/// small JSON document (the stream is fetched from its URL).
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// Why bytes from the server are not a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not a Gearman response (magic {0:?}): is this a Gearman server's port?")]
    Magic([u8; 4]),
    #[error("a Gearman packet of type {0}, which a worker never gets")]
    Kind(u32),
    #[error("a Gearman packet of {0} bytes, more than the {MAX_BODY} a job may have")]
    TooLong(usize),
}

/// One packet from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub kind: Kind,
    pub body: Vec<u8>,
}

impl Response {
    /// The body split into `n` arguments (the last takes the rest).
    pub fn args(&self, n: usize) -> Vec<&[u8]> {
        self.body.splitn(n, |b| *b == 0).collect()
    }
}

/// A request's bytes.
pub fn request(kind: Kind, args: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = args.join(&0u8);
    let mut out = Vec::with_capacity(12 + body.len());
    out.extend_from_slice(b"\0REQ");
    out.extend_from_slice(&(kind as u32).to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// A response at the start of `buf`, and the bytes it used; `Ok(None)`
/// when more bytes are needed.
pub fn response(buf: &[u8]) -> Result<Option<(Response, usize)>, FrameError> {
    if buf.len() < 12 {
        return Ok(None);
    }
    let magic = [buf[0], buf[1], buf[2], buf[3]];
    if &magic != b"\0RES" {
        return Err(FrameError::Magic(magic));
    }
    let kind = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let size = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    if size > MAX_BODY {
        return Err(FrameError::TooLong(size));
    }
    let kind = Kind::from_u32(kind).ok_or(FrameError::Kind(kind))?;
    match buf.get(12..12 + size) {
        None => Ok(None),
        Some(body) => Ok(Some((
            Response {
                kind,
                body: body.to_vec(),
            },
            12 + size,
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(kind: u32, body: &[u8]) -> Vec<u8> {
        let mut v = b"\0RES".to_vec();
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn requests_and_responses_are_framed_as_the_protocol_says() {
        assert_eq!(
            request(Kind::CanDo, &[b"push-subunit"]),
            b"\0REQ\0\0\0\x01\0\0\0\x0cpush-subunit"
        );
        assert_eq!(
            request(Kind::WorkComplete, &[b"H:1", b"{}"]),
            b"\0REQ\0\0\0\x0d\0\0\0\x06H:1\0{}"
        );
        assert_eq!(
            request(Kind::WorkWarning, &[b"H:1", b"why"]),
            b"\0REQ\0\0\0\x1d\0\0\0\x07H:1\0why"
        );
        let assign = res(11, b"H:host:7\0push-subunit\0{\"a\":\"b\0c\"}");
        assert_eq!(response(&assign[..11]), Ok(None), "a header cut short");
        assert_eq!(response(&assign[..20]), Ok(None), "a body cut short");
        let (r, used) = response(&assign).unwrap().unwrap();
        assert_eq!(used, assign.len());
        assert_eq!(r.kind, Kind::JobAssign);
        assert_eq!(
            r.args(3),
            vec![&b"H:host:7"[..], b"push-subunit", b"{\"a\":\"b\0c\"}"]
        );
        assert_eq!(
            response(b"HTTP/1.1 400 Bad"),
            Err(FrameError::Magic(*b"HTTP"))
        );
        assert_eq!(response(&res(99, b"")), Err(FrameError::Kind(99)));
        let mut huge = res(11, b"");
        huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(response(&huge), Err(FrameError::TooLong(_))));
    }
}
