//! The records of the persistent store and their byte form.
//!
//! The store is a log of changes: a message accepted for persistent
//! sessions or the retained store, a session's subscriptions and will, a
//! delivery written with its packet id, acknowledged, released. Each record
//! is one of [`Record`]; [`encode`] and [`decode`] are exact inverses (a
//! unit test checks every kind), little-endian, lengths before contents.
//! Framing and checksums are the log's business ([`super::log`]), what the
//! records mean is the image's ([`super::image`]). No I/O here.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rumqttd::protocol::PublishProperties;

use crate::message::{Message, Parts};

/// One persistent session's share of a stored message: the delivery it was
/// queued as (QoS, retain flag, MQTT 5 subscription identifiers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The session's key (its generation, unique for the store's life).
    pub key: u64,
    pub qos: u8,
    pub retain: bool,
    pub sub_ids: Vec<u32>,
}

/// One subscription of a persistent session, with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubRec {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// MQTT 5 subscription identifier (0: none).
    pub id: u32,
}

/// What a persistent session is, apart from its queue: written whole on
/// every change (connect, subscribe, unsubscribe, departure), which is
/// rare next to messages.
#[derive(Debug, Clone)]
#[cfg_attr(test, derive(PartialEq))]
pub(crate) struct SessionRec {
    pub key: u64,
    pub client_id: String,
    pub user: Option<String>,
    /// Protocol level: 3, 4 or 5.
    pub level: u8,
    /// Session expiry interval, seconds.
    pub expiry_secs: u64,
    pub subs: Vec<SubRec>,
    /// The will and its delay, seconds.
    pub will: Option<(Arc<Message>, u32)>,
    /// When the client left (Unix ms); `None` while it is connected.
    pub departed_ms: Option<u64>,
    /// The will is due `will.1` seconds after the departure.
    pub will_armed: bool,
}

/// One change to what the broker must remember. See the module documentation.
#[derive(Debug, Clone)]
#[cfg_attr(test, derive(PartialEq))]
pub(crate) enum Record {
    /// A message queued for persistent sessions (`targets`) and/or made the
    /// retained message of its topic (`retained`). Its store number is
    /// `msg.seq()`.
    ///
    /// A retained message is written under the retained store's lock, so
    /// the log holds retained changes in the order they took effect; its
    /// queues are only known after the fan-out, so it says `more` and a
    /// [`Record::Queued`] follows.
    Msg {
        msg: Arc<Message>,
        retained: bool,
        targets: Vec<Target>,
        more: bool,
    },
    /// The persistent queues a message written with `more` went to.
    Queued { seq: u64, targets: Vec<Target> },
    /// The retained message of `topic` was deleted.
    Unretain { topic: Bytes },
    /// A persistent session's state (created or changed).
    Session(Box<SessionRec>),
    /// The session ended: its queue and state go.
    SessionEnd { key: u64 },
    /// Deliveries that left the session's queue for good: acknowledged
    /// (PUBACK, PUBCOMP, a refusing PUBREC), expired, too large, evicted.
    Acked { key: u64, seqs: Vec<u64> },
    /// Deliveries written to the client, with their packet ids.
    Sent { key: u64, sent: Vec<(u64, u16)> },
    /// QoS 2: the client's PUBREC came, our PUBREL went.
    Released { key: u64, pkid: u16 },
    /// QoS 2 inbound: a packet id received (`held`) or released by PUBREL.
    Inbound { key: u64, pkid: u16, held: bool },
}

/// A record that does not parse (a store written by a bug, or bytes that
/// happen to pass the checksum).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record ends early")]
    Truncated,
    #[error("unknown record kind {0}")]
    Kind(u8),
    #[error("text is not UTF-8")]
    Utf8,
    #[error("{0} bytes after the record")]
    Trailing(usize),
}

