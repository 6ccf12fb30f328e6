//! What a session sends: the path from the queue to the wire.
//!
//! [`Outflow`] takes deliveries from the retained backlog and the session's
//! [`Outbox`], and writes them as PUBLISH packets within the client's limits:
//! the in-flight window (the lower of ours and the client's Receive
//! Maximum), the client's Maximum Packet Size, message expiry, packet ids,
//! outbound topic aliases (up to the client's Topic Alias Maximum) and the
//! QoS 1 / QoS 2 acknowledgement state, re-sent in order when a persistent
//! session resumes. It does no I/O and touches no shared counter: it says
//! what happened ([`Filled`], the `bool`s of the acknowledgement methods)
//! and the session counts it, so every rule here has a unit test.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};

use crate::message::{encode_publish, Alias, Header};
use crate::outbox::{Delivery, Outbox};

/// Deliveries moved from the outbox per lock.
const TAKE_BATCH: usize = 256;

/// Per-connection limits the client asked for (MQTT 5 CONNECT properties),
/// already combined with ours.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// MQTT 5 framing (properties, aliases, reason codes).
    pub v5: bool,
    /// QoS >= 1 deliveries unacknowledged at once.
    pub window: u16,
    /// Largest PUBLISH the client accepts, in bytes.
    pub max_packet: u32,
    /// Topic aliases the client accepts (0: none).
    pub alias_max: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            v5: false,
            window: u16::MAX,
            max_packet: u32::MAX,
            alias_max: 0,
        }
    }
}

/// What one [`Outflow::fill`] did, for the session's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Filled {
    /// PUBLISH packets written.
    pub sent: u64,
    /// Deliveries whose message expiry passed while they waited.
    pub expired: u64,
    /// Deliveries larger than the client's Maximum Packet Size.
    pub too_large: u64,
}

impl Filled {
    /// True when some delivery was consumed without being sent (the
    /// outbox's progress stamp must still move).
    pub fn skipped(&self) -> bool {
        self.expired + self.too_large > 0
    }
}

/// The answer to a PUBREC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubRecAnswer {
    /// Ours: send PUBREL and wait for PUBCOMP.
    Release,
    /// The client refused it (v5 reason >= 0x80): settled, nothing to send.
    Settled,
    /// Not a QoS 2 delivery of ours: PUBREL "packet identifier not found".
    Unknown,
}

/// Outbound topic aliases of one connection (MQTT 5, 3.3.2.3.4): the first
/// `max` distinct topics get one each; after that the oldest assignment is
/// reused for the new topic, round robin, so a long tail of topics keeps
/// working and the busiest ones keep getting aliased.
#[derive(Debug, Default)]
struct Aliases {
    by_topic: HashMap<Bytes, u16>,
    /// Topic of each alias, index alias - 1.
    topics: Vec<Bytes>,
    /// Next alias to reuse once all are given.
    next_victim: usize,
    max: u16,
}

impl Aliases {
    fn new(max: u16) -> Aliases {
        Aliases {
            max,
            ..Default::default()
        }
    }

    /// The alias to write for `topic`: known (topic left out) or newly set.
    fn for_topic(&mut self, topic: &Bytes) -> Alias {
        if let Some(&a) = self.by_topic.get(topic) {
            return Alias::Use(a);
        }
        let alias = if self.topics.len() < self.max as usize {
            self.topics.push(topic.clone());
            self.topics.len() as u16
        } else {
            let i = self.next_victim;
            self.next_victim = (i + 1) % self.topics.len();
            let old = std::mem::replace(&mut self.topics[i], topic.clone());
            self.by_topic.remove(&old);
            i as u16 + 1
        };
        self.by_topic.insert(topic.clone(), alias);
        Alias::Set(alias)
    }

