//! A session's outbound queue, shared by the router and the session task.
//!
//! The router pushes deliveries in from the publisher's task; the session
//! task takes them out and writes them to its client. This queue is the only
//! place in the broker where an accepted message can be dropped, and only by
//! its documented policy: when it holds `max_queued_messages` or
//! `max_queued_bytes`, the oldest delivery goes and is counted
//! (`queue_full`), one count per message; a QoS 0 message for an offline
//! persistent session is not queued (`offline_qos0`).
//!
//! It also carries the publisher pushback: a delivery into a queue that is
//! three quarters full, for a reader that is keeping up (its socket takes
//! bytes, it acknowledges QoS 1, it progressed in the last [`STALL`]), tells
//! the publisher to wait until the queue has drained to half
//! ([`Outbox::wait_for_space`]). A slow reader (socket full, or no progress
//! for [`STALL`]) never makes publishers wait: its own queue absorbs, then
//! drops.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::auth::{Policy, Who};
use crate::message::Message;
use crate::stats::{Reason, Stats};

/// A reader with work queued that wrote nothing and acknowledged nothing
/// for this long is slow: publishers stop waiting for it.
pub const STALL: Duration = Duration::from_millis(100);

/// Milliseconds since the first call, for progress stamps.
fn now_ms() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: Arc<Message>,
    /// min(published QoS, granted QoS).
    pub qos: u8,
    /// Retain flag to send: set for retained messages sent on subscribe and,
    /// live, only with retain-as-published.
    pub retain: bool,
    /// MQTT 5 subscription identifier of the matching subscription (0: none).
    pub sub_id: u32,
}

/// What the router must know of the session to check a read against the ACL.
#[derive(Debug, Clone, Default)]
pub struct Reader {
    pub client_id: String,
    pub user: Option<String>,
    /// The ACL lets this client read every topic: no per-message check.
    pub reads_everything: bool,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Delivery>,
    bytes: usize,
    online: bool,
    /// The client's socket took less than was offered on the last write.
    blocked: bool,
    reader: Reader,
}

/// The queue, its limits and its wake-ups.
#[derive(Debug)]
pub struct Outbox {
    /// The session's key in the router's subscription table.
    pub key: u64,
    state: Mutex<State>,
    /// Wakes the session task when something was queued.
    ready: Notify,
    /// Wakes publishers waiting for this queue to drain.
    space: Notify,
    /// A publisher is (or may be) waiting on `space`.
    waited_on: AtomicBool,
    /// When the reader last moved data ([`now_ms`]), or was given work.
    progress_ms: AtomicU64,
    max_messages: usize,
    max_bytes: usize,
    stats: Arc<Stats>,
}

/// Outcome of [`Outbox::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued, and the queue is filling faster than a live reader takes it:
    /// the publisher should wait ([`Outbox::wait_for_space`]).
    Pressure,
    /// Not queued (offline QoS 0, ACL, or no room at all); counted.
    Dropped,
}