/// Wall clock and monotonic clock read once, to turn a message's age into
/// a Unix time and back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub unix_ms: u64,
    pub now: Instant,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            unix_ms: unix_ms(),
            now: Instant::now(),
        }
    }

    fn to_unix(self, t: Instant) -> u64 {
        let age = self.now.saturating_duration_since(t).as_millis() as u64;
        self.unix_ms.saturating_sub(age)
    }

    fn to_instant(self, unix: u64) -> Instant {
        let age = Duration::from_millis(self.unix_ms.saturating_sub(unix));
        self.now.checked_sub(age).unwrap_or(self.now)
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

const MSG: u8 = 1;
const UNRETAIN: u8 = 2;
const SESSION: u8 = 3;
const SESSION_END: u8 = 4;
const ACKED: u8 = 5;
const SENT: u8 = 6;
const RELEASED: u8 = 7;
const INBOUND: u8 = 8;
const QUEUED: u8 = 9;

/// Appends the byte form of `r` to `out`.
pub(crate) fn encode(r: &Record, clock: Clock, out: &mut Vec<u8>) {
    match r {
        Record::Msg {
            msg,
            retained,
            targets,
            more,
        } => {
            out.push(MSG);
            put_u64(out, msg.seq());
            put_message(out, msg, clock);
            out.push(u8::from(*retained) | (u8::from(*more) << 1));
            put_targets(out, targets);
        }
        Record::Queued { seq, targets } => {
            out.push(QUEUED);
            put_u64(out, *seq);
            put_targets(out, targets);
        }
        Record::Unretain { topic } => {
            out.push(UNRETAIN);
            put_bytes(out, topic);
        }
        Record::Session(s) => {
            out.push(SESSION);
            put_u64(out, s.key);
            put_bytes(out, s.client_id.as_bytes());
            put_opt_str(out, s.user.as_deref());
            out.push(s.level);
            put_u64(out, s.expiry_secs);
            put_u32(out, s.subs.len() as u32);
            for f in &s.subs {
                put_bytes(out, f.filter.as_bytes());
                out.push(
                    f.qos | (u8::from(f.no_local) << 2) | (u8::from(f.retain_as_published) << 3),
                );
                put_u32(out, f.id);
            }
            match &s.will {
                None => out.push(0),
                Some((m, delay)) => {
                    out.push(1);
                    put_message(out, m, clock);
                    put_u32(out, *delay);
                }
            }
            match s.departed_ms {
                None => out.push(0),
                Some(t) => {
                    out.push(1);
                    put_u64(out, t);
                }
            }
            out.push(u8::from(s.will_armed));
        }
        Record::SessionEnd { key } => {
            out.push(SESSION_END);
            put_u64(out, *key);
        }
        Record::Acked { key, seqs } => {
            out.push(ACKED);
            put_u64(out, *key);
            put_u32(out, seqs.len() as u32);
            for s in seqs {
                put_u64(out, *s);
            }
        }
        Record::Sent { key, sent } => {
            out.push(SENT);
            put_u64(out, *key);
            put_u32(out, sent.len() as u32);
            for (s, p) in sent {
                put_u64(out, *s);
                put_u16(out, *p);
            }
        }
        Record::Released { key, pkid } => {
            out.push(RELEASED);
            put_u64(out, *key);
            put_u16(out, *pkid);
        }
        Record::Inbound { key, pkid, held } => {
            out.push(INBOUND);
            put_u64(out, *key);
            put_u16(out, *pkid);
            out.push(u8::from(*held));
        }
    }
}

/// Reads one record back (the whole of `b`).
pub(crate) fn decode(b: &[u8], clock: Clock) -> Result<Record, RecordError> {
    let mut r = Reader { b };
    let rec = match r.u8()? {
        MSG => {
            let seq = r.u64()?;
            let msg = r.message(clock, seq)?;
            let flags = r.u8()?;
            Record::Msg {
                msg,
                retained: flags & 1 != 0,
                more: flags & 2 != 0,
                targets: r.targets()?,
            }
        }
        QUEUED => Record::Queued {
            seq: r.u64()?,
            targets: r.targets()?,
        },
        UNRETAIN => Record::Unretain {
            topic: Bytes::copy_from_slice(r.bytes()?),
        },
        SESSION => {
            let key = r.u64()?;
            let client_id = r.string()?;
            let user = r.opt_string()?;
            let level = r.u8()?;
            let expiry_secs = r.u64()?;
            let n = r.count()?;
            let mut subs = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                let filter = r.string()?;
                let flags = r.u8()?;
                let id = r.u32()?;
                subs.push(SubRec {
                    filter,
                    qos: flags & 3,
                    no_local: flags & 4 != 0,
                    retain_as_published: flags & 8 != 0,
                    id,
                });
            }
            let will = match r.u8()? {
                0 => None,
                _ => {
                    let m = r.message(clock, 0)?;
                    Some((m, r.u32()?))
                }
            };
            let departed_ms = match r.u8()? {
                0 => None,
                _ => Some(r.u64()?),
            };
            let will_armed = r.u8()? != 0;
            Record::Session(Box::new(SessionRec {
                key,
                client_id,
                user,
                level,
                expiry_secs,
                subs,
                will,
                departed_ms,
                will_armed,
            }))
        }
        SESSION_END => Record::SessionEnd { key: r.u64()? },
        ACKED => {
            let key = r.u64()?;
            let n = r.count()?;
            let mut seqs = Vec::with_capacity(n.min(4096));
            for _ in 0..n {
                seqs.push(r.u64()?);
            }
            Record::Acked { key, seqs }
        }
        SENT => {
            let key = r.u64()?;
            let n = r.count()?;
            let mut sent = Vec::with_capacity(n.min(4096));
            for _ in 0..n {
                sent.push((r.u64()?, r.u16()?));
            }
            Record::Sent { key, sent }
        }
        RELEASED => Record::Released {
            key: r.u64()?,
            pkid: r.u16()?,
        },
        INBOUND => Record::Inbound {
            key: r.u64()?,
            pkid: r.u16()?,
            held: r.u8()? != 0,
        },
        k => return Err(RecordError::Kind(k)),
    };
    match r.b.len() {
        0 => Ok(rec),
        n => Err(RecordError::Trailing(n)),
    }
}