    /// Takes back an alias that was assigned but never sent.
    fn forget(&mut self, topic: &Bytes) {
        if let Some(a) = self.by_topic.remove(topic) {
            let i = a as usize - 1;
            if i + 1 == self.topics.len() && self.topics.len() <= self.max as usize {
                self.topics.pop();
            } else {
                // A reused slot: leave it empty-handed (never matched again
                // until reassigned).
                self.topics[i] = Bytes::new();
            }
        }
    }
}

/// A QoS 1 or 2 delivery written and not yet acknowledged.
#[derive(Debug)]
struct InFlight {
    pkid: u16,
    /// QoS 2: its PUBREC came and PUBREL went; waiting for PUBCOMP (re-sent
    /// as PUBREL, not PUBLISH, on resume).
    released: bool,
    /// It came from the session's queue while the store kept it (see
    /// [`Journal`]); retained backlog and QoS 0 never are.
    stored: bool,
    delivery: Delivery,
}

/// What happened to stored deliveries since the session last asked: the
/// session writes it to the persistent store ([`Outflow::take_journal`]).
/// Kept only for sessions the store keeps.
#[derive(Debug, Default)]
pub struct Journal {
    /// Message numbers and the packet ids they were written with.
    pub sent: Vec<(u64, u16)>,
    /// Message numbers that left for good (acknowledged, expired, too large).
    pub acked: Vec<u64>,
    /// QoS 2 packet ids whose PUBREC came.
    pub released: Vec<u16>,
}

impl Journal {
    fn is_empty(&self) -> bool {
        self.sent.is_empty() && self.acked.is_empty() && self.released.is_empty()
    }
}

/// Retained messages matched at SUBSCRIBE and not yet written, each at
/// most once (by the identity of the store's shared message).
#[derive(Debug, Default)]
struct Backlog {
    queue: VecDeque<Delivery>,
    pending: std::collections::HashSet<usize>,
}

/// The identity of a delivery's message (the retained store's pointer).
fn key(d: &Delivery) -> usize {
    std::sync::Arc::as_ptr(&d.msg) as usize
}

impl Backlog {
    fn pop(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.pending.remove(&key(&d));
        Some(d)
    }
}

/// Packet ids a connection can have in flight (1..=65535).
const MAX_IN_FLIGHT: usize = u16::MAX as usize;

/// A session's outbound state. See the module documentation.
#[derive(Debug)]
pub struct Outflow {
    /// Retained messages matched at SUBSCRIBE, sent before the live queue
    /// and outside its limits (they are shared with the retained store).
    /// Boxed: most sessions hold none, and every idle reader pays for the
    /// empty ones.
    retained: Option<Box<Backlog>>,
    /// Taken from the outbox, not yet written.
    taken: VecDeque<Delivery>,
    /// QoS >= 1 deliveries written and not yet acknowledged, in order.
    inflight: VecDeque<InFlight>,
    next_pkid: u16,
    limits: Limits,
    /// Only for clients that accept aliases.
    aliases: Option<Box<Aliases>>,
    /// Only for sessions the persistent store keeps.
    journal: Option<Box<Journal>>,
}

impl Default for Outflow {
    fn default() -> Self {
        Outflow {
            retained: None,
            taken: VecDeque::new(),
            inflight: VecDeque::new(),
            next_pkid: 1,
            limits: Limits::default(),
            aliases: None,
            journal: None,
        }
    }
}

impl Outflow {
    /// A new connection: takes its limits, starts its alias table afresh
    /// (aliases never outlive a connection), and, when the session was
    /// resumed, writes what was in flight in its original order
    /// (MQTT-4.6.0-1): released QoS 2 ones as PUBREL, the others as PUBLISH
    /// with DUP and the full topic. A clean start forgets it instead.
    pub fn connected(&mut self, limits: Limits, resumed: bool, out: &mut BytesMut) {
        self.limits = limits;
        self.aliases =
            (limits.v5 && limits.alias_max > 0).then(|| Box::new(Aliases::new(limits.alias_max)));
        if !resumed {
            self.inflight.clear();
            return;
        }
        for f in &self.inflight {
            if f.released {
                crate::message::encode_pubrel(f.pkid, out);
                continue;
            }
            let d = &f.delivery;
            let h = Header {
                qos: d.qos,
                retain: d.retain,
                dup: true,
                pkid: f.pkid,
                alias: Alias::None,
            };
            encode_publish(&d.msg, h, limits.v5, d.sub_ids.as_slice(), out);
        }
    }

