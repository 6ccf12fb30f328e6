//! What the store's records add up to: the image of everything the broker
//! must remember.
//!
//! [`Image::apply`] is the one place that says what a record means. The
//! same code runs when the broker starts (replaying the file: the image is
//! then what is restored) and in the writer as it appends (so a compaction
//! can write the image instead of the history). A message is held once,
//! with a count of the queues and the retained slot that hold it; it goes
//! when the count falls to zero. The image keeps where a message's record
//! sits in the file ([`Loc`]), not its bytes: what the store remembers
//! costs disk, and a few dozen bytes of memory a message. Pure: no I/O,
//! no clock.
//!
//! Records come from many tasks through one queue, so a session's
//! acknowledgement of a message can be written just before the publisher's
//! record of that message (the publisher hands the message to the queues
//! first and writes its record once the fan-out is done). Such early news
//! waits in `early` for the message's record; what never finds one (a
//! message that was not stored after all) is dropped at the next
//! compaction but one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use super::log::Loc;
use super::record::{Record, SessionRec, Target};
use crate::message::Message;

/// One delivery in a persistent session's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Queued {
    pub qos: u8,
    pub retain: bool,
    pub sub_ids: Vec<u32>,
    /// Packet id it was written with; 0 while not written.
    pub pkid: u16,
    /// QoS 2: PUBREC received, PUBREL sent.
    pub released: bool,
}

/// A persistent session as the store knows it.
#[derive(Debug)]
pub(crate) struct SessionImage {
    pub rec: Box<SessionRec>,
    /// Deliveries not yet acknowledged, by the message's store number
    /// (the order the session's publishers sent them in).
    pub queue: BTreeMap<u64, Queued>,
    /// QoS 2 packet ids received from the client and not yet released.
    pub inbound: BTreeSet<u16>,
    by_pkid: HashMap<u16, u64>,
}

/// A stored message: where its record is, its weight (topic and
/// payload bytes), and how many holders it has.
#[derive(Debug)]
struct Stored {
    loc: Loc,
    weight: u32,
    refs: u32,
}

/// One piece of a [`Image::snapshot`]: a record as it is, or a message to
/// copy from where it is now, with its holders.
#[derive(Debug)]
pub(crate) enum Snap {
    Rec(Record),
    Msg {
        loc: Loc,
        retained: bool,
        targets: Vec<Target>,
    },
}

