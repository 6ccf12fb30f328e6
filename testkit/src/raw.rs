//! Raw MQTT: packet builders and a blocking client for the cases no
//! well-behaved client library would send.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::broker::BrokerProc;
use crate::process::*;

fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn s16(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A packet from its first byte and body.
pub fn packet(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![byte1];
    varint(body.len(), &mut v);
    v.extend_from_slice(body);
    v
}

/// CONNECT for level 3 (MQIsdp), 4 or 5.
pub fn connect(
    level: u8,
    client_id: &str,
    keep_alive: u16,
    clean: bool,
    login: Option<(&str, &str)>,
) -> Vec<u8> {
    let mut b = Vec::new();
    s16(if level == 3 { b"MQIsdp" } else { b"MQTT" }, &mut b);
    b.push(level);
    let mut flags = if clean { 0x02 } else { 0 };
    if login.is_some() {
        flags |= 0xC0;
    }
    b.push(flags);
    b.extend_from_slice(&keep_alive.to_be_bytes());
    if level == 5 {
        b.push(0);
    }
    s16(client_id.as_bytes(), &mut b);
    if let Some((u, p)) = login {
        s16(u.as_bytes(), &mut b);
        s16(p.as_bytes(), &mut b);
    }
    packet(0x10, &b)
}

/// An MQTT 5 CONNECT with a session expiry interval and, optionally, a will
/// `(topic, payload, will delay seconds)`.
pub fn connect5(
    client_id: &str,
    clean: bool,
    session_expiry: u32,
    will: Option<(&str, &str, u32)>,
    login: Option<(&str, &str)>,
) -> Vec<u8> {
    connect5_with(client_id, clean, session_expiry, &[], will, login)
}

/// [`connect5`] with more CONNECT properties (encoded, e.g. `[0x21, 0, 2]`
/// for a Receive Maximum of 2).
pub fn connect5_with(
    client_id: &str,
    clean: bool,
    session_expiry: u32,
    extra_props: &[u8],
    will: Option<(&str, &str, u32)>,
    login: Option<(&str, &str)>,
) -> Vec<u8> {
    let mut b = Vec::new();
    s16(b"MQTT", &mut b);
    b.push(5);
    let mut flags = if clean { 0x02 } else { 0 };
    if will.is_some() {
        flags |= 0x04;
    }
    if login.is_some() {
        flags |= 0xC0;
    }
    b.push(flags);
    b.extend_from_slice(&60u16.to_be_bytes());
    let mut props = vec![0x11];
    props.extend_from_slice(&session_expiry.to_be_bytes());
    props.extend_from_slice(extra_props);
    varint(props.len(), &mut b);
    b.extend_from_slice(&props);
    s16(client_id.as_bytes(), &mut b);
    if let Some((topic, payload, delay)) = will {
        let mut wp = vec![0x18];
        wp.extend_from_slice(&delay.to_be_bytes());
        varint(wp.len(), &mut b);
        b.extend_from_slice(&wp);
        s16(topic.as_bytes(), &mut b);
        s16(payload.as_bytes(), &mut b);
    }
    if let Some((u, p)) = login {
        s16(u.as_bytes(), &mut b);
        s16(p.as_bytes(), &mut b);
    }
    packet(0x10, &b)
}

/// SUBSCRIBE with several filters at QoS 0.
pub fn subscribe_many(level: u8, pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut b = pkid.to_be_bytes().to_vec();
    if level == 5 {
        b.push(0);
    }
    for f in filters {
        s16(f.as_bytes(), &mut b);
        b.push(0);
    }
    packet(0x82, &b)
}

/// The reason codes of a SUBACK body.
pub fn suback_codes(level: u8, body: &[u8]) -> Vec<u8> {
    let skip = if level == 5 { 3 } else { 2 };
    body[skip..].to_vec()
}

pub fn subscribe(level: u8, pkid: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut b = pkid.to_be_bytes().to_vec();
    if level == 5 {
        b.push(0);
    }
    s16(filter.as_bytes(), &mut b);
    b.push(qos);
    packet(0x82, &b)
}

pub fn publish(level: u8, topic: &[u8], payload: &[u8], qos: u8, pkid: u16) -> Vec<u8> {
    let mut b = Vec::new();
    s16(topic, &mut b);
    if qos > 0 {
        b.extend_from_slice(&pkid.to_be_bytes());
    }
    if level == 5 {
        b.push(0);
    }
    b.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &b)
}

/// The packet identifier of a QoS 1 or 2 PUBLISH body (v3 or v5: it comes
/// right after the topic).
pub fn publish_pkid(body: &[u8]) -> [u8; 2] {
    let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
    [body[2 + tl], body[3 + tl]]
}

/// A raw MQTT connection.
pub struct Raw {
    pub s: TcpStream,
    buf: Vec<u8>,
    /// Why the last [`Raw::read`] gave `None`: closed, timed out, or the
    /// error, for the message of whoever waited.
    pub ended: String,
}

