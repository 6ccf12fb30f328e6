//! MQTT wire format at the edge: framing, CONNECT, validation, encoding.
//!
//! rumqttd's parsers are fast but trust their input in places (see
//! `docs/rumqttd-0.20.md`): some packet types reach an
//! `unreachable!()`, MQTT 3.1 is refused, topics are not checked. So every
//! frame passes through here first: the fixed header is checked (packet type
//! allowed from a client, reserved flag bits, size), CONNECT is parsed by us
//! for all three versions, and only then is the body handed to rumqttd's
//! parser, whose result is validated again (UTF-8, wildcards, limits).
//! Nothing in this module panics on any input.

use bytes::{Buf, Bytes, BytesMut};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{ConnectProperties, LastWill, LastWillProperties, Login, Packet, Protocol};

/// The protocol version a client connected with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1 (`MQIsdp`, level 3).
    V31,
    /// MQTT 3.1.1 (`MQTT`, level 4).
    V311,
    /// MQTT 5 (`MQTT`, level 5).
    V5,
}

impl Version {
    /// Label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V31 => "3.1",
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        }
    }
}

/// Why a frame was refused. Each variant is a counted reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet of {size} bytes is larger than the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("malformed remaining length")]
    BadLength,
    #[error("packet type {0} is not allowed from a client")]
    ForbiddenType(u8),
    #[error("reserved flag bits set in packet type {0}")]
    ReservedFlags(u8),
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("topic alias {alias} is not valid (topic alias maximum is {max})")]
    TopicAlias { alias: u16, max: u16 },
}

impl DecodeError {
    /// Short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "packet_too_large",
            DecodeError::BadLength => "bad_remaining_length",
            DecodeError::ForbiddenType(_) => "forbidden_packet_type",
            DecodeError::ReservedFlags(_) => "reserved_flags",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::Protocol(_) => "protocol_error",
            DecodeError::TopicAlias { .. } => "topic_alias_invalid",
        }
    }
}

/// Reads the fixed header. `Ok(None)` means more bytes are needed; on
/// success returns the total frame length.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, DecodeError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut len: usize = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            let total = 1 + (i + 1) + len;
            if total > max {
                return Err(DecodeError::TooLarge { size: total, max });
            }
            return Ok((buf.len() >= total).then_some(total));
        }
    }
    Err(DecodeError::BadLength)
}

/// Checks the first byte of a frame a client sent after CONNECT.
fn check_byte1(byte1: u8, version: Version) -> Result<(), DecodeError> {
    let kind = byte1 >> 4;
    let flags = byte1 & 0x0f;
    match kind {
        3 => {
            let qos = (flags >> 1) & 3;
            if qos == 3 {
                return Err(DecodeError::Malformed("PUBLISH with QoS 3".into()));
            }
            if qos == 0 && flags & 0x08 != 0 {
                return Err(DecodeError::Malformed("PUBLISH QoS 0 with DUP set".into()));
            }
            Ok(())
        }
        6 | 8 | 10 if flags != 0b0010 => Err(DecodeError::ReservedFlags(kind)),
        6 | 8 | 10 => Ok(()),
        4 | 5 | 7 | 12 | 14 if flags != 0 => Err(DecodeError::ReservedFlags(kind)),
        4 | 5 | 7 | 12 | 14 => Ok(()),
        1 => Err(DecodeError::Protocol("second CONNECT".into())),
        15 if version == Version::V5 => Err(DecodeError::Protocol(
            "AUTH (enhanced authentication) is not supported".into(),
        )),
        other => Err(DecodeError::ForbiddenType(other)),
    }
}

fn parse_body(version: Version, frame: &mut BytesMut, max: usize) -> Result<Packet, DecodeError> {
    // rumqttd's parsers have no known panics for the packet types that reach
    // them, but a panic must never take down more than this one connection.
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match version {
        Version::V5 => V5.read_mut(frame, max),
        _ => V4.read_mut(frame, max),
    }));
    match res {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(e)) => Err(DecodeError::Malformed(e.to_string())),
        Err(_) => Err(DecodeError::Malformed("parser panicked".into())),
    }
}

