//! A published message as the broker holds it, and its wire form.
//!
//! One [`Message`] is built when a PUBLISH (or a will) is accepted and is
//! shared, reference-counted, by every queue and retained slot that holds it:
//! fanning out to ten thousand subscribers copies a pointer ten thousand
//! times, never the payload. It is encoded only when a session writes it, for
//! that session's protocol version, QoS, packet id and retain flag, straight
//! into the session's write buffer ([`encode_publish`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::protocol::PublishProperties;

/// An accepted publish. Immutable once built.
#[derive(Debug)]
pub struct Message {
    /// The topic, checked: UTF-8, no wildcards, within the topic limits.
    pub topic: Bytes,
    pub payload: Bytes,
    /// QoS as published (0, 1 or 2); a delivery gets min(this, granted).
    pub qos: u8,
    /// Retain flag as published.
    pub retain: bool,
    /// MQTT 5 properties from the publisher, without topic alias and
    /// subscription identifiers (those belong to one connection).
    pub props: Option<Box<PublishProperties>>,
    /// The publishing session's key (0 for the broker itself).
    pub origin: u64,
    /// When it was accepted: a message expiry interval counts from here.
    pub arrived: Instant,
    /// Its number in the persistent store (0: not stored). Set once, before
    /// the fan-out, by the publish path when a store is configured, so
    /// that every queue holding it can name it in the store's records.
    pub(crate) seq: AtomicU64,
}

impl Message {
    /// Builds a shared message. `props` are cleaned of per-connection fields.
    pub fn new(
        topic: Bytes,
        payload: Bytes,
        qos: u8,
        retain: bool,
        props: Option<PublishProperties>,
        origin: u64,
    ) -> Arc<Message> {
        let props = props.and_then(|mut p| {
            p.topic_alias = None;
            p.subscription_identifiers.clear();
            (p != PublishProperties::default()).then(|| Box::new(p))
        });
        Arc::new(Message {
            topic,
            payload,
            qos: qos.min(2),
            retain,
            props,
            origin,
            arrived: Instant::now(),
            seq: AtomicU64::new(0),
        })
    }

    /// A message read back from the persistent store: its properties as
    /// they were stored (already cleaned), its age kept (`arrived` is
    /// moved back by the time it spent before the restart, so its message
    /// expiry goes on counting), its store number set.
    pub(crate) fn restored(parts: Parts, arrived: Instant, seq: u64) -> Arc<Message> {
        Arc::new(Message {
            topic: parts.topic,
            payload: parts.payload,
            qos: parts.qos.min(2),
            retain: parts.retain,
            props: parts.props,
            origin: parts.origin,
            arrived,
            seq: AtomicU64::new(seq),
        })
    }

    /// Its number in the persistent store (0: not stored).
    pub(crate) fn seq(&self) -> u64 {
        self.seq.load(Relaxed)
    }

    /// MQTT 5 message expiry: `None` when the message has none, else the
    /// seconds it has left (0: expired, not to be sent, MQTT-3.3.2-5).
    pub fn expiry_left(&self) -> Option<u32> {
        let total = self.props.as_ref()?.message_expiry_interval?;
        let spent = self.arrived.elapsed().as_secs();
        Some(u64::from(total).saturating_sub(spent) as u32)
    }

    /// True when it has an MQTT 5 message expiry interval at all.
    pub fn expires(&self) -> bool {
        self.props
            .as_ref()
            .is_some_and(|p| p.message_expiry_interval.is_some())
    }

    /// True once its message expiry interval has passed.
    pub fn expired(&self) -> bool {
        self.expiry_left() == Some(0)
    }

    /// The topic as text (checked at construction by the caller).
    pub fn topic_str(&self) -> &str {
        std::str::from_utf8(&self.topic).unwrap_or("")
    }

    /// Bytes this message costs a queue that holds it (payload and topic;
    /// shared copies are counted by each holder, which keeps limits simple).
    pub fn weight(&self) -> usize {
        self.topic.len() + self.payload.len()
    }
}

/// Equal in what is stored of it: everything but the moment it arrived.
#[cfg(test)]
impl PartialEq for Message {
    fn eq(&self, o: &Message) -> bool {
        (
            &self.topic,
            &self.payload,
            self.qos,
            self.retain,
            &self.props,
            self.origin,
            self.seq(),
        ) == (
            &o.topic,
            &o.payload,
            o.qos,
            o.retain,
            &o.props,
            o.origin,
            o.seq(),
        )
    }
}