/// News of a delivery that came before its message (see the module
/// documentation), and the compaction epoch it came in.
#[derive(Debug, Default, Clone, Copy)]
struct Early {
    pkid: u16,
    released: bool,
    acked: bool,
    epoch: u64,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Image {
    msgs: HashMap<u64, Stored>,
    retained: HashMap<Bytes, u64>,
    sessions: HashMap<u64, SessionImage>,
    early: HashMap<(u64, u64), Early>,
    epoch: u64,
    /// Topic and payload bytes of the messages held.
    live_bytes: u64,
    /// Queue entries held in all sessions.
    queued: u64,
    /// Highest session key and message number seen: a restarted broker
    /// numbers from above them.
    pub max_key: u64,
    pub max_seq: u64,
}

impl Image {
    /// Applies one record, which sits at `loc` in the file. See the module
    /// documentation.
    pub(crate) fn apply(&mut self, r: Record, loc: Loc) {
        match r {
            Record::Msg {
                msg,
                retained,
                targets,
                more,
            } => self.add_message(&msg, loc, retained, targets, more),
            Record::Queued { seq, targets } => {
                if !self.msgs.contains_key(&seq) {
                    return;
                }
                let n = self.queue_for(seq, targets);
                // The placeholder `more` held is given back.
                if let Some(st) = self.msgs.get_mut(&seq) {
                    st.refs += n;
                }
                self.release(seq);
            }
            Record::Unretain { topic } => {
                if let Some(old) = self.retained.remove(&topic) {
                    self.release(old);
                }
            }
            Record::Session(rec) => {
                self.max_key = self.max_key.max(rec.key);
                match self.sessions.get_mut(&rec.key) {
                    Some(s) => s.rec = rec,
                    None => {
                        let key = rec.key;
                        self.sessions.insert(
                            key,
                            SessionImage {
                                rec,
                                queue: BTreeMap::new(),
                                inbound: BTreeSet::new(),
                                by_pkid: HashMap::new(),
                            },
                        );
                    }
                }
            }
            Record::SessionEnd { key } => {
                if let Some(s) = self.sessions.remove(&key) {
                    self.queued -= s.queue.len() as u64;
                    for seq in s.queue.into_keys() {
                        self.release(seq);
                    }
                }
                self.early.retain(|(k, _), _| *k != key);
            }
            Record::Acked { key, seqs } => {
                let Some(s) = self.sessions.get_mut(&key) else {
                    return;
                };
                let (mut gone, mut early) = (Vec::new(), Vec::new());
                for seq in seqs {
                    match s.queue.remove(&seq) {
                        Some(q) => {
                            if q.pkid != 0 {
                                s.by_pkid.remove(&q.pkid);
                            }
                            gone.push(seq);
                        }
                        None => early.push(seq),
                    }
                }
                self.queued -= gone.len() as u64;
                for seq in gone {
                    self.release(seq);
                }
                for seq in early {
                    self.early_entry(key, seq).acked = true;
                }
            }
            Record::Sent { key, sent } => {
                let Some(s) = self.sessions.get_mut(&key) else {
                    return;
                };
                let mut early = Vec::new();
                for (seq, pkid) in sent {
                    match s.queue.get_mut(&seq) {
                        Some(q) => {
                            if q.pkid != 0 {
                                s.by_pkid.remove(&q.pkid);
                            }
                            q.pkid = pkid;
                            q.released = false;
                            s.by_pkid.insert(pkid, seq);
                        }
                        None => early.push((seq, pkid)),
                    }
                }
                for (seq, pkid) in early {
                    self.early_entry(key, seq).pkid = pkid;
                }
            }
            Record::Released { key, pkid } => {
                let Some(s) = self.sessions.get_mut(&key) else {
                    return;
                };
                if let Some(q) = s.by_pkid.get(&pkid).and_then(|seq| s.queue.get_mut(seq)) {
                    q.released = true;
                } else if let Some(e) = self
                    .early
                    .iter_mut()
                    .find(|((k, _), e)| *k == key && e.pkid == pkid)
                {
                    e.1.released = true;
                }
            }
            Record::Inbound { key, pkid, held } => {
                if let Some(s) = self.sessions.get_mut(&key) {
                    if held {
                        s.inbound.insert(pkid);
                    } else {
                        s.inbound.remove(&pkid);
                    }
                }
            }
        }
    }

    fn early_entry(&mut self, key: u64, seq: u64) -> &mut Early {
        let epoch = self.epoch;
        self.early.entry((key, seq)).or_insert(Early {
            epoch,
            ..Default::default()
        })
    }

    fn add_message(
        &mut self,
        msg: &Arc<Message>,
        loc: Loc,
        retained: bool,
        targets: Vec<Target>,
        more: bool,
    ) {
        let seq = msg.seq();
        self.max_seq = self.max_seq.max(seq);
        let mut refs = self.queue_for(seq, targets) + u32::from(more);
        if retained {
            refs += 1;
            if let Some(old) = self.retained.insert(msg.topic.clone(), seq) {
                self.release(old);
            }
        }
        if refs > 0 {
            let weight = msg.weight() as u32;
            self.live_bytes += u64::from(weight);
            self.msgs.insert(seq, Stored { loc, weight, refs });
        }
    }

    /// Puts message `seq` in the queues of `targets` (those the image
    /// knows, and that did not acknowledge it already); returns how many.
    fn queue_for(&mut self, seq: u64, targets: Vec<Target>) -> u32 {
        let mut refs = 0;
        for t in targets {
            let Some(s) = self.sessions.get_mut(&t.key) else {
                continue;
            };
            let early = self.early.remove(&(t.key, seq)).unwrap_or_default();
            if early.acked {
                continue;
            }
            if early.pkid != 0 {
                s.by_pkid.insert(early.pkid, seq);
            }
            let q = Queued {
                qos: t.qos,
                retain: t.retain,
                sub_ids: t.sub_ids,
                pkid: early.pkid,
                released: early.released,
            };
            if s.queue.insert(seq, q).is_none() {
                refs += 1;
                self.queued += 1;
            }
        }
        refs
    }

