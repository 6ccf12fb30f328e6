//! A session's outbound queue, shared by the router and the session task.
//!
//! The router pushes deliveries in from the publisher's task; the session
//! task takes them out and writes them to its client. This queue is the only
//! place in the broker where an accepted message can be dropped, and only by
//! its documented policy: when it holds `max_queued_messages` or
//! `max_queued_bytes`, what arrives is not queued and is counted
//! (`queue_full`), one count per message, as mosquitto does: the reader
//! keeps what it was owed first, in order, and a queue that stays full (a
//! reader slow on purpose) costs a publish one atomic load, not a lock
//! ([`Outbox::full`]); a QoS 0 message for an offline persistent session is
//! not queued (`offline_qos0`).
//!
//! With `--persistence`, a persistent session's queue lives on disk as
//! well. While its client is away, only [`Store::queue_memory`] bytes of
//! it stay in memory; what arrives beyond them (and, at the global
//! budget, what it held) is kept as a [`Paged`] stub — the message's
//! number and how to deliver it, a few dozen bytes — and read back from
//! the store in batches when the client returns, in order. Many offline
//! readers cost disk, not memory; the queue is still bounded by
//! `max_queued_messages` and `max_queued_bytes`.
//!
//! It also carries the publisher pushback, for the few readers allowed it:
//! a delivery into a queue that is three quarters full, for a reader whose
//! user the operator listed in `pushback_users` and that is keeping up (its
//! socket takes bytes, it acknowledges QoS 1, it progressed in the last
//! [`STALL`]), tells the publisher to wait until the queue has drained to
//! half ([`Outbox::wait_for_space`]; the publisher's session bounds the
//! wait by its per-second budget). Every other reader — anonymous, or any
//! user not listed, however it behaves — never makes publishers wait: its
//! own queue absorbs, then drops, counted per message.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::auth::{Policy, Who};
use crate::message::Message;
use crate::stats::{Reason, Stats};
use crate::store::{Loaded, Record, Store};

/// A resumed queue reads its stubs back when fewer than this many
/// deliveries wait in memory...
const PAGE_LOW: usize = 256;
/// ...this many at a time, or this many bytes.
const PAGE_BATCH: usize = 512;
const PAGE_BATCH_BYTES: usize = 1 << 20;

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

/// The MQTT 5 subscription identifiers one delivery carries: usually one
/// (0: none); all of them when overlapping subscriptions with their own
/// identifiers matched (one copy, every identifier: MQTT-3.3.4-3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubIds {
    One(u32),
    Many(Arc<[u32]>),
}

impl SubIds {
    pub fn as_slice(&self) -> &[u32] {
        match self {
            SubIds::One(0) => &[],
            SubIds::One(i) => std::slice::from_ref(i),
            SubIds::Many(v) => v,
        }
    }
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
    /// MQTT 5 subscription identifiers of the matching subscriptions.
    pub sub_ids: SubIds,
}

/// What the router must know of the session to check a read against the ACL.
#[derive(Debug, Clone, Default)]
pub struct Reader {
    pub client_id: String,
    pub user: Option<String>,
    /// The ACL lets this client read every topic: no per-message check.
    pub reads_everything: bool,
    /// The [`Policy::generation`] `reads_everything` was computed under: a
    /// reload (SIGHUP) makes the next push compute it again.
    pub policy_gen: u64,
    /// The operator lets this reader hold publishers back (`pushback_users`).
    pub holds_publishers: bool,
}

/// A delivery whose message is on disk only (see the module documentation).
#[derive(Debug, Clone)]
pub(crate) struct Paged {
    pub seq: u64,
    pub weight: u32,
    pub qos: u8,
    pub retain: bool,
    pub sub_ids: SubIds,
}

impl Paged {
    fn of(d: &Delivery) -> Paged {
        Paged {
            seq: d.msg.seq(),
            weight: d.msg.weight() as u32,
            qos: d.qos,
            retain: d.retain,
            sub_ids: d.sub_ids.clone(),
        }
    }

    fn delivery(self, msg: Arc<Message>) -> Delivery {
        Delivery {
            msg,
            qos: self.qos,
            retain: self.retain,
            sub_ids: self.sub_ids,
        }
    }
}

/// The store keeps this delivery, so it may be paged out of memory.
fn pageable(d: &Delivery) -> bool {
    d.qos > 0 && d.msg.seq() != 0
}