/// The stored fields of a [`Message`], as the persistent store reads them
/// back (see [`Message::restored`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parts {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub props: Option<Box<PublishProperties>>,
    pub origin: u64,
}

/// How one delivery of a message is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    /// MQTT 5 outbound topic alias.
    pub alias: Alias,
}

/// How a PUBLISH names its topic to an MQTT 5 client that accepts aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alias {
    /// The topic, no alias.
    #[default]
    None,
    /// The topic and an alias for it from now on.
    Set(u16),
    /// The alias alone: the topic is left out.
    Use(u16),
}

fn varint_len(mut n: usize) -> usize {
    let mut l = 1;
    while n >= 128 {
        n >>= 7;
        l += 1;
    }
    l
}

fn put_varint(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if n == 0 {
            break;
        }
    }
}

fn props_len(p: Option<&PublishProperties>) -> usize {
    let Some(p) = p else { return 0 };
    let s = |v: &Option<String>| v.as_ref().map_or(0, |s| 3 + s.len());
    p.payload_format_indicator.map_or(0, |_| 2)
        + p.message_expiry_interval.map_or(0, |_| 5)
        + s(&p.content_type)
        + s(&p.response_topic)
        + p.correlation_data.as_ref().map_or(0, |d| 3 + d.len())
        + p.user_properties
            .iter()
            .map(|(k, v)| 5 + k.len() + v.len())
            .sum::<usize>()
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len() as u16);
    out.extend_from_slice(s);
}

/// `expiry`: the interval to write, what is left of the message's own
/// (MQTT-3.3.2-6), not what the publisher sent.
fn put_props(out: &mut BytesMut, p: Option<&PublishProperties>, expiry: Option<u32>) {
    let Some(p) = p else { return };
    if let Some(v) = p.payload_format_indicator {
        out.put_u8(0x01);
        out.put_u8(v);
    }
    if let Some(v) = expiry {
        out.put_u8(0x02);
        out.put_u32(v);
    }
    if let Some(v) = &p.content_type {
        out.put_u8(0x03);
        put_str(out, v.as_bytes());
    }
    if let Some(v) = &p.response_topic {
        out.put_u8(0x08);
        put_str(out, v.as_bytes());
    }
    if let Some(v) = &p.correlation_data {
        out.put_u8(0x09);
        put_str(out, v);
    }
    for (k, v) in &p.user_properties {
        out.put_u8(0x26);
        put_str(out, k.as_bytes());
        put_str(out, v.as_bytes());
    }
}

/// Appends one PUBLISH of `msg` for a client; `v5` selects MQTT 5 framing
/// (properties, and `sub_ids` as subscription identifiers). Returns the
/// number of bytes written.
pub fn encode_publish(
    msg: &Message,
    h: Header,
    v5: bool,
    sub_ids: &[u32],
    out: &mut BytesMut,
) -> usize {
    let props = msg.props.as_deref();
    let (topic, alias): (&[u8], _) = match h.alias {
        Alias::None => (&msg.topic, None),
        Alias::Set(a) => (&msg.topic, Some(a)),
        Alias::Use(a) => (&[], Some(a)),
    };
    let alias = alias.filter(|_| v5);
    let topic = if alias.is_some() {
        topic
    } else {
        &msg.topic[..]
    };
    let plen = if v5 {
        props_len(props)
            + alias.map_or(0, |_| 3)
            + sub_ids
                .iter()
                .map(|i| 1 + varint_len(*i as usize))
                .sum::<usize>()
    } else {
        0
    };
    let remaining = 2
        + topic.len()
        + if h.qos > 0 { 2 } else { 0 }
        + if v5 { varint_len(plen) + plen } else { 0 }
        + msg.payload.len();
    let start = out.len();
    out.reserve(1 + varint_len(remaining) + remaining);
    out.put_u8(0x30 | ((h.dup && h.qos > 0) as u8) << 3 | h.qos << 1 | h.retain as u8);
    put_varint(out, remaining);
    put_str(out, topic);
    if h.qos > 0 {
        out.put_u16(h.pkid);
    }
    if v5 {
        put_varint(out, plen);
        put_props(out, props, msg.expiry_left());
        if let Some(a) = alias {
            out.put_u8(0x23);
            out.put_u16(a);
        }
        for id in sub_ids {
            out.put_u8(0x0B);
            put_varint(out, *id as usize);
        }
    }
    out.extend_from_slice(&msg.payload);
    out.len() - start
}