impl Outbox {
    /// An empty queue. Nothing is allocated until something is queued.
    pub fn new(key: u64, max_messages: usize, max_bytes: usize, stats: Arc<Stats>) -> Outbox {
        Outbox {
            key,
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            space: Notify::new(),
            waited_on: AtomicBool::new(false),
            progress_ms: AtomicU64::new(0),
            max_messages,
            max_bytes,
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets who reads from this queue (on connect and on resume).
    pub fn set_reader(&self, reader: Reader) {
        self.lock().reader = reader;
    }

    /// Marks the client connected or gone. Offline queues keep QoS >= 1 only.
    pub fn set_online(&self, online: bool) {
        self.lock().online = online;
        self.wake_publishers();
    }

    /// Records whether the client's socket is full. A blocked reader is a
    /// slow one: publishers stop waiting for it.
    pub fn set_blocked(&self, blocked: bool) {
        let mut s = self.lock();
        if s.blocked != blocked {
            s.blocked = blocked;
            drop(s);
            if blocked {
                self.wake_publishers();
            }
        }
    }

    /// The reader wrote to its socket or acknowledged a message.
    pub fn progressed(&self) {
        self.progress_ms.store(now_ms(), Relaxed);
    }

    fn stalled(&self) -> bool {
        now_ms().saturating_sub(self.progress_ms.load(Relaxed)) > STALL.as_millis() as u64
    }

    fn high(&self, s: &State) -> bool {
        s.items.len() * 4 >= self.max_messages * 3 || s.bytes * 4 >= self.max_bytes * 3
    }

    fn low(&self, s: &State) -> bool {
        s.items.len() * 2 <= self.max_messages && s.bytes * 2 <= self.max_bytes
    }

    /// Queues one delivery, applying the drop policy. `policy` is the ACL
    /// in force, checked only for readers that may not read everything.
    pub fn push(&self, d: Delivery, policy: &Policy) -> Pushed {
        let mut s = self.lock();
        if !s.reader.reads_everything {
            let who = Who {
                user: s.reader.user.as_deref(),
                client_id: &s.reader.client_id,
            };
            if !policy.may_read(who, d.msg.topic_str()) {
                self.stats.count(Reason::AclRead);
                return Pushed::Dropped;
            }
        }
        if !s.online && d.qos == 0 {
            self.stats.count(Reason::OfflineQos0);
            return Pushed::Dropped;
        }
        if self.max_messages == 0 {
            self.stats.count(Reason::QueueFull);
            return Pushed::Dropped;
        }
        let w = d.msg.weight();
        while !s.items.is_empty()
            && (s.items.len() >= self.max_messages || s.bytes + w > self.max_bytes)
        {
            if let Some(old) = s.items.pop_front() {
                s.bytes -= old.msg.weight();
                self.stats.count(Reason::QueueFull);
            }
        }
        s.bytes += w;
        s.items.push_back(d);
        let first = s.items.len() == 1;
        if first {
            // Work starts now: the reader has `STALL` to show progress.
            self.progressed();
        }
        let pressure = s.online && !s.blocked && self.high(&s) && !self.stalled();
        drop(s);
        if first || pressure {
            self.ready.notify_one();
        }
        if pressure {
            self.waited_on.store(true, Relaxed);
            Pushed::Pressure
        } else {
            Pushed::Queued
        }
    }

    /// Waits until the session has something queued.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Moves up to `max` deliveries into `into`, stopping early (without
    /// taking it) at a QoS >= 1 delivery when `qos_room` is zero; each QoS
    /// >= 1 delivery taken uses one unit of `qos_room`.
    pub fn take(&self, into: &mut VecDeque<Delivery>, max: usize, mut qos_room: usize) {
        let mut s = self.lock();
        for _ in 0..max {
            let Some(front) = s.items.front() else { break };
            if front.qos > 0 {
                if qos_room == 0 {
                    break;
                }
                qos_room -= 1;
            }
            let Some(d) = s.items.pop_front() else { break };
            s.bytes -= d.msg.weight();
            into.push_back(d);
        }
        if s.items.is_empty() && s.items.capacity() > 64 {
            s.items = VecDeque::new();
        }
        let low = self.low(&s);
        drop(s);
        if low {
            self.wake_publishers();
        }
    }

    /// Deliveries waiting.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops everything queued (the session ended); returns how many.
    pub fn clear(&self) -> usize {
        let mut s = self.lock();
        let n = s.items.len();
        s.items = VecDeque::new();
        s.bytes = 0;
        drop(s);
        self.wake_publishers();
        n
    }

    fn wake_publishers(&self) {
        if self.waited_on.swap(false, Relaxed) {
            self.space.notify_waiters();
        }
    }

    /// Pushback: returns once this queue has drained to half, its reader
    /// went offline or turned slow, or `until` passed.
    pub async fn wait_for_space(&self, until: Instant) {
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waited_on.store(true, Relaxed);
            {
                let s = self.lock();
                if !s.online || s.blocked || self.low(&s) || self.stalled() {
                    return;
                }
            }
            // Look again when the reader would count as stalled.
            let check = Instant::now() + STALL;
            if tokio::time::timeout_at(until.min(check), notified)
                .await
                .is_err()
                && Instant::now() >= until
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn d(qos: u8) -> Delivery {
        Delivery {
            msg: Message::new(
                Bytes::from_static(b"t"),
                Bytes::from_static(b"123456789"),
                qos,
                false,
                None,
                0,
            ),
            qos,
            retain: false,
            sub_id: 0,
        }
    }

    fn outbox(max: usize) -> Outbox {
        let o = Outbox::new(1, max, 1 << 20, Arc::new(Stats::default()));
        o.set_reader(Reader {
            reads_everything: true,
            ..Default::default()
        });
        o
    }

    fn policy() -> Policy {
        Policy::load(&crate::config::AuthConfig::default()).unwrap()
    }

    #[test]
    fn full_queue_drops_oldest_and_counts_each() {
        let o = outbox(4);
        o.set_online(true);
        o.set_blocked(true);
        let p = policy();
        for _ in 0..10 {
            assert_ne!(o.push(d(1), &p), Pushed::Dropped);
        }
        assert_eq!(o.len(), 4);
        assert_eq!(o.stats.dropped(Reason::QueueFull), 6);
    }

    #[test]
    fn offline_drops_qos0_only() {
        let o = outbox(10);
        let p = policy();
        assert_eq!(o.push(d(0), &p), Pushed::Dropped);
        assert_eq!(o.push(d(1), &p), Pushed::Queued);
        assert_eq!(o.stats.dropped(Reason::OfflineQos0), 1);
    }

    #[test]
    fn pressure_only_for_live_readers() {
        let o = outbox(8);
        o.set_online(true);
        let p = policy();
        let got: Vec<Pushed> = (0..6).map(|_| o.push(d(0), &p)).collect();
        assert_eq!(got[4], Pushed::Queued);
        assert_eq!(got[5], Pushed::Pressure, "6 of 8 is three quarters");
        o.set_blocked(true);
        assert_eq!(
            o.push(d(0), &p),
            Pushed::Queued,
            "a slow reader never holds publishers"
        );
    }

    #[test]
    fn take_respects_the_qos_window() {
        let o = outbox(10);
        o.set_online(true);
        let p = policy();
        for q in [0, 1, 1, 0] {
            o.push(d(q), &p);
        }
        let mut got = VecDeque::new();
        o.take(&mut got, 10, 1);
        assert_eq!(got.len(), 2, "stops before the second QoS 1");
        o.take(&mut got, 10, 5);
        assert_eq!(got.len(), 4);
        assert!(o.is_empty());
    }
}