/// Takes the next complete packet from `buf`, or `Ok(None)` when more bytes
/// are needed. Only for packets after CONNECT.
pub fn decode(
    version: Version,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(total) = frame_len(buf, max)? else {
        return Ok(None);
    };
    check_byte1(buf[0], version)?;
    let mut frame = buf.split_to(total);
    parse_body(version, &mut frame, max).map(Some)
}

/// Why a CONNECT was refused; maps to a CONNACK code where one exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// Not MQTT at all, or too broken to answer: close without CONNACK.
    #[error("malformed CONNECT: {0}")]
    Malformed(String),
    /// Known protocol name, unknown level: CONNACK "unacceptable protocol version".
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
    /// Client id refused (empty with a persistent session, or bad characters).
    #[error("client identifier not valid: {1}")]
    BadClientId(Version, String),
}

/// Everything the edge needs from a CONNECT.
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    pub version: Version,
    pub client_id: String,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub login: Option<Login>,
    pub will: Option<LastWill>,
    pub will_properties: Option<LastWillProperties>,
    pub properties: Option<ConnectProperties>,
}

struct Cursor {
    b: Bytes,
}

impl Cursor {
    fn u8(&mut self) -> Result<u8, ConnectError> {
        if self.b.is_empty() {
            return Err(ConnectError::Malformed("truncated".into()));
        }
        Ok(self.b.get_u8())
    }
    fn u16(&mut self) -> Result<u16, ConnectError> {
        if self.b.len() < 2 {
            return Err(ConnectError::Malformed("truncated".into()));
        }
        Ok(self.b.get_u16())
    }
    fn bytes(&mut self) -> Result<Bytes, ConnectError> {
        let n = self.u16()? as usize;
        if n > self.b.len() {
            return Err(ConnectError::Malformed("length crosses packet end".into()));
        }
        Ok(self.b.split_to(n))
    }
    fn string(&mut self, what: &str) -> Result<String, ConnectError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec())
            .map_err(|_| ConnectError::Malformed(format!("{what} is not UTF-8")))
    }
}