/// Appends a PUBREL (success) for `pkid`: the same four bytes in every
/// protocol version (MQTT 5 leaves out reason code 0 and empty properties).
pub fn encode_pubrel(pkid: u16, out: &mut BytesMut) {
    out.put_u8(0x62);
    out.put_u8(2);
    out.put_u16(pkid);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::v4::V4;
    use rumqttd::protocol::v5::V5;
    use rumqttd::protocol::{Packet, Protocol};

    fn msg(props: Option<PublishProperties>) -> Arc<Message> {
        Message::new(
            Bytes::from_static(b"gerrit/openstack/nova/comment-added"),
            Bytes::from(vec![7u8; 300]),
            1,
            true,
            props,
            9,
        )
    }

    #[test]
    fn v4_round_trip() {
        let m = msg(None);
        for (qos, pkid) in [(0u8, 0u16), (1, 77)] {
            let mut out = BytesMut::new();
            let h = Header {
                qos,
                retain: true,
                dup: qos > 0,
                pkid,
                alias: Alias::Set(4),
            };
            let n = encode_publish(&m, h, false, &[], &mut out);
            assert_eq!(n, out.len());
            let Packet::Publish(p, None) = V4.read_mut(&mut out, 1 << 20).unwrap() else {
                panic!("not a publish")
            };
            assert_eq!(p.topic, m.topic);
            assert_eq!(p.payload, m.payload);
            assert!(p.retain);
            let wire = p.serialize();
            assert_eq!((wire[0] >> 1) & 3, qos);
            assert_eq!(u16::from_be_bytes([wire[1], wire[2]]), pkid);
            assert!(out.is_empty());
        }
    }

    #[test]
    fn v5_properties_round_trip() {
        let props = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            topic_alias: Some(3),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            subscription_identifiers: vec![5],
            content_type: Some("application/json".into()),
        };
        let m = msg(Some(props.clone()));
        let mut out = BytesMut::new();
        let h = Header {
            qos: 1,
            retain: false,
            dup: false,
            pkid: 4,
            alias: Alias::None,
        };
        encode_publish(&m, h, true, &[2, 300], &mut out);
        let Packet::Publish(p, Some(got)) = V5.read_mut(&mut out, 1 << 20).unwrap() else {
            panic!("no properties")
        };
        assert_eq!(p.payload, m.payload);
        let want = PublishProperties {
            topic_alias: None,
            subscription_identifiers: vec![2, 300],
            ..props
        };
        assert_eq!(got, want);
    }

    #[test]
    fn v5_without_properties() {
        let m = msg(Some(PublishProperties::default()));
        assert!(m.props.is_none(), "empty properties are not kept");
        let mut out = BytesMut::new();
        let h = Header {
            qos: 0,
            retain: false,
            dup: true,
            pkid: 0,
            alias: Alias::None,
        };
        encode_publish(&m, h, true, &[], &mut out);
        assert_eq!(out[0], 0x30, "no DUP at QoS 0");
        let Packet::Publish(p, props) = V5.read_mut(&mut out, 1 << 20).unwrap() else {
            panic!("not a publish")
        };
        assert!(props.is_none());
        assert_eq!(p.topic, m.topic);
    }

    #[test]
    fn v5_topic_alias_set_then_used() {
        let m = msg(None);
        for (alias, topic) in [(Alias::Set(7), &m.topic[..]), (Alias::Use(7), &b""[..])] {
            let mut out = BytesMut::new();
            let h = Header {
                qos: 1,
                retain: false,
                dup: false,
                pkid: 2,
                alias,
            };
            let n = encode_publish(&m, h, true, &[3], &mut out);
            assert_eq!(n, out.len());
            let Packet::Publish(p, Some(props)) = V5.read_mut(&mut out, 1 << 20).unwrap() else {
                panic!("no properties")
            };
            assert_eq!(&p.topic[..], topic);
            assert_eq!(props.topic_alias, Some(7));
            assert_eq!(props.subscription_identifiers, [3]);
            assert_eq!(p.payload, m.payload);
        }
    }

    #[test]
    fn pubrel_parses_in_both_versions() {
        let mut out = BytesMut::new();
        encode_pubrel(513, &mut out);
        let mut again = out.clone();
        let Packet::PubRel(r, _) = V4.read_mut(&mut out, 100).unwrap() else {
            panic!("not a PUBREL")
        };
        assert_eq!(r.pkid, 513);
        let Packet::PubRel(r, _) = V5.read_mut(&mut again, 100).unwrap() else {
            panic!("not a PUBREL")
        };
        assert_eq!(r.pkid, 513);
    }
}