    /// One holder of message `seq` let it go.
    fn release(&mut self, seq: u64) {
        if let Some(st) = self.msgs.get_mut(&seq) {
            st.refs -= 1;
            if st.refs == 0 {
                self.drop_message(seq);
            }
        }
    }

    fn drop_message(&mut self, seq: u64) {
        if let Some(st) = self.msgs.remove(&seq) {
            self.live_bytes -= u64::from(st.weight);
        }
    }

    /// Where the stored message `seq` is, and its weight.
    pub(crate) fn stored(&self, seq: u64) -> Option<(Loc, usize)> {
        self.msgs.get(&seq).map(|s| (s.loc, s.weight as usize))
    }

    /// The stored message `seq` moved (a compaction wrote it elsewhere).
    pub(crate) fn relocate(&mut self, seq: u64, loc: Loc) {
        if let Some(s) = self.msgs.get_mut(&seq) {
            s.loc = loc;
        }
    }

    /// Forgets every message but `seqs` (those a compaction could copy:
    /// the others could not be read back, and are lost).
    pub(crate) fn keep_only(&mut self, seqs: impl IntoIterator<Item = u64>) {
        let keep: std::collections::HashSet<u64> = seqs.into_iter().collect();
        let gone: Vec<u64> = self
            .msgs
            .keys()
            .filter(|s| !keep.contains(s))
            .copied()
            .collect();
        for seq in gone {
            self.drop_message(seq);
        }
    }

    /// Retained messages, one per topic: their numbers and places.
    pub(crate) fn retained(&self) -> impl Iterator<Item = (u64, Loc)> + '_ {
        self.retained
            .values()
            .filter_map(|seq| self.msgs.get(seq).map(|s| (*seq, s.loc)))
    }