impl Raw {
    pub fn open(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).unwrap();
        Raw::from_stream(s)
    }

    /// Wraps a connected socket.
    pub fn from_stream(s: TcpStream) -> Raw {
        Raw {
            s,
            buf: Vec::new(),
            ended: String::new(),
        }
    }

    /// Connects and returns the CONNACK (byte1, body).
    pub fn connect(
        addr: SocketAddr,
        level: u8,
        id: &str,
        login: Option<(&str, &str)>,
    ) -> (Raw, Vec<u8>) {
        let mut r = Raw::open(addr);
        r.send(&connect(level, id, 60, true, login));
        let (t, body) = r.read().expect("CONNACK");
        assert_eq!(t, 0x20, "expected CONNACK");
        (r, body)
    }

    /// Sends, reporting (not panicking on) a connection the server closed.
    pub fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.s.write_all(bytes).is_ok()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    /// Next packet as (byte1, body), or None when the server closed.
    pub fn read(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let mut len = 0usize;
                let mut i = 1;
                let mut mult = 1;
                let mut complete = false;
                while i < self.buf.len() && i <= 4 {
                    let b = self.buf[i];
                    len += (b & 0x7f) as usize * mult;
                    mult *= 128;
                    i += 1;
                    if b & 0x80 == 0 {
                        complete = true;
                        break;
                    }
                }
                if complete && self.buf.len() >= i + len {
                    let byte1 = self.buf[0];
                    let body = self.buf[i..i + len].to_vec();
                    self.buf.drain(..i + len);
                    return Some((byte1, body));
                }
            }
            let mut tmp = [0u8; 4096];
            match self.s.read(&mut tmp) {
                Ok(0) => {
                    self.ended = "the broker closed the connection".into();
                    return None;
                }
                // A signal interrupted the call: nothing happened, read on.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    let limit = self.s.read_timeout().ok().flatten().unwrap_or_default();
                    self.ended = format!("nothing arrived for {limit:?} (read timeout)");
                    return None;
                }
                Err(e) => {
                    self.ended = format!("read failed: {e}");
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// The next packet, or a panic naming `what` was awaited and why it
    /// did not come (closed, timed out, the error).
    pub fn expect(&mut self, what: &str) -> (u8, Vec<u8>) {
        match self.read() {
            Some(p) => p,
            None => panic!("waiting for {what}: {}", self.ended),
        }
    }

    /// Reads PUBLISH packets, acknowledging those at QoS 1, until none
    /// arrives for `idle` (or the server closes); returns how many arrived.
    pub fn drain_publishes(&mut self, idle: std::time::Duration) -> usize {
        self.s.set_read_timeout(Some(idle)).expect("read timeout");
        let mut n = 0;
        while let Some((t, body)) = self.read() {
            if t & 0xf0 != 0x30 {
                continue;
            }
            n += 1;
            if (t >> 1) & 3 > 0 {
                let id = publish_pkid(&body);
                if !self.try_send(&[0x40, 2, id[0], id[1]]) {
                    break;
                }
            }
        }
        self.s.set_read_timeout(Some(WAIT)).expect("read timeout");
        n
    }

    /// Reads until the server closes; returns every packet type seen.
    pub fn read_until_closed(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut v = Vec::new();
        while let Some(p) = self.read() {
            v.push(p);
        }
        v
    }
}

/// Anonymous subscriber used as a canary: it must keep receiving while
/// other connections misbehave.
pub struct Canary {
    raw: Raw,
    n: u32,
}

impl Canary {
    pub fn new(b: &BrokerProc) -> Canary {
        let (mut raw, _) = Raw::connect(b.mqtt(), 4, "canary", None);
        raw.send(&subscribe(4, 1, "canary/#", 0));
        let (t, _) = raw.read().expect("SUBACK");
        assert_eq!(t, 0x90);
        Canary { raw, n: 0 }
    }

    /// Publishes through an authenticated raw client and checks the canary got it.
    pub fn check(&mut self, b: &BrokerProc, login: (&str, &str)) {
        self.n += 1;
        let (mut p, ack) =
            Raw::connect(b.mqtt(), 4, &format!("canary-pub-{}", self.n), Some(login));
        assert_eq!(ack, vec![0, 0], "publisher refused");
        let payload = format!("ping {}", self.n);
        p.send(&publish(4, b"canary/x", payload.as_bytes(), 1, 7));
        let (t, _) = p.read().expect("PUBACK");
        assert_eq!(t, 0x40);
        loop {
            let (t, body) = self.raw.read().expect("canary lost its connection");
            if t & 0xf0 == 0x30 && body.ends_with(payload.as_bytes()) {
                return;
            }
        }
    }
}

/// An authenticated raw publisher at QoS 1: each publish waits for its
/// PUBACK, so what it sent is on the broker when it returns.
pub struct Publisher {
    raw: Raw,
    pkid: u16,
}

impl Publisher {
    /// Logs in to the broker at `addr` as `login`.
    pub fn new(addr: SocketAddr, login: (&str, &str)) -> Publisher {
        let id = format!("test-pub-{}", std::process::id());
        let (raw, ack) = Raw::connect(addr, 4, &id, Some(login));
        assert_eq!(ack, vec![0, 0], "publisher refused");
        Publisher { raw, pkid: 0 }
    }

    pub fn publish(&mut self, topic: &str, payload: &[u8], retain: bool) {
        self.pkid = self.pkid % 60000 + 1;
        let mut p = publish(4, topic.as_bytes(), payload, 1, self.pkid);
        if retain {
            p[0] |= 1;
        }
        self.raw.send(&p);
        loop {
            let (t, _) = self.raw.read().expect("PUBACK");
            if t == 0x40 {
                break;
            }
        }
    }
}