fn put_targets(out: &mut Vec<u8>, targets: &[Target]) {
    put_u32(out, targets.len() as u32);
    for t in targets {
        put_u64(out, t.key);
        out.push(t.qos | (u8::from(t.retain) << 2));
        put_u32(out, t.sub_ids.len() as u32);
        for i in &t.sub_ids {
            put_u32(out, *i);
        }
    }
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_bytes(out, s.as_bytes());
        }
    }
}

/// Presence bits of the stored MQTT 5 publish properties.
const P_FORMAT: u8 = 1;
const P_EXPIRY: u8 = 2;
const P_RESPONSE: u8 = 4;
const P_CORRELATION: u8 = 8;
const P_CONTENT: u8 = 16;
const P_USER: u8 = 32;

fn put_message(out: &mut Vec<u8>, m: &Message, clock: Clock) {
    put_bytes(out, &m.topic);
    put_bytes(out, &m.payload);
    out.push(m.qos | (u8::from(m.retain) << 2));
    put_u64(out, m.origin);
    put_u64(out, clock.to_unix(m.arrived));
    let Some(p) = m.props.as_deref() else {
        out.push(0);
        return;
    };
    let flags = [
        (p.payload_format_indicator.is_some(), P_FORMAT),
        (p.message_expiry_interval.is_some(), P_EXPIRY),
        (p.response_topic.is_some(), P_RESPONSE),
        (p.correlation_data.is_some(), P_CORRELATION),
        (p.content_type.is_some(), P_CONTENT),
        (!p.user_properties.is_empty(), P_USER),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .fold(0, |a, (_, bit)| a | bit);
    out.push(flags);
    if let Some(v) = p.payload_format_indicator {
        out.push(v);
    }
    if let Some(v) = p.message_expiry_interval {
        put_u32(out, v);
    }
    if let Some(v) = &p.response_topic {
        put_bytes(out, v.as_bytes());
    }
    if let Some(v) = &p.correlation_data {
        put_bytes(out, v);
    }
    if let Some(v) = &p.content_type {
        put_bytes(out, v.as_bytes());
    }
    if !p.user_properties.is_empty() {
        put_u32(out, p.user_properties.len() as u32);
        for (k, v) in &p.user_properties {
            put_bytes(out, k.as_bytes());
            put_bytes(out, v.as_bytes());
        }
    }
}

/// Reads the fields written by the `put_` functions, never past the end.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.b.len() < n {
            return Err(RecordError::Truncated);
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items that follow; larger than the bytes left can hold
    /// (one byte each at least) is a broken record, not an allocation.
    fn count(&mut self) -> Result<usize, RecordError> {
        let n = self.u32()? as usize;
        if n > self.b.len() {
            return Err(RecordError::Truncated);
        }
        Ok(n)
    }

    fn bytes(&mut self) -> Result<&'a [u8], RecordError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, RecordError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| RecordError::Utf8)
    }

    fn opt_string(&mut self) -> Result<Option<String>, RecordError> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.string().map(Some),
        }
    }

    fn targets(&mut self) -> Result<Vec<Target>, RecordError> {
        let n = self.count()?;
        let mut targets = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let key = self.u64()?;
            let flags = self.u8()?;
            let ids = self.count()?;
            let mut sub_ids = Vec::with_capacity(ids.min(64));
            for _ in 0..ids {
                sub_ids.push(self.u32()?);
            }
            targets.push(Target {
                key,
                qos: flags & 3,
                retain: flags & 4 != 0,
                sub_ids,
            });
        }
        Ok(targets)
    }

    fn message(&mut self, clock: Clock, seq: u64) -> Result<Arc<Message>, RecordError> {
        let topic = Bytes::copy_from_slice(self.bytes()?);
        let payload = Bytes::copy_from_slice(self.bytes()?);
        let flags = self.u8()?;
        let origin = self.u64()?;
        let arrived = clock.to_instant(self.u64()?);
        let props = match self.u8()? {
            0 => None,
            f => {
                let mut p = PublishProperties::default();
                if f & P_FORMAT != 0 {
                    p.payload_format_indicator = Some(self.u8()?);
                }
                if f & P_EXPIRY != 0 {
                    p.message_expiry_interval = Some(self.u32()?);
                }
                if f & P_RESPONSE != 0 {
                    p.response_topic = Some(self.string()?);
                }
                if f & P_CORRELATION != 0 {
                    p.correlation_data = Some(Bytes::copy_from_slice(self.bytes()?));
                }
                if f & P_CONTENT != 0 {
                    p.content_type = Some(self.string()?);
                }
                if f & P_USER != 0 {
                    let n = self.count()?;
                    for _ in 0..n {
                        let k = self.string()?;
                        let v = self.string()?;
                        p.user_properties.push((k, v));
                    }
                }
                Some(Box::new(p))
            }
        };
        let parts = Parts {
            topic,
            payload,
            qos: flags & 3,
            retain: flags & 4 != 0,
            props,
            origin,
        };
        Ok(Message::restored(parts, arrived, seq))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A message as the publish path makes them, numbered `seq`.
    pub(crate) fn msg(topic: &str, seq: u64, props: Option<PublishProperties>) -> Arc<Message> {
        let m = Message::new(
            Bytes::copy_from_slice(topic.as_bytes()),
            Bytes::from(format!("payload of {topic}")),
            1,
            true,
            props,
            9,
        );
        m.seq.store(seq, std::sync::atomic::Ordering::Relaxed);
        m
    }

    fn same_message(a: &Message, b: &Message) {
        assert_eq!(
            (
                &a.topic,
                &a.payload,
                a.qos,
                a.retain,
                &a.props,
                a.origin,
                a.seq()
            ),
            (
                &b.topic,
                &b.payload,
                b.qos,
                b.retain,
                &b.props,
                b.origin,
                b.seq()
            )
        );
        let drift = if a.arrived > b.arrived {
            a.arrived - b.arrived
        } else {
            b.arrived - a.arrived
        };
        assert!(drift <= Duration::from_millis(2), "age kept: {drift:?}");
    }

    fn round_trip(r: &Record) -> Record {
        let clock = Clock::now();
        let mut out = Vec::new();
        encode(r, clock, &mut out);
        let back = decode(&out, clock).unwrap();
        // Every prefix is refused, never misread.
        for cut in 0..out.len() {
            assert!(decode(&out[..cut], clock).is_err(), "prefix of {cut} bytes");
        }
        back
    }

    #[test]
    fn every_record_reads_back_as_written() {
        let props = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("k".into(), "v".into()), ("é".into(), "".into())],
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        let m = msg("gerrit/x/y", 42, Some(props));
        let r = Record::Msg {
            msg: m.clone(),
            retained: true,
            more: true,
            targets: vec![
                Target {
                    key: 3,
                    qos: 1,
                    retain: false,
                    sub_ids: vec![],
                },
                Target {
                    key: u64::MAX,
                    qos: 2,
                    retain: true,
                    sub_ids: vec![1, 268_435_455],
                },
            ],
        };
        match (round_trip(&r), &r) {
            (
                Record::Msg {
                    msg: a,
                    retained: ra,
                    targets: ta,
                    more: ma,
                },
                Record::Msg {
                    msg: b,
                    retained: rb,
                    targets: tb,
                    more: mb,
                },
            ) => {
                same_message(&a, b);
                assert_eq!((ra, &ta, ma), (*rb, tb, *mb));
            }
            other => panic!("{other:?}"),
        }
        let plain = msg("nova/d/service/compute/h1", 0, None);
        let s = Record::Session(Box::new(SessionRec {
            key: 7,
            client_id: "firehose-notify".into(),
            user: Some("notify".into()),
            level: 5,
            expiry_secs: 86_400,
            subs: vec![SubRec {
                filter: "$share/g/nova/#".into(),
                qos: 2,
                no_local: true,
                retain_as_published: true,
                id: 12,
            }],
            will: Some((plain.clone(), 30)),
            departed_ms: Some(1_700_000_000_000),
            will_armed: true,
        }));
        match round_trip(&s) {
            Record::Session(back) => {
                let Record::Session(orig) = &s else {
                    unreachable!()
                };
                same_message(&back.will.as_ref().unwrap().0, &plain);
                let strip = |x: &SessionRec| SessionRec {
                    will: None,
                    ..x.clone()
                };
                assert_eq!(strip(&back), strip(orig));
                assert_eq!(back.will.as_ref().unwrap().1, 30);
            }
            other => panic!("{other:?}"),
        }
        for r in [
            Record::Unretain {
                topic: Bytes::from_static(b"a/b"),
            },
            Record::SessionEnd { key: 5 },
            Record::Queued {
                seq: 3,
                targets: vec![Target {
                    key: 1,
                    qos: 2,
                    retain: false,
                    sub_ids: vec![4],
                }],
            },
            Record::Acked {
                key: 5,
                seqs: vec![1, 2, u64::MAX],
            },
            Record::Sent {
                key: 5,
                sent: vec![(1, 1), (2, 65_535)],
            },
            Record::Released { key: 5, pkid: 9 },
            Record::Inbound {
                key: 5,
                pkid: 9,
                held: true,
            },
        ] {
            assert_eq!(round_trip(&r), r);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic_or_an_allocation() {
        let clock = Clock::now();
        assert_eq!(decode(&[99], clock), Err(RecordError::Kind(99)));
        // A count of four billion items in a short record.
        let mut b = vec![ACKED];
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&b, clock), Err(RecordError::Truncated));
        let mut b = vec![SESSION_END];
        b.extend_from_slice(&5u64.to_le_bytes());
        b.push(0);
        assert_eq!(decode(&b, clock), Err(RecordError::Trailing(1)));
    }
}
