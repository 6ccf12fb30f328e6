//! The publisher's books: which spooled event went out under which packet
//! id, and whose batch its PUBACK settles. Pure (no I/O): the runtime asks
//! it for a packet id before it writes a PUBLISH, tells it what the broker
//! answered, and it says which event that was.
//!
//! - a packet id is never handed out twice while in flight, and when all
//!   65,535 are in flight [`Ledger::send`] says no instead of looking for
//!   a free one forever;
//! - a PUBLISH that could not be written is taken back ([`Ledger::unsend`]),
//!   so it does not wait for a PUBACK that cannot come;
//! - a new connection forgets what was in flight ([`Ledger::reconnected`]):
//!   the spool sends it again under fresh ids;
//! - a finalizer leaves the books exactly once: delivered on a PUBACK,
//!   rejected on a refusal, failed when its event left the spool unsent or
//!   the bridge stops (dropping a finalizer fails its batch, see
//!   [`crate::ack`]).

use std::collections::HashMap;

use bytes::Bytes;

use crate::ack::Finalizer;

/// Packet ids a connection can have in flight at once (1..=65535).
pub(crate) const MAX_IN_FLIGHT: usize = u16::MAX as usize;

/// A publish waiting for its PUBACK: enough to dead-letter it if refused.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    /// The spool sequence number; 0 for the bridge's own status messages.
    pub(crate) seq: u64,
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
}

/// See the module documentation.
#[derive(Default)]
pub(crate) struct Ledger {
    next_pkid: u16,
    inflight: HashMap<u16, Sent>,
    finalizers: HashMap<u64, Finalizer>,
}

impl Ledger {
    /// Empty books.
    pub(crate) fn new() -> Ledger {
        Ledger {
            next_pkid: 1,
            ..Default::default()
        }
    }

    /// The event spooled as `seq` settles `finalizer`.
    pub(crate) fn track(&mut self, seq: u64, finalizer: Finalizer) {
        self.finalizers.insert(seq, finalizer);
    }

    /// Events before `oldest` left the spool unsent (it was full): their
    /// batches fail, so the upstream keeps them.
    pub(crate) fn dropped_before(&mut self, oldest: u64) {
        self.finalizers.retain(|s, _| *s >= oldest);
    }

    /// A packet id for `sent`, now in flight; `None` when every id is.
    pub(crate) fn send(&mut self, sent: Sent) -> Option<u16> {
        if self.inflight.len() >= MAX_IN_FLIGHT {
            return None;
        }
        // Terminates: fewer than 65,535 of the 65,535 ids are taken.
        loop {
            let p = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if let std::collections::hash_map::Entry::Vacant(e) = self.inflight.entry(p) {
                e.insert(sent);
                return Some(p);
            }
        }
    }

    /// The PUBLISH for `pkid` was never written: it is not in flight.
    pub(crate) fn unsend(&mut self, pkid: u16) -> Option<Sent> {
        self.inflight.remove(&pkid)
    }

    /// The broker answered `pkid`: what was sent under it, if anything.
    pub(crate) fn puback(&mut self, pkid: u16) -> Option<Sent> {
        self.inflight.remove(&pkid)
    }

    /// The broker has event `seq`: its finalizer says so.
    pub(crate) fn delivered(&mut self, seq: u64) {
        if let Some(f) = self.finalizers.remove(&seq) {
            f.delivered();
        }
    }

    /// The broker refused event `seq` for good: its batch is rejected.
    pub(crate) fn rejected(&mut self, seq: u64) {
        if let Some(f) = self.finalizers.remove(&seq) {
            f.rejected();
        }
    }

    /// A new connection: nothing is in flight on it yet.
    pub(crate) fn reconnected(&mut self) {
        self.inflight.clear();
    }

    /// Publishes waiting for a PUBACK.
    pub(crate) fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// The bridge stops: every batch still open fails (its input stays
    /// upstream, to be read again).
    pub(crate) fn fail_all(&mut self) {
        self.finalizers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::{Acks, BatchStatus};

    fn sent(seq: u64) -> Sent {
        Sent {
            seq,
            topic: "t".into(),
            payload: Bytes::new(),
        }
    }

    #[test]
    fn ids_are_unique_in_flight_and_run_out_without_looping() {
        let mut l = Ledger::new();
        let mut seen = std::collections::HashSet::new();
        for seq in 0..MAX_IN_FLIGHT as u64 {
            let id = l.send(sent(seq)).expect("an id while some are free");
            assert_ne!(id, 0);
            assert!(seen.insert(id), "id {id} handed out twice");
        }
        assert_eq!(l.send(sent(70_000)), None, "all 65,535 in flight");
        assert_eq!(l.puback(7).map(|s| s.seq), Some(6));
        assert_eq!(l.send(sent(70_001)), Some(7), "the one freed is found");
        assert_eq!(l.puback(7).map(|s| s.seq), Some(70_001));
        assert!(l.puback(7).is_none(), "a repeated PUBACK settles nothing");
    }

    #[test]
    fn an_unwritten_publish_is_not_in_flight() {
        let mut l = Ledger::new();
        let id = l.send(sent(1)).unwrap();
        assert_eq!(l.in_flight(), 1);
        assert_eq!(l.unsend(id).map(|s| s.seq), Some(1));
        assert_eq!(l.in_flight(), 0);
        l.send(sent(2)).unwrap();
        l.reconnected();
        assert_eq!(l.in_flight(), 0, "a new connection starts empty");
    }

    #[tokio::test]
    async fn each_finalizer_settles_once_by_what_happened() {
        let mut acks = Acks::<&'static str>::new();
        let mut l = Ledger::new();
        for (seq, tag) in [
            (1, "delivered"),
            (2, "rejected"),
            (3, "dropped"),
            (4, "stopped"),
        ] {
            let batch = acks.batch(tag);
            l.track(seq, batch.finalizer());
        }
        l.delivered(1);
        l.rejected(2);
        l.dropped_before(4);
        l.delivered(3);
        l.fail_all();
        l.delivered(4);
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(acks.next().await);
        }
        got.sort_by_key(|(tag, _)| *tag);
        assert_eq!(
            got,
            vec![
                ("delivered", BatchStatus::Delivered),
                ("dropped", BatchStatus::Failed),
                ("rejected", BatchStatus::Rejected),
                ("stopped", BatchStatus::Failed),
            ]
        );
    }
}