    /// Starts or stops keeping a [`Journal`] (the session is, or no longer
    /// is, kept by the persistent store).
    pub fn keep_journal(&mut self, on: bool) {
        if on != self.journal.is_some() {
            self.journal = on.then(Default::default);
        }
    }

    /// What the journal holds since the last call, if anything.
    pub fn take_journal(&mut self) -> Option<Journal> {
        let j = self.journal.as_mut()?;
        if j.is_empty() {
            return None;
        }
        Some(std::mem::take(j))
    }

    /// A stored delivery left for good.
    fn journal_acked(&mut self, stored: bool, d: &Delivery) {
        if let (true, Some(j)) = (stored, self.journal.as_mut()) {
            j.acked.push(d.msg.seq());
        }
    }

    /// Puts deliveries that were in flight before a restart back in the
    /// window, in order, with their packet ids (re-sent with DUP, or as
    /// PUBREL when `released`, on the next connection).
    pub fn restore_in_flight(&mut self, items: impl IntoIterator<Item = (Delivery, u16, bool)>) {
        for (delivery, pkid, released) in items {
            self.inflight.push_back(InFlight {
                pkid,
                released,
                stored: true,
                delivery,
            });
        }
    }

    /// Queues the retained messages a SUBSCRIBE matched, ahead of the live
    /// queue. A message already waiting here (the same filter subscribed
    /// again before its retained set went out, or an overlapping one) is
    /// not queued twice, and at most `cap` wait at once; the rest are
    /// dropped and their number returned (the caller counts them). So
    /// however often a client that does not read subscribes, it holds at
    /// most one pointer per retained message.
    pub fn push_retained(&mut self, ds: impl IntoIterator<Item = Delivery>, cap: usize) -> u64 {
        let mut ds = ds.into_iter().peekable();
        if ds.peek().is_none() {
            return 0;
        }
        let b = self.retained.get_or_insert_with(Default::default);
        let mut over = 0;
        for d in ds {
            if b.pending.contains(&key(&d)) {
                continue;
            }
            if b.queue.len() >= cap {
                over += 1;
                continue;
            }
            b.pending.insert(key(&d));
            b.queue.push_back(d);
        }
        over
    }

    /// Retained messages waiting to be written.
    #[cfg(test)]
    pub fn retained_backlog(&self) -> usize {
        self.retained.as_ref().map_or(0, |b| b.queue.len())
    }

    /// QoS >= 1 deliveries written and not yet acknowledged.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// The next delivery to write: retained ones first, then the outbox.
    /// A QoS >= 1 delivery is only taken while `room` allows. The flag
    /// says whether the store keeps it (a QoS >= 1 delivery from the
    /// outbox of a session that keeps a journal).
    fn next_delivery(
        &mut self,
        outbox: &std::sync::Arc<Outbox>,
        room: usize,
    ) -> Option<(Delivery, bool)> {
        let fits = |d: &Delivery| d.qos == 0 || room > 0;
        if let Some(retained) = &mut self.retained {
            match retained.queue.front() {
                Some(d) if fits(d) => return retained.pop().map(|d| (d, false)),
                Some(_) => return None,
                None => self.retained = None,
            }
        }
        if self.taken.is_empty() {
            outbox.take(&mut self.taken, TAKE_BATCH, room);
        }
        let stored = |d: &Delivery| d.qos > 0 && d.msg.seq() != 0;
        let journal = self.journal.is_some();
        match self.taken.front() {
            Some(d) if fits(d) => self.taken.pop_front().map(|d| {
                let s = journal && stored(&d);
                (d, s)
            }),
            _ => None,
        }
    }