#[derive(Debug, Default)]
struct State {
    /// In memory, oldest first; then `loading`, then `paged`.
    items: VecDeque<Delivery>,
    /// Bytes of `items`: what the global budget counts.
    bytes: usize,
    /// On disk only, after `items` and `loading`.
    paged: VecDeque<Paged>,
    /// Being read back from the store (see [`Outbox::loaded`]).
    loading: Vec<Paged>,
    /// Bytes of `paged` and `loading`.
    paged_bytes: usize,
    /// Tells a read-back that comes after [`Outbox::clear`] that it is void.
    load_gen: u64,
    online: bool,
    reader: Reader,
    /// The persistent store keeps this queue: what the budget evicts is
    /// written off there, and what is paged out is read back from it.
    store: Option<Store>,
}

impl State {
    /// Deliveries waiting, wherever they are.
    fn count(&self) -> usize {
        self.items.len() + self.loading.len() + self.paged.len()
    }

    /// Their bytes, wherever they are.
    fn total_bytes(&self) -> usize {
        self.bytes + self.paged_bytes
    }
}

/// The broker-wide budget for queued bytes (`max_queued_bytes_total`).
///
/// Offline persistent sessions can each hold up to `max_queued_bytes`; with
/// many of them that adds up. Payloads are shared between queues, but the
/// budget counts each queue's view (topic + payload per queued message), so
/// it bounds what readers may be owed in memory. Over it, the largest
/// *offline* queue gives first: one the store keeps pages what it holds out
/// to disk (nothing lost); any other loses its oldest messages, each
/// counted (`queued_bytes_total`), until the total is back under nine
/// tenths of the budget.
#[derive(Debug)]
pub struct Budget {
    max: usize,
    offline: Mutex<std::collections::HashMap<u64, std::sync::Weak<Outbox>>>,
    stats: Arc<Stats>,
}

impl Budget {
    pub fn new(max: usize, stats: Arc<Stats>) -> Arc<Budget> {
        Arc::new(Budget {
            max,
            offline: Mutex::new(Default::default()),
            stats,
        })
    }

    /// Applies a net change in queued bytes (a whole fan-out at once, so
    /// the shared counter is touched once per publish, not per delivery)
    /// and enforces the budget.
    pub fn settle(&self, net: i64) {
        if net == 0 {
            return;
        }
        let total = self.stats.queued_bytes.fetch_add(net, Relaxed) + net;
        if net > 0 && total > self.max as i64 {
            self.evict();
        }
    }

    fn sub(&self, n: usize) {
        if n > 0 {
            self.stats.queued_bytes.fetch_sub(n as i64, Relaxed);
        }
    }

    fn offline(&self) -> MutexGuard<'_, std::collections::HashMap<u64, std::sync::Weak<Outbox>>> {
        self.offline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A persistent session's client left: its queue may be cut for the budget.
    pub fn park(&self, o: &Arc<Outbox>) {
        self.offline().insert(o.key, Arc::downgrade(o));
    }

    /// The client is back, or the session ended.
    pub fn unpark(&self, key: u64) {
        self.offline().remove(&key);
    }

    fn evict(&self) {
        let target = (self.max / 10 * 9) as i64;
        let offline: Vec<Arc<Outbox>> = self
            .offline()
            .values()
            .filter_map(|w| w.upgrade())
            .collect();
        while self.stats.queued_bytes.load(Relaxed) > target {
            let Some(largest) = offline.iter().max_by_key(|o| o.bytes()) else {
                return;
            };
            match largest.shed() {
                Shed::Paged => {}
                Shed::Dropped => self.stats.count(Reason::QueuedBytesTotal),
                Shed::Nothing => return,
            }
        }
    }
}

/// How a queue made room for the global budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shed {
    /// Moved what it held to disk only.
    Paged,
    /// Dropped its oldest message.
    Dropped,
    /// Had nothing to give.
    Nothing,
}

/// What a fan-out changed in the shared counters, settled once at its end.
#[derive(Debug, Default)]
pub struct Tally {
    /// Net change in queued bytes.
    pub bytes: i64,
    /// Deliveries that pushed an older one out of a full queue.
    pub full: u64,
}