/// Parses a CONNECT frame (the whole frame, fixed header included).
pub fn parse_connect(frame: Bytes) -> Result<ConnectInfo, ConnectError> {
    if frame.first() != Some(&0x10) {
        return Err(ConnectError::Malformed(
            "first packet is not CONNECT (or has reserved flags set)".into(),
        ));
    }
    let hdr = 1 + frame[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1;
    let mut c = Cursor {
        b: frame.slice(hdr.min(frame.len())..),
    };
    let name = c.bytes()?;
    let level = c.u8()?;
    let version = match (&name[..], level) {
        (b"MQIsdp", 3) => Version::V31,
        (b"MQTT", 4) => Version::V311,
        (b"MQTT", 5) => Version::V5,
        (b"MQTT", l) | (b"MQIsdp", l) => return Err(ConnectError::UnsupportedVersion(l)),
        _ => return Err(ConnectError::Malformed("unknown protocol name".into())),
    };
    let flags = c.u8()?;
    if flags & 0x01 != 0 {
        return Err(ConnectError::Malformed("reserved connect flag set".into()));
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 3;
    if !will_flag && (flags & 0x38) != 0 {
        return Err(ConnectError::Malformed(
            "will QoS/retain set without a will".into(),
        ));
    }
    if will_qos == 3 {
        return Err(ConnectError::Malformed("will QoS 3".into()));
    }
    if version != Version::V5 && flags & 0x40 != 0 && flags & 0x80 == 0 {
        return Err(ConnectError::Malformed("password without user name".into()));
    }

    let info = if version == Version::V5 {
        let mut buf = BytesMut::from(&frame[..]);
        let max = frame.len();
        match parse_body(Version::V5, &mut buf, max) {
            Ok(Packet::Connect(connect, props, will, will_props, login)) => ConnectInfo {
                version,
                client_id: connect.client_id,
                clean_start: connect.clean_session,
                keep_alive: connect.keep_alive,
                login,
                will,
                will_properties: will_props,
                properties: props,
            },
            Ok(_) => return Err(ConnectError::Malformed("not a CONNECT".into())),
            Err(e) => return Err(ConnectError::Malformed(e.to_string())),
        }
    } else {
        let keep_alive = c.u16()?;
        let client_id = c.string("client id")?;
        let will = if will_flag {
            let topic = c.bytes()?;
            let message = c.bytes()?;
            Some(LastWill {
                topic,
                message,
                qos: rumqttd::protocol::qos(will_qos)
                    .ok_or_else(|| ConnectError::Malformed("will QoS".into()))?,
                retain: flags & 0x20 != 0,
            })
        } else {
            None
        };
        let username = if flags & 0x80 != 0 {
            Some(c.string("user name")?)
        } else {
            None
        };
        let password = if flags & 0x40 != 0 {
            Some(c.bytes()?)
        } else {
            None
        };
        if !c.b.is_empty() {
            return Err(ConnectError::Malformed("trailing bytes".into()));
        }
        let login = username.map(|username| Login {
            username,
            password: password
                .map(|p| String::from_utf8_lossy(&p).into_owned())
                .unwrap_or_default(),
        });
        ConnectInfo {
            version,
            client_id,
            clean_start: flags & 0x02 != 0,
            keep_alive,
            login,
            will,
            will_properties: None,
            properties: None,
        }
    };
    if info.client_id.contains('\0') {
        return Err(ConnectError::BadClientId(
            info.version,
            "contains NUL".into(),
        ));
    }
    if info.client_id.len() > 256 {
        return Err(ConnectError::BadClientId(
            info.version,
            "longer than 256 bytes".into(),
        ));
    }
    Ok(info)
}

/// Removes MQTT 5 properties so a packet can be written to a v3 client
/// (rumqttd's v4 writer panics on any packet that carries them).
pub fn strip_properties(p: Packet) -> Packet {
    match p {
        Packet::Publish(x, _) => Packet::Publish(x, None),
        Packet::PubAck(x, _) => Packet::PubAck(x, None),
        Packet::PubRec(x, _) => Packet::PubRec(x, None),
        Packet::PubRel(x, _) => Packet::PubRel(x, None),
        Packet::PubComp(x, _) => Packet::PubComp(x, None),
        Packet::SubAck(x, _) => Packet::SubAck(x, None),
        Packet::UnsubAck(x, _) => Packet::UnsubAck(x, None),
        Packet::ConnAck(x, _) => Packet::ConnAck(x, None),
        Packet::Disconnect(x, _) => Packet::Disconnect(x, None),
        Packet::Subscribe(x, _) => Packet::Subscribe(x, None),
        Packet::Unsubscribe(x, _) => Packet::Unsubscribe(x, None),
        other => other,
    }
}

/// Appends the wire form of `packet` for a client of `version`.
pub fn encode(version: Version, packet: Packet, out: &mut BytesMut) -> Result<usize, DecodeError> {
    // rumqttd's writers hit `unreachable!()` on codes their version lacks;
    // callers use [`Refusal::code`], and a mistake costs one packet, not a task.
    let start = out.len();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match version {
        Version::V5 => V5.write(packet, out),
        _ => V4.write(strip_properties(packet), out),
    }));
    match r {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => {
            out.truncate(start);
            Err(DecodeError::Malformed(format!("cannot encode: {e}")))
        }
        Err(_) => {
            out.truncate(start);
            Err(DecodeError::Malformed("encoder panicked".into()))
        }
    }
}

/// Why the broker refuses a CONNECT, independent of protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnsupportedVersion,
    BadClientId,
    BadCredentials,
    NotAuthorized,
    Busy,
}