    /// Writes queued deliveries into `out` until it holds `chunk` bytes or
    /// the in-flight window is full; `all` ignores both (the last delivery
    /// before shutdown). Expired and oversize deliveries are dropped here
    /// (MQTT-3.3.2-5, MQTT-3.1.2-25), as if acknowledged.
    pub fn fill(
        &mut self,
        outbox: &std::sync::Arc<Outbox>,
        out: &mut BytesMut,
        chunk: usize,
        all: bool,
    ) -> Filled {
        // Even the last delivery before shutdown keeps at most 65,535 in
        // flight: there are no more packet ids.
        let window = if all {
            MAX_IN_FLIGHT
        } else {
            usize::from(self.limits.window)
        };
        let v5 = self.limits.v5;
        let mut done = Filled::default();
        // Packet ids in use, for a large window (a drain, or a client with a
        // big Receive Maximum): one lookup per id, not a walk of the window.
        let mut used: Option<std::collections::HashSet<u16>> =
            (window > 64).then(|| self.inflight.iter().map(|f| f.pkid).collect());
        while all || out.len() < chunk {
            let room = window.saturating_sub(self.inflight.len());
            let Some((d, stored)) = self.next_delivery(outbox, room) else {
                break;
            };
            if d.msg.expired() {
                done.expired += 1;
                self.journal_acked(stored, &d);
                continue;
            }
            let pkid = if d.qos > 0 {
                self.alloc_pkid(used.as_mut())
            } else {
                0
            };
            let start = out.len();
            let alias = match &mut self.aliases {
                Some(a) => a.for_topic(&d.msg.topic),
                None => Alias::None,
            };
            let h = Header {
                qos: d.qos,
                retain: d.retain,
                dup: false,
                pkid,
                alias,
            };
            let written = encode_publish(&d.msg, h, v5, d.sub_ids.as_slice(), out);
            if written > self.limits.max_packet as usize {
                // Not for this client at all: dropped for it alone. Its
                // alias (if it set one) was never sent: forget it.
                out.truncate(start);
                if let (Some(a), Alias::Set(_)) = (&mut self.aliases, alias) {
                    a.forget(&d.msg.topic);
                }
                if pkid != 0 {
                    self.next_pkid = pkid;
                    if let Some(u) = used.as_mut() {
                        u.remove(&pkid);
                    }
                }
                done.too_large += 1;
                self.journal_acked(stored, &d);
                continue;
            }
            if d.qos > 0 {
                if let (true, Some(j)) = (stored, self.journal.as_mut()) {
                    j.sent.push((d.msg.seq(), pkid));
                }
                self.inflight.push_back(InFlight {
                    pkid,
                    released: false,
                    stored,
                    delivery: d,
                });
            }
            done.sent += 1;
        }
        // Idle again after a burst (or a big retained set): give it back.
        if self.taken.is_empty() && self.taken.capacity() > 32 {
            self.taken = VecDeque::new();
        }
        if self.retained.as_ref().is_some_and(|r| r.queue.is_empty()) {
            self.retained = None;
        }
        done
    }

    /// The next free packet id. Called only while fewer than 65,535 are in
    /// flight (the window says so), so a free one exists and the search
    /// ends; `used` (the in-flight ids, kept current) makes each probe one
    /// lookup.
    fn alloc_pkid(&mut self, used: Option<&mut std::collections::HashSet<u16>>) -> u16 {
        let mut used = used;
        loop {
            let p = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            let taken = match used.as_deref_mut() {
                Some(u) => !u.insert(p),
                None => self.inflight.iter().any(|f| f.pkid == p),
            };
            if !taken {
                return p;
            }
        }
    }

