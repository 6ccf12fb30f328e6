//! Acknowledgements that wait for the persistent store.
//!
//! A PUBACK (or PUBREC) tells the publisher it may forget the message: a
//! bridge drops it from its spool. When the message went to a session the
//! store keeps, or changed the retained store, the acknowledgement must not
//! leave before the store has it ([`crate::store::Store::durable`]).
//! Acknowledgements go out in the order their publishes came
//! (MQTT-4.6.0-2), so once one waits, the ones behind it wait too, even
//! those that needed nothing. The session goes on reading meanwhile: many
//! publishes share one write and one fsync (group commit).

use std::collections::VecDeque;

use bytes::BytesMut;
use rumqttd::protocol::Packet;

use super::Session;

/// Encoded acknowledgements, each with the store ticket it waits for (0:
/// none, only its place in line).
#[derive(Debug, Default)]
pub(super) struct Held {
    acks: VecDeque<(u64, BytesMut)>,
}

impl Session {
    /// Sends `ack` for a publish whose store record has `ticket`: now, when
    /// nothing waits and the store has it (or it needed none); else in line.
    pub(super) fn ack(&mut self, ticket: Option<u64>, ack: Packet, out: &mut BytesMut) {
        let store = self.shared.store.as_ref().filter(|s| s.holds_acks());
        let wait = match (ticket, store) {
            (Some(t), Some(s)) => t > s.durable_now(),
            _ => false,
        };
        if !wait && self.held.is_none() {
            self.send(ack, out);
            return;
        }
        let mut b = BytesMut::new();
        self.send(ack, &mut b);
        let t = if wait { ticket.unwrap_or(0) } else { 0 };
        self.held
            .get_or_insert_with(Default::default)
            .acks
            .push_back((t, b));
    }

    /// The ticket the first waiting acknowledgement needs, if one waits.
    pub(super) fn held_front(&self) -> Option<u64> {
        self.held.as_ref()?.acks.front().map(|(t, _)| *t)
    }

    /// The highest ticket any waiting acknowledgement needs.
    pub(super) fn held_last(&self) -> Option<u64> {
        self.held.as_ref()?.acks.iter().map(|(t, _)| *t).max()
    }

    /// Moves the acknowledgements whose records are durable (`durable`:
    /// the store's watermark) into `out`, in order.
    pub(super) fn release_held(&mut self, durable: u64, out: &mut BytesMut) {
        let Some(h) = self.held.as_mut() else { return };
        while let Some((t, _)) = h.acks.front() {
            if *t > durable {
                return;
            }
            if let Some((_, b)) = h.acks.pop_front() {
                out.extend_from_slice(&b);
            }
        }
        self.held = None;
    }
}