impl Refusal {
    /// The CONNACK code for a client of `version` (3.1.1: 1-5; 5: 0x84-0x89).
    pub fn code(self, version: Version) -> rumqttd::protocol::ConnectReturnCode {
        use rumqttd::protocol::ConnectReturnCode as C;
        match (version, self) {
            (Version::V5, Refusal::UnsupportedVersion) => C::UnsupportedProtocolVersion,
            (Version::V5, Refusal::Busy) => C::ServerBusy,
            (_, Refusal::UnsupportedVersion) => C::RefusedProtocolVersion,
            (_, Refusal::Busy) => C::ServiceUnavailable,
            (_, Refusal::BadClientId) => C::ClientIdentifierNotValid,
            (_, Refusal::BadCredentials) => C::BadUserNamePassword,
            (_, Refusal::NotAuthorized) => C::NotAuthorized,
        }
    }
}

/// QoS of an encoded PUBLISH, from its first byte.
pub fn encoded_qos(wire: &[u8]) -> u8 {
    wire.first().map(|b| (b >> 1) & 3).unwrap_or(0)
}

/// Byte offset of the packet identifier in an encoded QoS>0 PUBLISH.
pub fn encoded_pkid_offset(wire: &[u8]) -> Option<usize> {
    let hdr = 1 + wire.get(1..)?.iter().take_while(|b| *b & 0x80 != 0).count() + 1;
    let tlen = u16::from_be_bytes([*wire.get(hdr)?, *wire.get(hdr + 1)?]) as usize;
    let off = hdr + 2 + tlen;
    (wire.len() >= off + 2).then_some(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_never_panic() {
        // A deterministic xorshift keeps this reproducible.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let mut v = Vec::with_capacity(len);
            let mut y = x;
            for _ in 0..len {
                y = y.wrapping_mul(6364136223846793005).wrapping_add(1);
                v.push((y >> 33) as u8);
            }
            for ver in [Version::V311, Version::V5] {
                let mut b = BytesMut::from(&v[..]);
                let _ = decode(ver, &mut b, 1024);
            }
            let _ = parse_connect(Bytes::from(v));
        }
    }

    #[test]
    fn mqtt31_connect() {
        // CONNECT, MQIsdp level 3, clean session, keepalive 60, id "a".
        let mut f = vec![0x10, 0];
        f.extend_from_slice(&[0, 6]);
        f.extend_from_slice(b"MQIsdp");
        f.extend_from_slice(&[3, 0x02, 0, 60, 0, 1, b'a']);
        f[1] = (f.len() - 2) as u8;
        let c = parse_connect(Bytes::from(f)).unwrap();
        assert_eq!(c.version, Version::V31);
        assert_eq!(c.client_id, "a");
        assert!(c.clean_start);
    }

    #[test]
    fn unknown_level_is_reported() {
        let mut f = vec![0x10, 0, 0, 4];
        f.extend_from_slice(b"MQTT");
        f.extend_from_slice(&[6, 0x02, 0, 0, 0, 0]);
        f[1] = (f.len() - 2) as u8;
        assert!(matches!(
            parse_connect(Bytes::from(f)),
            Err(ConnectError::UnsupportedVersion(6))
        ));
    }

    #[test]
    fn server_only_packets_are_refused() {
        for byte1 in [0x20u8, 0x90, 0xb0, 0xd0, 0x10, 0x00, 0xf0] {
            let mut b = BytesMut::from(&[byte1, 2, 0, 1][..]);
            assert!(decode(Version::V5, &mut b, 1024).is_err(), "{byte1:#x}");
        }
        let mut b = BytesMut::from(&[0x80u8, 2, 0, 1][..]);
        assert_eq!(
            decode(Version::V311, &mut b, 1024),
            Err(DecodeError::ReservedFlags(8))
        );
    }

    #[test]
    fn remaining_length_limits() {
        assert_eq!(
            frame_len(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], usize::MAX),
            Err(DecodeError::BadLength)
        );
        assert!(matches!(
            frame_len(&[0x30, 0xff, 0xff, 0x7f], 1000),
            Err(DecodeError::TooLarge { .. })
        ));
        assert_eq!(frame_len(&[0x30, 0x05, 1], 1000), Ok(None));
    }
}