    /// Ends the QoS `qos` delivery `pkid` in flight; false when there is
    /// none (a stray or repeated acknowledgement).
    fn settle(&mut self, pkid: u16, qos: u8) -> bool {
        match self.position(pkid, qos) {
            Some(i) => {
                self.remove_at(i);
                true
            }
            None => false,
        }
    }

    /// Takes the delivery at `i` out of the window, for good.
    fn remove_at(&mut self, i: usize) {
        if let Some(f) = self.inflight.remove(i) {
            self.journal_acked(f.stored, &f.delivery);
        }
    }

    /// Where the QoS `qos` delivery `pkid` is in the window.
    fn position(&self, pkid: u16, qos: u8) -> Option<usize> {
        self.inflight
            .iter()
            .position(|f| f.pkid == pkid && f.delivery.qos == qos)
    }

    /// PUBACK: true when it settled a QoS 1 delivery.
    pub fn on_puback(&mut self, pkid: u16) -> bool {
        self.settle(pkid, 1)
    }

    /// PUBREC (QoS 2, step 2); `refused` for a v5 reason code >= 0x80,
    /// which ends the exchange there.
    pub fn on_pubrec(&mut self, pkid: u16, refused: bool) -> PubRecAnswer {
        match self.position(pkid, 2) {
            None => PubRecAnswer::Unknown,
            Some(i) if refused => {
                self.remove_at(i);
                PubRecAnswer::Settled
            }
            Some(i) => {
                let f = &mut self.inflight[i];
                f.released = true;
                if let (true, Some(j)) = (f.stored, self.journal.as_mut()) {
                    j.released.push(pkid);
                }
                PubRecAnswer::Release
            }
        }
    }

    /// PUBCOMP (QoS 2, step 4): true when it settled a released delivery.
    pub fn on_pubcomp(&mut self, pkid: u16) -> bool {
        match self.position(pkid, 2) {
            Some(i) if self.inflight[i].released => {
                self.remove_at(i);
                true
            }
            _ => false,
        }
    }