impl Tally {
    /// Applies it: the global byte budget, and the `queue_full` count.
    pub fn settle(self, budget: &Budget) {
        budget.stats.count_n(Reason::QueueFull, self.full);
        budget.settle(self.bytes);
    }
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
    /// The client's socket took less than was offered on the last write
    /// (set on every write, so an atomic rather than under the lock).
    blocked: AtomicBool,
    /// When the reader last moved data ([`now_ms`]), or was given work.
    progress_ms: AtomicU64,
    /// The session holds more than one subscription in the router, so one
    /// publish may match it twice (the router merges those).
    overlapping: AtomicBool,
    /// The queue is at its limit: the router drops what arrives without
    /// taking the lock (set under the lock, cleared when room is made).
    full: AtomicBool,
    /// The persistent store keeps this queue (a persistent session with
    /// `--persistence`): the router tells the store what it queued here.
    durable: AtomicBool,
    max_messages: usize,
    max_bytes: usize,
    stats: Arc<Stats>,
    budget: Arc<Budget>,
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
    pub fn new(key: u64, max_messages: usize, max_bytes: usize, budget: Arc<Budget>) -> Outbox {
        let stats = budget.stats.clone();
        Outbox {
            key,
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            space: Notify::new(),
            waited_on: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            progress_ms: AtomicU64::new(0),
            overlapping: AtomicBool::new(false),
            full: AtomicBool::new(false),
            durable: AtomicBool::new(false),
            max_messages,
            max_bytes,
            stats,
            budget,
        }
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Makes room for the global budget (see [`Budget`]).
    fn shed(&self) -> Shed {
        let mut s = self.lock();
        if self.page_out(&mut s, 0) > 0 {
            return Shed::Paged;
        }
        let Some(old) = s.items.pop_front() else {
            return Shed::Nothing;
        };
        let w = old.msg.weight();
        s.bytes -= w;
        self.full.store(false, Relaxed);
        let write_off = s
            .store
            .clone()
            .filter(|_| old.qos > 0 && old.msg.seq() != 0);
        drop(s);
        if let Some(store) = write_off {
            store.submit(Record::Acked {
                key: self.key,
                seqs: vec![old.msg.seq()],
            });
        }
        self.budget.sub(w);
        Shed::Dropped
    }

    /// Moves deliveries from the back of the memory part to the front of
    /// the disk part until at most `keep` bytes stay in memory (a queue the
    /// store keeps, while no read-back is under way: that would put them
    /// out of order). Returns the bytes freed, taken off the budget.
    fn page_out(&self, s: &mut State, keep: usize) -> usize {
        if s.store.is_none() || !s.loading.is_empty() {
            return 0;
        }
        let (mut freed, mut n) = (0, 0i64);
        while s.bytes > keep {
            match s.items.back() {
                Some(d) if pageable(d) => {}
                _ => break,
            }
            let Some(d) = s.items.pop_back() else { break };
            let w = d.msg.weight();
            s.bytes -= w;
            s.paged_bytes += w;
            s.paged.push_front(Paged::of(&d));
            freed += w;
            n += 1;
        }
        if n > 0 {
            self.stats.store.paged.fetch_add(n, Relaxed);
            self.budget.sub(freed);
        }
        freed
    }

    /// Reads the next stubs back, if the memory part runs low and no
    /// read-back is under way (the client is connected).
    fn page_in(self: &Arc<Self>, s: &mut State) {
        if !s.online || !s.loading.is_empty() || s.paged.is_empty() || s.items.len() >= PAGE_LOW {
            return;
        }
        let Some(store) = s.store.clone() else { return };
        let mut bytes = 0;
        while let Some(p) = s.paged.front() {
            if s.loading.len() >= PAGE_BATCH
                || (bytes > 0 && bytes + p.weight as usize > PAGE_BATCH_BYTES)
            {
                break;
            }
            bytes += p.weight as usize;
            let Some(p) = s.paged.pop_front() else { break };
            s.loading.push(p);
        }
        s.load_gen += 1;
        let gen = s.load_gen;
        let seqs = s.loading.iter().map(|p| p.seq).collect();
        let me = Arc::downgrade(self);
        store.load(seqs, move |msgs| {
            if let Some(o) = me.upgrade() {
                o.loaded(gen, msgs);
            }
        });
    }

    /// The store read stubs back (on its thread): they join the memory
    /// part, in order, and the session is woken. A message the store could
    /// not give back (counted there) is written off. If the client left
    /// again meanwhile, they stay on disk.
    fn loaded(&self, gen: u64, msgs: Loaded) {
        let mut s = self.lock();
        if s.load_gen != gen || s.loading.is_empty() {
            return;
        }
        let stubs = std::mem::take(&mut s.loading);
        if !s.online {
            for p in stubs.into_iter().rev() {
                s.paged.push_front(p);
            }
            let keep = s.store.as_ref().map_or(0, |st| st.queue_memory());
            self.page_out(&mut s, keep);
            return;
        }
        let (mut added, mut lost) = (0, Vec::new());
        let n = stubs.len() as i64;
        for (p, m) in stubs
            .into_iter()
            .zip(msgs.into_iter().chain(std::iter::repeat(None)))
        {
            s.paged_bytes -= p.weight as usize;
            match m {
                Some(msg) => {
                    added += msg.weight();
                    s.items.push_back(p.delivery(msg));
                }
                None => lost.push(p.seq),
            }
        }
        s.bytes += added;
        let store = s.store.clone();
        drop(s);
        self.stats.store.paged.fetch_sub(n, Relaxed);
        if let (Some(store), false) = (store, lost.is_empty()) {
            store.submit(Record::Acked {
                key: self.key,
                seqs: lost,
            });
        }
        self.budget.settle(added as i64);
        self.ready.notify_one();
    }

    /// Lets the persistent store keep this queue (`Some`), or not.
    pub(crate) fn set_durable(&self, store: Option<Store>) {
        let mut s = self.lock();
        self.durable.store(store.is_some(), Relaxed);
        s.store = store;
    }

    /// The persistent store keeps this queue.
    pub fn durable(&self) -> bool {
        self.durable.load(Relaxed)
    }

    /// Puts deliveries read back from the store at the end of the queue,
    /// then those left on disk (at start, before any client), outside the
    /// limits: they were within them when queued.
    pub(crate) fn restore(&self, ds: impl IntoIterator<Item = Delivery>, paged: Vec<Paged>) {
        let mut s = self.lock();
        let mut added = 0;
        for d in ds {
            added += d.msg.weight();
            s.items.push_back(d);
        }
        s.bytes += added;
        self.stats
            .store
            .paged
            .fetch_add(paged.len() as i64, Relaxed);
        s.paged_bytes += paged.iter().map(|p| p.weight as usize).sum::<usize>();
        s.paged.extend(paged);
        drop(s);
        self.budget.settle(added as i64);
    }

    /// At its limit: what arrives now is dropped (see [`Outbox::push_unsettled`]).
    pub fn full(&self) -> bool {
        self.full.load(Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets who reads from this queue (on connect and on resume).
    pub fn set_reader(&self, reader: Reader) {
        self.lock().reader = reader;
    }

    /// Marks the client connected or gone. Offline queues keep QoS >= 1
    /// only, and (kept by the store) at most its `queue_memory` in memory.
    pub fn set_online(&self, online: bool) {
        let mut s = self.lock();
        s.online = online;
        if !online {
            let keep = s.store.as_ref().map_or(0, |st| st.queue_memory());
            self.page_out(&mut s, keep);
        }
        drop(s);
        self.wake_publishers();
    }

    /// Records whether the client's socket is full. A blocked reader is a
    /// slow one: publishers stop waiting for it.
    pub fn set_blocked(&self, blocked: bool) {
        if self.blocked.swap(blocked, Relaxed) != blocked && blocked {
            self.wake_publishers();
        }
    }

    /// Records how many router subscriptions the session holds.
    pub fn set_subscriptions(&self, n: usize) {
        self.overlapping.store(n > 1, Relaxed);
    }

    /// More than one subscription: a publish may match this session twice.
    pub fn overlapping(&self) -> bool {
        self.overlapping.load(Relaxed)
    }

    /// The reader wrote to its socket or acknowledged a message.
    pub fn progressed(&self) {
        self.progress_ms.store(now_ms(), Relaxed);
    }

    fn stalled(&self) -> bool {
        now_ms().saturating_sub(self.progress_ms.load(Relaxed)) > STALL.as_millis() as u64
    }

    fn high(&self, s: &State) -> bool {
        s.count() * 4 >= self.max_messages * 3 || s.total_bytes() * 4 >= self.max_bytes * 3
    }

    fn low(&self, s: &State) -> bool {
        s.count() * 2 <= self.max_messages && s.total_bytes() * 2 <= self.max_bytes
    }

    #[cfg(test)]
    /// Queues one delivery, applying the drop policy. `policy` is the ACL
    /// in force, checked only for readers that may not read everything.
    pub(crate) fn push(&self, d: Delivery, policy: &Policy) -> Pushed {
        let mut tally = Tally::default();
        let pushed = self.push_unsettled(d, policy, &mut tally);
        tally.settle(&self.budget);
        pushed
    }

    /// [`Outbox::push`] that adds its change in queued bytes and its
    /// `queue_full` drops to `tally`, for the caller to settle once (the
    /// router, once per publish: shared counters are touched once per
    /// fan-out, not once per delivery).
    pub fn push_unsettled(&self, d: Delivery, policy: &Policy, tally: &mut Tally) -> Pushed {
        let mut s = self.lock();
        if s.reader.policy_gen != policy.generation() {
            // The ACL was reloaded since this reader's shortcut was decided.
            let who = Who {
                user: s.reader.user.as_deref(),
                client_id: &s.reader.client_id,
            };
            let all = policy.reads_everything(who);
            s.reader.reads_everything = all;
            s.reader.policy_gen = policy.generation();
        }
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
            tally.full += 1;
            return Pushed::Dropped;
        }
        let w = d.msg.weight();
        let n = s.count();
        if n > 0 && (n >= self.max_messages || s.total_bytes() + w > self.max_bytes) {
            // Full: the new one is not queued (what is queued goes first).
            self.full.store(true, Relaxed);
            tally.full += 1;
            return Pushed::Dropped;
        }
        if let Some(store) = s.store.as_ref().filter(|_| pageable(&d)) {
            let behind = !s.paged.is_empty() || !s.loading.is_empty();
            if behind || (!s.online && s.bytes + w > store.queue_memory()) {
                // On disk only, behind what already is (order).
                s.paged_bytes += w;
                s.paged.push_back(Paged::of(&d));
                if n + 1 >= self.max_messages || s.total_bytes() >= self.max_bytes {
                    self.full.store(true, Relaxed);
                }
                let wake = s.online && s.loading.is_empty();
                drop(s);
                self.stats.store.paged.fetch_add(1, Relaxed);
                if wake {
                    self.ready.notify_one();
                }
                return Pushed::Queued;
            }
        }
        s.bytes += w;
        s.items.push_back(d);
        if s.count() >= self.max_messages || s.total_bytes() >= self.max_bytes {
            self.full.store(true, Relaxed);
        }
        let first = s.items.len() == 1;
        if first {
            // Work starts now: the reader has `STALL` to show progress.
            self.progressed();
        }
        let pressure = s.reader.holds_publishers
            && s.online
            && !self.blocked.load(Relaxed)
            && self.high(&s)
            && !self.stalled();
        drop(s);
        tally.bytes += w as i64;
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
    /// taking it) at a QoS 1 or 2 delivery when `qos_room` is zero; each
    /// QoS 1 or 2 delivery taken uses one unit of `qos_room`. Starts reading the
    /// next paged-out deliveries back when few are left in memory (the
    /// session is woken when they are in).
    pub fn take(self: &Arc<Self>, into: &mut VecDeque<Delivery>, max: usize, mut qos_room: usize) {
        let mut taken = 0;
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
            taken += d.msg.weight();
            into.push_back(d);
        }
        if s.items.is_empty() && s.items.capacity() > 64 {
            s.items = VecDeque::new();
        }
        if taken > 0 {
            self.full.store(false, Relaxed);
        }
        self.page_in(&mut s);
        let low = self.low(&s);
        drop(s);
        self.budget.sub(taken);
        if low {
            self.wake_publishers();
        }
    }

    #[cfg(test)]
    /// Deliveries waiting (in memory or on disk).
    pub(crate) fn len(&self) -> usize {
        self.lock().count()
    }

    #[cfg(test)]
    /// True when nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops everything queued (the session ended); returns how many.
    pub fn clear(&self) -> usize {
        let mut s = self.lock();
        let n = s.count();
        let on_disk = (s.paged.len() + s.loading.len()) as i64;
        s.items = VecDeque::new();
        s.paged = VecDeque::new();
        s.loading = Vec::new();
        s.paged_bytes = 0;
        s.load_gen += 1;
        let bytes = std::mem::take(&mut s.bytes);
        self.full.store(false, Relaxed);
        drop(s);
        self.stats.store.paged.fetch_sub(on_disk, Relaxed);
        self.budget.sub(bytes);
        self.budget.unpark(self.key);
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
                if !s.online || self.blocked.load(Relaxed) || self.low(&s) || self.stalled() {
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

/// A queue that goes away gives back what it still counted in the global
/// budget and leaves the budget's offline list, however its session ended.
impl Drop for Outbox {
    fn drop(&mut self) {
        let s = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let bytes = std::mem::take(&mut s.bytes);
        let on_disk = (s.paged.len() + s.loading.len()) as i64;
        self.stats.store.paged.fetch_sub(on_disk, Relaxed);
        self.budget.sub(bytes);
        self.budget.unpark(self.key);
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
            sub_ids: SubIds::One(0),
        }
    }

    fn outbox(max: usize) -> Arc<Outbox> {
        let budget = Budget::new(usize::MAX / 2, Arc::new(Stats::default()));
        let o = Arc::new(Outbox::new(1, max, 1 << 20, budget));
        o.set_reader(Reader {
            reads_everything: true,
            holds_publishers: true,
            ..Default::default()
        });
        o
    }

    fn policy() -> Policy {
        Policy::load(&crate::config::AuthConfig::default()).unwrap()
    }

    #[test]
    fn a_full_queue_keeps_what_it_holds_and_counts_each_drop() {
        let o = outbox(4);
        o.set_online(true);
        o.set_blocked(true);
        let p = policy();
        let got: Vec<Pushed> = (0..10).map(|_| o.push(d(1), &p)).collect();
        assert!(got[..4].iter().all(|g| *g == Pushed::Queued), "{got:?}");
        assert!(got[4..].iter().all(|g| *g == Pushed::Dropped), "{got:?}");
        assert!(o.full(), "the router may skip it without the lock");
        assert_eq!(o.len(), 4);
        assert_eq!(o.stats.dropped(Reason::QueueFull), 6);
        let mut taken = VecDeque::new();
        o.take(&mut taken, 1, 10);
        assert!(!o.full(), "room again");
        assert_eq!(o.push(d(1), &p), Pushed::Queued);
    }

    #[test]
    fn a_dropped_queue_gives_its_bytes_back_and_leaves_the_offline_list() {
        let o = outbox(10);
        let stats = o.stats.clone();
        let budget = o.budget.clone();
        let p = policy();
        o.push(d(1), &p);
        o.push(d(1), &p);
        budget.park(&o);
        assert_eq!(stats.queued_bytes.load(Relaxed), 20);
        drop(o);
        assert_eq!(stats.queued_bytes.load(Relaxed), 0);
        assert!(budget.offline().is_empty());
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
    fn only_readers_the_operator_lists_hold_publishers() {
        let o = outbox(8);
        o.set_reader(Reader {
            reads_everything: true,
            holds_publishers: false,
            ..Default::default()
        });
        o.set_online(true);
        let p = policy();
        let got: Vec<Pushed> = (0..8).map(|_| o.push(d(0), &p)).collect();
        assert!(
            got.iter().all(|g| *g == Pushed::Queued),
            "a reader not in pushback_users only fills its own queue: {got:?}"
        );
        assert_eq!(o.push(d(0), &p), Pushed::Dropped);
        assert_eq!(o.stats.dropped(Reason::QueueFull), 1, "then drops, counted");
    }

    #[test]
    fn a_reload_decides_reads_everything_again() {
        let dir = tempfile::tempdir().unwrap();
        let acl = dir.path().join("acl");
        std::fs::write(&acl, "topic read #\n").unwrap();
        let cfg = crate::config::AuthConfig {
            acl_file: Some(acl.clone()),
            ..Default::default()
        };
        let auth = crate::auth::Auth::new(cfg).unwrap();
        let o = outbox(8);
        o.set_online(true);
        o.set_reader(Reader {
            reads_everything: true,
            policy_gen: auth.policy().generation(),
            ..Default::default()
        });
        assert_eq!(o.push(d(0), &auth.policy()), Pushed::Queued);
        std::fs::write(&acl, "topic read #\ntopic deny t\n").unwrap();
        auth.reload().unwrap();
        assert_eq!(
            o.push(d(0), &auth.policy()),
            Pushed::Dropped,
            "the old shortcut no longer holds after the reload"
        );
        assert_eq!(o.stats.dropped(Reason::AclRead), 1);
    }

    #[test]
    fn the_global_budget_cuts_the_largest_offline_queue_first() {
        let stats = Arc::new(Stats::default());
        // Each message weighs 10 bytes ("t" + 9); budget 100 bytes.
        let budget = Budget::new(100, stats.clone());
        let mk = |key| Arc::new(Outbox::new(key, 1000, 1 << 20, budget.clone()));
        let (small, large, live) = (mk(1), mk(2), mk(3));
        for o in [&small, &large, &live] {
            o.set_reader(Reader {
                reads_everything: true,
                ..Default::default()
            });
        }
        live.set_online(true);
        budget.park(&small);
        budget.park(&large);
        let p = policy();
        for _ in 0..2 {
            small.push(d(1), &p);
        }
        for _ in 0..6 {
            large.push(d(1), &p);
        }
        assert_eq!(stats.queued_bytes.load(Relaxed), 80);
        for _ in 0..4 {
            live.push(d(0), &p);
        }
        // The third live push makes 110 > 100: the large offline queue goes
        // down to 90; the fourth brings the total to the budget again.
        assert_eq!(stats.queued_bytes.load(Relaxed), 100);
        assert_eq!((small.len(), live.len()), (2, 4), "others untouched");
        assert_eq!(large.len(), 4);
        assert_eq!(stats.dropped(Reason::QueuedBytesTotal), 2);
        let mut got = VecDeque::new();
        live.take(&mut got, 10, 10);
        large.clear();
        small.clear();
        assert_eq!(
            stats.queued_bytes.load(Relaxed),
            0,
            "every byte accounted for"
        );
    }

    /// An offline queue the store keeps holds `queue_memory` bytes in
    /// memory and stubs for the rest; back online, the stubs are read back
    /// in order, in batches, and every byte is accounted for.
    #[test]
    fn an_offline_queue_kept_by_the_store_costs_disk_not_memory() {
        use crate::store::{Fsync, SessionRec, Target};
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        // Each message weighs 10 bytes ("t" + 9): three stay in memory.
        let store = Store::open(dir.path(), Fsync::Never, 30, stats.clone())
            .unwrap()
            .start()
            .unwrap();
        store.submit(Record::Session(Box::new(SessionRec {
            key: 1,
            client_id: "away".into(),
            user: None,
            level: 4,
            expiry_secs: 3600,
            subs: vec![],
            will: None,
            departed_ms: None,
            will_armed: false,
        })));
        let budget = Budget::new(usize::MAX / 2, stats.clone());
        let o = Arc::new(Outbox::new(1, 10_000, 1 << 20, budget));
        o.set_reader(Reader {
            reads_everything: true,
            ..Default::default()
        });
        o.set_durable(Some(store.clone()));
        let p = policy();
        let n = 1000u64;
        let mut sent = Vec::new();
        for _ in 0..n {
            let dl = d(1);
            let seq = store.next_seq();
            dl.msg.seq.store(seq, Relaxed);
            assert_eq!(o.push(dl.clone(), &p), Pushed::Queued);
            // As the router does: the record after the fan-out.
            store.submit(Record::Msg {
                msg: dl.msg,
                retained: false,
                targets: vec![Target {
                    key: 1,
                    qos: 1,
                    retain: false,
                    sub_ids: vec![],
                }],
                more: false,
            });
            sent.push(seq);
        }
        assert_eq!(o.len(), n as usize);
        assert_eq!(
            stats.queued_bytes.load(Relaxed),
            30,
            "memory: three messages"
        );
        assert_eq!(stats.store.paged.load(Relaxed), n as i64 - 3);
        o.set_online(true);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut got = VecDeque::new();
        for _ in 0..100 {
            let ready = o.ready();
            o.take(&mut got, usize::MAX, usize::MAX);
            if got.len() == n as usize {
                break;
            }
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), ready).await })
                .expect("the store reads the next batch back");
        }
        let seqs: Vec<u64> = got.iter().map(|d| d.msg.seq()).collect();
        assert_eq!(seqs, sent, "every message, in order");
        assert!(got.iter().all(|d| &d.msg.payload[..] == b"123456789"));
        assert_eq!(stats.store.paged.load(Relaxed), 0);
        assert_eq!(
            stats.queued_bytes.load(Relaxed),
            0,
            "every byte accounted for"
        );
        assert_eq!(stats.dropped(Reason::StoreDamage), 0);
        store.close();
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