    pub(crate) fn sessions(&self) -> impl Iterator<Item = &SessionImage> + '_ {
        self.sessions.values()
    }

    /// Messages held, queue entries held, and the messages' bytes.
    pub(crate) fn size(&self) -> (u64, u64, u64) {
        (self.msgs.len() as u64, self.queued, self.live_bytes)
    }

    /// About what a compacted file would take, for deciding when to compact.
    pub(crate) fn estimate(&self) -> u64 {
        self.live_bytes
            + self.msgs.len() as u64 * 64
            + self.queued * 24
            + self.sessions.len() as u64 * 256
    }

    /// The records that rebuild this image from nothing (a compaction):
    /// sessions, then messages in order with their holders (to be copied
    /// from the file), then what was written and released. News still
    /// waiting for its message is kept in memory for one more round; older
    /// news is dropped.
    pub(crate) fn snapshot(&mut self) -> Vec<Snap> {
        let epoch = self.epoch;
        self.early.retain(|_, e| e.epoch == epoch);
        self.epoch += 1;
        let mut out = Vec::with_capacity(self.sessions.len() + self.msgs.len());
        let mut keys: Vec<u64> = self.sessions.keys().copied().collect();
        keys.sort_unstable();
        let mut holders: HashMap<u64, Vec<Target>> = HashMap::new();
        for k in &keys {
            let s = &self.sessions[k];
            out.push(Snap::Rec(Record::Session(s.rec.clone())));
            for (seq, q) in &s.queue {
                holders.entry(*seq).or_default().push(Target {
                    key: *k,
                    qos: q.qos,
                    retain: q.retain,
                    sub_ids: q.sub_ids.clone(),
                });
            }
        }
        let retained: std::collections::HashSet<u64> = self.retained.values().copied().collect();
        let mut seqs: Vec<u64> = self.msgs.keys().copied().collect();
        seqs.sort_unstable();
        for seq in seqs {
            out.push(Snap::Msg {
                loc: self.msgs[&seq].loc,
                retained: retained.contains(&seq),
                targets: holders.remove(&seq).unwrap_or_default(),
            });
        }
        for k in &keys {
            let s = &self.sessions[k];
            let sent: Vec<(u64, u16)> = s
                .queue
                .iter()
                .filter(|(_, q)| q.pkid != 0)
                .map(|(seq, q)| (*seq, q.pkid))
                .collect();
            if !sent.is_empty() {
                out.push(Snap::Rec(Record::Sent { key: *k, sent }));
            }
            for q in s.queue.values().filter(|q| q.released) {
                out.push(Snap::Rec(Record::Released {
                    key: *k,
                    pkid: q.pkid,
                }));
            }
            for pkid in &s.inbound {
                out.push(Snap::Rec(Record::Inbound {
                    key: *k,
                    pkid: *pkid,
                    held: true,
                }));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::tests::msg;

    impl Image {
        /// Applies `r`, a message as if at the offset of its number.
        fn put(&mut self, r: Record) {
            let loc = match &r {
                Record::Msg { msg, .. } => Loc {
                    at: msg.seq(),
                    len: 1,
                },
                _ => Loc::default(),
            };
            self.apply(r, loc);
        }
    }

    fn session(key: u64) -> Record {
        Record::Session(Box::new(SessionRec {
            key,
            client_id: format!("c{key}"),
            user: None,
            level: 4,
            expiry_secs: 60,
            subs: vec![],
            will: None,
            departed_ms: None,
            will_armed: false,
        }))
    }

    fn to(keys: &[u64]) -> Vec<Target> {
        keys.iter()
            .map(|k| Target {
                key: *k,
                qos: 1,
                retain: false,
                sub_ids: vec![],
            })
            .collect()
    }

    fn queued(img: &Image, key: u64) -> Vec<(u64, u16, bool)> {
        img.sessions[&key]
            .queue
            .iter()
            .map(|(s, q)| (*s, q.pkid, q.released))
            .collect()
    }

    #[test]
    fn a_message_lives_while_a_queue_or_the_retained_slot_holds_it() {
        let mut img = Image::default();
        img.put(session(1));
        img.put(session(2));
        img.put(Record::Msg {
            msg: msg("a", 10, None),
            retained: true,
            targets: to(&[1, 2, 3]),
            more: false,
        });
        assert_eq!(img.size().0, 1, "unknown session 3 ignored");
        assert_eq!(img.size().1, 2);
        img.put(Record::Acked {
            key: 1,
            seqs: vec![10],
        });
        img.put(Record::SessionEnd { key: 2 });
        assert_eq!(img.retained().count(), 1, "still retained");
        // A new retained message on the topic replaces it: the old goes.
        img.put(Record::Msg {
            msg: msg("a", 11, None),
            retained: true,
            targets: vec![],
            more: false,
        });
        assert!(img.stored(10).is_none());
        assert_eq!(img.retained().next().unwrap().0, 11);
        img.put(Record::Unretain {
            topic: Bytes::from_static(b"a"),
        });
        assert_eq!(img.size(), (0, 0, 0));
        assert_eq!((img.max_seq, img.max_key), (11, 2));
    }

    #[test]
    fn a_retained_message_replaced_before_its_queues_are_known_is_kept_for_them() {
        let mut img = Image::default();
        img.put(session(1));
        img.put(Record::Msg {
            msg: msg("s", 1, None),
            retained: true,
            targets: vec![],
            more: true,
        });
        img.put(Record::Msg {
            msg: msg("s", 2, None),
            retained: true,
            targets: vec![],
            more: false,
        });
        img.put(Record::Queued {
            seq: 1,
            targets: to(&[1]),
        });
        assert_eq!(queued(&img, 1), vec![(1, 0, false)]);
        assert_eq!(img.retained().next().unwrap().0, 2);
        img.put(Record::Acked {
            key: 1,
            seqs: vec![1],
        });
        assert!(img.stored(1).is_none());
        // With no queue at all, the placeholder goes with the Queued record.
        img.put(Record::Msg {
            msg: msg("t", 3, None),
            retained: false,
            targets: vec![],
            more: true,
        });
        img.put(Record::Queued {
            seq: 3,
            targets: vec![],
        });
        assert!(img.stored(3).is_none());
    }

    #[test]
    fn packet_ids_and_qos2_state_follow_the_deliveries() {
        let mut img = Image::default();
        img.put(session(1));
        for seq in [5, 6, 7] {
            img.put(Record::Msg {
                msg: msg("t", seq, None),
                retained: false,
                targets: to(&[1]),
                more: false,
            });
        }
        img.put(Record::Sent {
            key: 1,
            sent: vec![(5, 1), (6, 2)],
        });
        img.put(Record::Released { key: 1, pkid: 2 });
        img.put(Record::Acked {
            key: 1,
            seqs: vec![5],
        });
        img.put(Record::Inbound {
            key: 1,
            pkid: 9,
            held: true,
        });
        img.put(Record::Inbound {
            key: 1,
            pkid: 8,
            held: true,
        });
        img.put(Record::Inbound {
            key: 1,
            pkid: 8,
            held: false,
        });
        assert_eq!(queued(&img, 1), vec![(6, 2, true), (7, 0, false)]);
        assert_eq!(
            img.sessions[&1].inbound.iter().copied().collect::<Vec<_>>(),
            vec![9]
        );
        // Packet id 1 is free again: reused by message 7.
        img.put(Record::Sent {
            key: 1,
            sent: vec![(7, 1)],
        });
        img.put(Record::Released { key: 1, pkid: 1 });
        assert_eq!(queued(&img, 1), vec![(6, 2, true), (7, 1, true)]);
    }

    #[test]
    fn news_that_comes_before_its_message_waits_for_it() {
        let mut img = Image::default();
        img.put(session(1));
        img.put(session(2));
        img.put(Record::Sent {
            key: 1,
            sent: vec![(20, 4)],
        });
        img.put(Record::Acked {
            key: 2,
            seqs: vec![20],
        });
        img.put(Record::Msg {
            msg: msg("t", 20, None),
            retained: false,
            targets: to(&[1, 2]),
            more: false,
        });
        assert_eq!(queued(&img, 1), vec![(20, 4, false)]);
        assert!(img.sessions[&2].queue.is_empty(), "acked before it came");
        assert!(img.early.is_empty());
        // News for a message that never comes is gone after two compactions.
        img.put(Record::Acked {
            key: 2,
            seqs: vec![99],
        });
        img.snapshot();
        assert_eq!(img.early.len(), 1);
        img.snapshot();
        assert!(img.early.is_empty());
    }

    #[test]
    fn a_snapshot_rebuilds_the_same_image() {
        let mut img = Image::default();
        img.put(session(1));
        img.put(session(2));
        img.put(Record::Msg {
            msg: msg("r", 1, None),
            retained: true,
            targets: vec![],
            more: true,
        });
        img.put(Record::Queued {
            seq: 1,
            targets: to(&[2]),
        });
        img.put(Record::Msg {
            msg: msg("q", 2, None),
            retained: false,
            targets: to(&[1, 2]),
            more: false,
        });
        img.put(Record::Sent {
            key: 2,
            sent: vec![(1, 3), (2, 4)],
        });
        img.put(Record::Released { key: 2, pkid: 3 });
        img.put(Record::Inbound {
            key: 1,
            pkid: 77,
            held: true,
        });
        let mut again = Image::default();
        for part in img.snapshot() {
            match part {
                Snap::Rec(r) => again.put(r),
                // The message's number, as the test's `put` placed it.
                Snap::Msg {
                    loc,
                    retained,
                    targets,
                } => again.put(Record::Msg {
                    msg: msg("x", loc.at, None),
                    retained,
                    targets,
                    more: false,
                }),
            }
        }
        for key in [1, 2] {
            assert_eq!(queued(&again, key), queued(&img, key));
            assert_eq!(again.sessions[&key].inbound, img.sessions[&key].inbound);
            assert_eq!(again.sessions[&key].rec, img.sessions[&key].rec);
        }
        assert_eq!(again.size(), img.size());
        assert_eq!(again.retained().next().unwrap().0, 1);
    }
}