    /// Forgets everything (the session ends); returns how many deliveries
    /// were taken or in flight and will not be sent.
    pub fn clear(&mut self) -> usize {
        let n = self.taken.len() + self.inflight.len();
        *self = Outflow::default();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Policy;
    use crate::message::Message;
    use crate::outbox::{Budget, Reader, SubIds};
    use crate::stats::Stats;
    use rumqttd::protocol::v5::V5;
    use rumqttd::protocol::{Packet, Protocol};
    use std::sync::Arc;

    fn outbox() -> Arc<Outbox> {
        let budget = Budget::new(usize::MAX / 2, Arc::new(Stats::default()));
        let o = Arc::new(Outbox::new(1, 1000, 1 << 24, budget));
        o.set_reader(Reader {
            reads_everything: true,
            ..Default::default()
        });
        o.set_online(true);
        o.set_blocked(true);
        o
    }

    fn policy() -> Policy {
        Policy::load(&crate::config::AuthConfig::default()).unwrap()
    }

    fn push(o: &Outbox, topic: &'static str, qos: u8, payload: usize, expiry: Option<u32>) {
        let props = expiry.map(|e| rumqttd::protocol::PublishProperties {
            message_expiry_interval: Some(e),
            ..Default::default()
        });
        let msg = Message::new(
            Bytes::from_static(topic.as_bytes()),
            Bytes::from(vec![b'x'; payload]),
            qos,
            false,
            props,
            7,
        );
        o.push(
            Delivery {
                msg,
                qos,
                retain: false,
                sub_ids: SubIds::One(0),
            },
            &policy(),
        );
    }

    /// Topic, packet id, DUP and alias of one PUBLISH written.
    type Written = (String, u16, bool, Option<u16>);

    /// Each PUBLISH in `out`, and the PUBRELs.
    fn read_all(out: &mut BytesMut) -> (Vec<Written>, Vec<u16>) {
        let (mut pubs, mut rels) = (Vec::new(), Vec::new());
        while !out.is_empty() {
            let dup = out[0] & 0x08 != 0;
            let pkid = crate::codec::encoded_pkid_offset(out)
                .filter(|_| out[0] >> 4 == 3 && (out[0] >> 1) & 3 > 0)
                .map_or(0, |o| u16::from_be_bytes([out[o], out[o + 1]]));
            match V5.read_mut(out, 1 << 20).unwrap() {
                Packet::Publish(p, props) => pubs.push((
                    String::from_utf8(p.topic.to_vec()).unwrap(),
                    pkid,
                    dup,
                    props.and_then(|p| p.topic_alias),
                )),
                Packet::PubRel(r, _) => rels.push(r.pkid),
                other => panic!("unexpected {other:?}"),
            }
        }
        (pubs, rels)
    }

    fn v5(window: u16, alias_max: u16) -> Limits {
        Limits {
            v5: true,
            window,
            max_packet: u32::MAX,
            alias_max,
        }
    }

    #[test]
    fn window_bounds_qos1_in_flight_and_acks_open_it() {
        let o = outbox();
        for _ in 0..5 {
            push(&o, "a", 1, 3, None);
        }
        push(&o, "b", 0, 3, None);
        let mut f = Outflow::default();
        let mut out = BytesMut::new();
        f.connected(v5(2, 0), false, &mut out);
        let done = f.fill(&o, &mut out, 1 << 16, false);
        assert_eq!(done.sent, 2, "two in flight at most");
        assert_eq!(f.in_flight(), 2);
        let (pubs, _) = read_all(&mut out);
        assert_eq!(pubs.iter().map(|p| p.1).collect::<Vec<_>>(), [1, 2]);
        assert!(!f.on_puback(9), "a stray PUBACK settles nothing");
        assert!(f.on_puback(1));
        assert!(!f.on_puback(1), "nor a repeated one");
        assert_eq!(f.fill(&o, &mut out, 1 << 16, false).sent, 1);
        assert_eq!(read_all(&mut out).0[0].1, 3, "the next id");
        // `all` (shutdown) ignores the window; QoS 0 never waits for it.
        assert_eq!(f.fill(&o, &mut out, 1 << 16, true).sent, 3);
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap() {
        let o = outbox();
        let mut f = Outflow::default();
        let mut out = BytesMut::new();
        f.connected(v5(10, 0), false, &mut out);
        f.next_pkid = u16::MAX;
        for _ in 0..3 {
            push(&o, "a", 1, 1, None);
        }
        f.fill(&o, &mut out, 1 << 16, false);
        let ids: Vec<u16> = read_all(&mut out).0.iter().map(|p| p.1).collect();
        assert_eq!(ids, [u16::MAX, 1, 2], "0 is never a packet id");
        f.on_puback(1);
        f.next_pkid = u16::MAX;
        push(&o, "a", 1, 1, None);
        push(&o, "a", 1, 1, None);
        f.fill(&o, &mut out, 1 << 16, false);
        let ids: Vec<u16> = read_all(&mut out).0.iter().map(|p| p.1).collect();
        assert_eq!(ids, [1, 3], "ids still in flight are skipped");
    }

    #[test]
    fn expired_and_oversize_are_dropped_and_counted() {
        let o = outbox();
        push(&o, "a", 1, 10, Some(0));
        push(&o, "big", 1, 500, None);
        push(&o, "a", 1, 10, None);
        let mut f = Outflow::default();
        let mut out = BytesMut::new();
        let limits = Limits {
            max_packet: 100,
            ..v5(10, 5)
        };
        f.connected(limits, false, &mut out);
        let done = f.fill(&o, &mut out, 1 << 16, false);
        assert_eq!(
            done,
            Filled {
                sent: 1,
                expired: 1,
                too_large: 1
            }
        );
        assert!(done.skipped());
        let (pubs, _) = read_all(&mut out);
        assert_eq!(pubs, [("a".to_string(), 1, false, Some(1))]);
        assert_eq!(f.in_flight(), 1, "dropped ones take no window");
        assert!(
            !f.aliases
                .as_ref()
                .unwrap()
                .by_topic
                .contains_key(&b"big"[..]),
            "no alias for what was never sent"
        );
    }

    #[test]
    fn aliases_set_then_used_then_reused_round_robin() {
        let o = outbox();
        for t in ["a", "b", "a", "c", "b", "a"] {
            push(&o, t, 0, 1, None);
        }
        let mut f = Outflow::default();
        let mut out = BytesMut::new();
        f.connected(v5(10, 2), false, &mut out);
        f.fill(&o, &mut out, 1 << 16, false);
        let got: Vec<(String, Option<u16>)> = read_all(&mut out)
            .0
            .into_iter()
            .map(|p| (p.0, p.3))
            .collect();
        let want = [
            ("a", Some(1)), // set
            ("b", Some(2)), // set
            ("", Some(1)),  // a, by alias alone
            ("c", Some(1)), // both taken: the oldest (1) now means c
            ("", Some(2)),  // b
            ("a", Some(2)), // a lost its alias: set again, on the next slot
        ];
        let want: Vec<(String, Option<u16>)> =
            want.iter().map(|(t, a)| (t.to_string(), *a)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn no_aliases_for_v3_or_clients_without_a_maximum() {
        for limits in [v5(10, 0), Limits::default()] {
            let o = outbox();
            push(&o, "a", 0, 1, None);
            push(&o, "a", 0, 1, None);
            let mut f = Outflow::default();
            let mut out = BytesMut::new();
            f.connected(limits, false, &mut out);
            f.fill(&o, &mut out, 1 << 16, false);
            assert!(f.aliases.is_none());
            if limits.v5 {
                let (pubs, _) = read_all(&mut out);
                assert!(pubs.iter().all(|p| p.0 == "a" && p.3.is_none()));
            }
        }
    }

    #[test]
    fn resume_resends_in_order_with_full_topics_and_pubrel_for_released() {
        let o = outbox();
        push(&o, "q2", 2, 1, None);
        push(&o, "q1", 1, 1, None);
        push(&o, "q2", 2, 1, None);
        let mut f = Outflow::default();
        let mut out = BytesMut::new();
        f.connected(v5(10, 5), false, &mut out);
        f.fill(&o, &mut out, 1 << 16, false);
        let (pubs, _) = read_all(&mut out);
        assert_eq!(pubs[2].0, "", "the third went by alias");
        assert_eq!(f.on_pubrec(1, false), PubRecAnswer::Release);
        assert_eq!(f.on_pubrec(2, false), PubRecAnswer::Unknown, "QoS 1");
        assert!(!f.on_pubcomp(3), "not released yet");
        // The connection drops; the client resumes the session.
        f.connected(v5(10, 5), true, &mut out);
        let (pubs, rels) = read_all(&mut out);
        assert_eq!(rels, [1], "released: PUBREL again, not PUBLISH");
        assert_eq!(
            pubs,
            [
                ("q1".to_string(), 2, true, None),
                ("q2".to_string(), 3, true, None)
            ],
            "full topic, DUP, no alias of the old connection"
        );
        assert!(f.on_pubcomp(1));
        assert!(f.on_puback(2));
        assert_eq!(f.on_pubrec(3, true), PubRecAnswer::Settled);
        assert_eq!(f.in_flight(), 0);
        // A clean start forgets what was in flight.
        push(&o, "q1", 1, 1, None);
        f.fill(&o, &mut out, 1 << 16, false);
        f.connected(v5(10, 5), false, &mut out);
        assert_eq!(f.in_flight(), 0);
        assert!(read_all(&mut out).0.len() == 1);
    }

    #[test]
    fn retained_go_first_and_within_the_window() {
        let o = outbox();
        push(&o, "live", 1, 1, None);
        let mut f = Outflow::default();
        let mut out = BytesMut::new();
        f.connected(v5(1, 0), false, &mut out);
        let retained = Message::new(
            Bytes::from_static(b"kept"),
            Bytes::from_static(b"1"),
            1,
            true,
            None,
            3,
        );
        f.push_retained(
            [Delivery {
                msg: retained,
                qos: 1,
                retain: true,
                sub_ids: SubIds::One(4),
            }],
            10,
        );
        assert_eq!(f.fill(&o, &mut out, 1 << 16, false).sent, 1);
        assert_eq!(read_all(&mut out).0[0].0, "kept");
        f.on_puback(1);
        assert_eq!(f.fill(&o, &mut out, 1 << 16, false).sent, 1);
        assert_eq!(read_all(&mut out).0[0].0, "live");
        assert_eq!(f.clear(), 1, "one in flight, unsent for good");
    }

    #[test]
    fn a_retained_message_waits_once_however_often_it_is_subscribed() {
        let mut f = Outflow::default();
        let store: Vec<Arc<Message>> = (0..5)
            .map(|i| {
                Message::new(
                    Bytes::from(format!("r/{i}")),
                    Bytes::from_static(b"x"),
                    0,
                    true,
                    None,
                    0,
                )
            })
            .collect();
        let ds = |store: &[Arc<Message>]| {
            store
                .iter()
                .map(|m| Delivery {
                    msg: m.clone(),
                    qos: 0,
                    retain: true,
                    sub_ids: SubIds::One(0),
                })
                .collect::<Vec<_>>()
        };
        for _ in 0..1000 {
            assert_eq!(f.push_retained(ds(&store), 100), 0);
        }
        assert_eq!(f.retained_backlog(), 5, "one pointer per retained message");
        assert_eq!(f.push_retained(ds(&store), 3), 0, "all already waiting");
        let o = outbox();
        let mut out = BytesMut::new();
        f.connected(v5(10, 0), false, &mut out);
        assert_eq!(f.fill(&o, &mut out, 1 << 16, false).sent, 5);
        assert_eq!(f.retained_backlog(), 0);
        assert_eq!(
            f.push_retained(ds(&store), 3),
            2,
            "sent ones may wait again, within the cap"
        );
        assert_eq!(f.retained_backlog(), 3);
    }

    #[test]
    fn the_shutdown_drain_stops_at_65535_in_flight_and_is_linear() {
        let budget = Budget::new(usize::MAX / 2, Arc::new(Stats::default()));
        let o = Arc::new(Outbox::new(1, 100_000, 1 << 30, budget));
        o.set_reader(Reader {
            reads_everything: true,
            ..Default::default()
        });
        o.set_online(true);
        let p = policy();
        for i in 0..70_000u32 {
            let m = Message::new(
                Bytes::from(format!("t/{}", i % 10)),
                Bytes::from_static(b"x"),
                1,
                false,
                None,
                0,
            );
            o.push(
                Delivery {
                    msg: m,
                    qos: 1,
                    retain: false,
                    sub_ids: SubIds::One(0),
                },
                &p,
            );
        }
        let mut f = Outflow::default();
        let mut out = BytesMut::new();
        f.connected(v5(20, 0), false, &mut out);
        // `all`: the last delivery before shutdown. It must end, with every
        // packet id used once.
        let done = f.fill(&o, &mut out, 1 << 16, true);
        assert_eq!(done.sent, 65_535);
        assert_eq!(f.in_flight(), 65_535);
        let ids: std::collections::HashSet<u16> = f.inflight.iter().map(|x| x.pkid).collect();
        assert_eq!(ids.len(), 65_535, "no id twice");
        assert_eq!(o.len(), 70_000 - 65_535, "the rest stays queued");
        assert_eq!(
            f.fill(&o, &mut out, 1 << 16, true).sent,
            0,
            "no id left: nothing more"
        );
    }
}
