//! The router: who is subscribed to what, which messages are retained, and
//! the fan-out of every accepted publish into the matching sessions' queues.
//!
//! Subscriptions and retained messages live in one tree of topic levels.
//! A publish walks it once (exact level, `+`, `#`), collects the matching
//! subscriptions, merges a session's overlapping ones into one delivery
//! (highest QoS, MQTT-3.3.4-2) and pushes a pointer to the shared
//! [`Message`] into each [`Outbox`], in the publisher's own task. There is
//! no log between publisher and subscriber that could be overtaken: once
//! the publish returns, every matching session holds the message or has
//! counted it against its own queue limit. A node that holds nothing any
//! more is removed, so filters and topics are freed with their last holder.
//!
//! This replaces the rumqttd router the broker embedded before: its per-filter
//! logs were overtaken under bursts (messages lost, QoS 1 included), cost
//! 32 MiB of log per filter, and were never freed (see ARCHITECTURE.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::auth::Policy;
use crate::message::Message;
use crate::outbox::{Budget, Delivery, Outbox, Pushed, SubIds, Tally};
use crate::stats::{Reason, Stats};
use crate::store::{Record, Store, Target};

/// One session's subscription to one filter.
#[derive(Debug, Clone)]
pub struct Sub {
    pub outbox: Arc<Outbox>,
    /// Granted QoS.
    pub qos: u8,
    /// MQTT 5 no-local: never receive one's own publishes.
    pub no_local: bool,
    /// MQTT 5 retain-as-published: keep the retain flag on live messages.
    pub retain_as_published: bool,
    /// MQTT 5 subscription identifier (0: none).
    pub id: u32,
}

/// Why a subscription was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("the filter table is full (max_filters)")]
    TableFull,
    #[error("the shared subscription group belongs to another user")]
    GroupOfAnotherUser,
}

/// Limits of the router's tables.
#[derive(Debug, Clone, Copy)]
pub struct RouterLimits {
    /// Distinct filters held at once.
    pub max_filters: usize,
    /// Retained messages held at once.
    pub max_retained_messages: usize,
    /// Bytes (topic + payload) of retained messages held at once.
    pub max_retained_bytes: usize,
}

/// A `$share` group: its members take turns. It belongs to the user of
/// its members (anonymous: `None`), as a client id does: another user may
/// not join it, and a logged-in user joining an anonymous group takes it
/// back (its anonymous members are removed), so nobody can squat a
/// bridge-owned worker pool's name and take half of its messages.
#[derive(Debug)]
struct Group {
    name: Box<str>,
    owner: Option<Box<str>>,
    members: Vec<Sub>,
    next: AtomicUsize,
}

/// Children of a node: a short list while there are few (most nodes of
/// a sparse tree have one), a hash map beyond that.
#[derive(Debug)]
enum Children {
    Few(Vec<(Box<str>, Node)>),
    Many(HashMap<Box<str>, Node>),
}

/// Children kept in a list up to this many.
const FEW: usize = 8;

impl Default for Children {
    fn default() -> Self {
        Children::Few(Vec::new())
    }
}

impl Children {
    fn get(&self, level: &str) -> Option<&Node> {
        match self {
            Children::Few(v) => v.iter().find(|(k, _)| &**k == level).map(|(_, n)| n),
            Children::Many(m) => m.get(level),
        }
    }

    fn get_mut(&mut self, level: &str) -> Option<&mut Node> {
        match self {
            Children::Few(v) => v.iter_mut().find(|(k, _)| &**k == level).map(|(_, n)| n),
            Children::Many(m) => m.get_mut(level),
        }
    }

    fn get_or_insert(&mut self, level: &str) -> &mut Node {
        if let Children::Few(v) = self {
            if v.len() >= FEW && !v.iter().any(|(k, _)| &**k == level) {
                *self = Children::Many(std::mem::take(v).into_iter().collect());
            }
        }
        match self {
            Children::Few(v) => {
                let i = match v.iter().position(|(k, _)| &**k == level) {
                    Some(i) => i,
                    None => {
                        v.reserve_exact(1);
                        v.push((level.into(), Node::default()));
                        v.len() - 1
                    }
                };
                &mut v[i].1
            }
            Children::Many(m) => m.entry(level.into()).or_default(),
        }
    }

    fn remove(&mut self, level: &str) {
        match self {
            Children::Few(v) => {
                v.retain(|(k, _)| &**k != level);
                if v.is_empty() {
                    *v = Vec::new();
                }
            }
            Children::Many(m) => {
                m.remove(level);
                if m.len() <= FEW / 2 {
                    *self = Children::Few(std::mem::take(m).into_iter().collect());
                }
            }
        }
    }

    fn iter(&self) -> Box<dyn Iterator<Item = (&str, &Node)> + '_> {
        match self {
            Children::Few(v) => Box::new(v.iter().map(|(k, n)| (&**k, n))),
            Children::Many(m) => Box::new(m.iter().map(|(k, n)| (&**k, n))),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Children::Few(v) => v.is_empty(),
            Children::Many(m) => m.is_empty(),
        }
    }
}

/// What a node holds besides children; boxed, as most nodes hold nothing.
#[derive(Debug, Default)]
struct Leaf {
    subs: Vec<Sub>,
    groups: Vec<Group>,
    retained: Option<Arc<Message>>,
}

#[derive(Debug, Default)]
struct Node {
    children: Children,
    leaf: Option<Box<Leaf>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.leaf.is_none()
    }

    fn holds_filter(&self) -> bool {
        self.leaf
            .as_ref()
            .is_some_and(|l| !l.subs.is_empty() || !l.groups.is_empty())
    }

    fn leaf_mut(&mut self) -> &mut Leaf {
        self.leaf.get_or_insert_with(Default::default)
    }

    fn retained(&self) -> Option<&Arc<Message>> {
        self.leaf.as_ref().and_then(|l| l.retained.as_ref())
    }

    /// The retained message to serve a new subscription: none once its
    /// MQTT 5 message expiry has passed (MQTT-3.3.2-5).
    fn live_retained(&self) -> Option<&Arc<Message>> {
        self.retained().filter(|m| !m.expired())
    }

    /// Drops the leaf once it holds nothing.
    fn tidy(&mut self) {
        if self
            .leaf
            .as_ref()
            .is_some_and(|l| l.subs.is_empty() && l.groups.is_empty() && l.retained.is_none())
        {
            self.leaf = None;
        }
    }
}

/// Pushes onto a vector that usually stays tiny, without the usual
/// doubling to four slots for the first element.
fn push_small<T>(v: &mut Vec<T>, x: T) {
    if v.len() < 4 {
        v.reserve_exact(1);
    }
    v.push(x);
}

#[derive(Debug, Default)]
struct Tree {
    root: Node,
    filters: usize,
    retained: usize,
    retained_bytes: usize,
    /// Retained messages with an MQTT 5 message expiry: only while there
    /// are some does [`Router::purge_expired`] walk the tree.
    expiring: usize,
}

impl Tree {
    /// Removes the retained message at `levels` (only if it is `only`,
    /// when given), with the nodes it leaves empty. True when one went.
    fn remove_retained(&mut self, levels: &[&str], only: Option<&Arc<Message>>) -> bool {
        let mut gone = None;
        prune(&mut self.root, levels, &mut |node| {
            if let Some(l) = node.leaf.as_mut() {
                let same = |r: &Arc<Message>| only.is_none_or(|m| Arc::ptr_eq(r, m));
                if l.retained.as_ref().is_some_and(same) {
                    gone = l.retained.take();
                }
            }
            node.tidy();
        });
        let Some(old) = gone else { return false };
        self.retained -= 1;
        self.retained_bytes -= old.weight();
        self.expiring -= usize::from(old.expires());
        true
    }
}

/// The subscription table and retained store. Cheap to share: publishes
/// take a read lock, (un)subscribes and retained updates a write lock.
#[derive(Debug)]
pub struct Router {
    tree: RwLock<Tree>,
    limits: RouterLimits,
    stats: Arc<Stats>,
    /// Where a fan-out reports the bytes it queued.
    budget: Arc<Budget>,
    /// The persistent store: retained changes are written to it under the
    /// write lock (so its log has them in the order they took effect), and
    /// messages are numbered for it before their fan-out.
    store: Option<Store>,
}

/// What a fan-out did ([`Router::publish`]).
#[derive(Debug, Default)]
pub(crate) struct Fanout {
    /// Sessions it was queued for.
    pub queued: usize,
    /// The persistent sessions among them that got it at QoS >= 1: the
    /// store must know they hold it.
    pub targets: Vec<Target>,
    /// The store's ticket of the retained change this publish made, if any.
    pub logged: Option<u64>,
    /// That record was the message, written with `more`: a
    /// [`Record::Queued`] must follow.
    pub more: bool,
}

/// A subscription split into its shared-subscription group and filter.
fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match filter
        .strip_prefix("$share/")
        .and_then(|r| r.split_once('/'))
    {
        Some((g, f)) => (Some(g), f),
        None => (None, filter),
    }
}

/// A matching target found while walking the tree.
struct Hit<'a> {
    sub: &'a Sub,
}

impl Router {
    /// An empty router.
    pub fn new(limits: RouterLimits, budget: Arc<Budget>, stats: Arc<Stats>) -> Router {
        Router {
            tree: RwLock::new(Tree::default()),
            limits,
            stats,
            budget,
            store: None,
        }
    }

    /// Writes retained changes to `store` and numbers messages for it.
    pub(crate) fn set_store(&mut self, store: Store) {
        self.store = Some(store);
    }

    fn read(&self) -> RwLockReadGuard<'_, Tree> {
        self.tree.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Tree> {
        self.tree.write().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    /// Distinct filters held.
    pub(crate) fn filters(&self) -> usize {
        self.read().filters
    }

    #[cfg(test)]
    /// Retained messages held.
    pub(crate) fn retained(&self) -> usize {
        self.read().retained
    }

    /// Adds (or replaces) `sub` for `filter` (`$share/<group>/<filter>` for a
    /// shared subscription) of a session of `user`. The retained messages it
    /// matches are [`Router::retained_for`], asked for after this returns
    /// (so none published in between is missed).
    pub fn subscribe(
        &self,
        filter: &str,
        sub: Sub,
        user: Option<&str>,
    ) -> Result<(), SubscribeError> {
        let (group, inner) = split_shared(filter);
        let mut t = self.write();
        let Tree { root, filters, .. } = &mut *t;
        // Refuse a new distinct filter when the table is full, before
        // creating any node.
        let existing = find(root, inner).filter(|n| n.holds_filter());
        if existing.is_none() && *filters >= self.limits.max_filters {
            return Err(SubscribeError::TableFull);
        }
        if let (Some(g), Some(node)) = (group, existing) {
            let owner = node
                .leaf
                .as_ref()
                .and_then(|l| l.groups.iter().find(|x| &*x.name == g))
                .map(|x| x.owner.as_deref());
            if let Some(owner) = owner {
                if owner != user && !(owner.is_none() && user.is_some()) {
                    return Err(SubscribeError::GroupOfAnotherUser);
                }
            }
        }
        let node = inner
            .split('/')
            .fold(&mut *root, |n, level| n.children.get_or_insert(level));
        let was_filter = node.holds_filter();
        let key = sub.outbox.key;
        let leaf = node.leaf_mut();
        match group {
            None => match leaf.subs.iter_mut().find(|s| s.outbox.key == key) {
                Some(s) => *s = sub,
                None => push_small(&mut leaf.subs, sub),
            },
            Some(g) => {
                let i = match leaf.groups.iter().position(|x| &*x.name == g) {
                    Some(i) => i,
                    None => {
                        push_small(
                            &mut leaf.groups,
                            Group {
                                name: g.into(),
                                owner: user.map(Into::into),
                                members: Vec::new(),
                                next: AtomicUsize::new(0),
                            },
                        );
                        leaf.groups.len() - 1
                    }
                };
                let group = &mut leaf.groups[i];
                if group.owner.is_none() && user.is_some() {
                    // Taken back from anonymous members (checked above).
                    let evicted = group.members.len() as u64;
                    group.members.clear();
                    group.owner = user.map(Into::into);
                    self.stats.count_n(Reason::ShareTakenBack, evicted);
                    tracing::warn!(group = %crate::stats::short(g), user = %crate::stats::who(user), evicted, "shared subscription group taken back from anonymous members");
                }
                let members = &mut group.members;
                match members.iter_mut().find(|s| s.outbox.key == key) {
                    Some(s) => *s = sub,
                    None => push_small(members, sub),
                }
            }
        }
        if !was_filter {
            *filters += 1;
            self.stats.filters.store(*filters as i64, Relaxed);
        }
        Ok(())
    }

    /// The retained messages `filter` matches (none for a shared
    /// subscription, as MQTT 5 says), collected under the read lock so
    /// publishes go on meanwhile. Pointers to the store's own messages.
    pub fn retained_for(&self, filter: &str) -> Vec<Arc<Message>> {
        let (group, inner) = split_shared(filter);
        let mut retained = Vec::new();
        if group.is_none() {
            let levels: Vec<&str> = inner.split('/').collect();
            collect_retained(&self.read().root, &levels, 0, &mut retained);
        }
        retained
    }

    /// Removes the session `key` from `filter`. True if it was there.
    pub fn unsubscribe(&self, filter: &str, key: u64) -> bool {
        let (group, inner) = split_shared(filter);
        let levels: Vec<&str> = inner.split('/').collect();
        let mut t = self.write();
        let Tree { root, filters, .. } = &mut *t;
        let mut found = false;
        prune(root, &levels, &mut |node| {
            let before = node.holds_filter();
            let Some(leaf) = node.leaf.as_mut() else {
                return;
            };
            match group {
                None => {
                    if let Some(i) = leaf.subs.iter().position(|s| s.outbox.key == key) {
                        leaf.subs.swap_remove(i);
                        found = true;
                    }
                }
                Some(g) => {
                    if let Some(gi) = leaf.groups.iter().position(|x| &*x.name == g) {
                        let members = &mut leaf.groups[gi].members;
                        if let Some(i) = members.iter().position(|s| s.outbox.key == key) {
                            members.swap_remove(i);
                            found = true;
                        }
                        if members.is_empty() {
                            leaf.groups.swap_remove(gi);
                        }
                    }
                }
            }
            node.tidy();
            if before && !node.holds_filter() {
                *filters -= 1;
            }
        });
        self.stats.filters.store(*filters as i64, Relaxed);
        found
    }

    /// Fans `msg` out to every matching session. Queues that are filling
    /// faster than their live reader drains them are added to `pressure`:
    /// the publisher waits on them before reading more ([`Outbox::wait_for_space`]).
    /// A retained publish also updates the retained store (an empty payload
    /// deletes; over the caps it is refused and counted, but still delivered
    /// live). With a store, the message is numbered first, a retained
    /// change is logged, and the persistent sessions it reached are
    /// returned for the caller to log ([`Fanout`]).
    pub(crate) fn publish(
        &self,
        msg: &Arc<Message>,
        policy: &Policy,
        pressure: &mut Vec<Arc<Outbox>>,
    ) -> Fanout {
        let mut out = Fanout::default();
        if msg.retain {
            (out.logged, out.more) = self.retain(msg, true);
        }
        if let Some(store) = &self.store {
            if msg.qos > 0 && msg.seq() == 0 {
                msg.seq.store(store.next_seq(), Relaxed);
            }
        }
        let topic = msg.topic_str();
        let levels: Vec<&str> = topic.split('/').collect();
        let t = self.read();
        let mut hits: Vec<Hit<'_>> = Vec::new();
        let mut many_ids: Vec<(u64, Arc<[u32]>)> = Vec::new();
        let mut nodes = 0usize;
        collect_subs(
            &t.root,
            &levels,
            0,
            topic.starts_with('$'),
            &mut hits,
            &mut nodes,
        );
        if nodes > 1 {
            // A session with overlapping subscriptions gets one copy, at the
            // highest QoS of its matching subscriptions. Only sessions that
            // hold several subscriptions can match twice: just those are
            // sorted, not every reader of `#`.
            let mut several: Vec<Hit<'_>> = Vec::new();
            hits.retain(|h| {
                let keep = !h.sub.outbox.overlapping();
                if !keep {
                    several.push(Hit { sub: h.sub });
                }
                keep
            });
            several.sort_by_key(|h| (h.sub.outbox.key, std::cmp::Reverse(h.sub.qos)));
            // Every identifier of a session's matching subscriptions goes
            // with its one copy.
            for w in several.chunk_by(|a, b| a.sub.outbox.key == b.sub.outbox.key) {
                let mut ids: Vec<u32> = w.iter().map(|h| h.sub.id).filter(|i| *i != 0).collect();
                ids.sort_unstable();
                ids.dedup();
                if ids.len() > 1 {
                    many_ids.push((w[0].sub.outbox.key, Arc::from(ids)));
                }
            }
            several.dedup_by_key(|h| h.sub.outbox.key);
            hits.extend(several);
        }
        let mut tally = Tally::default();
        for h in hits {
            let s = h.sub;
            if s.no_local && s.outbox.key == msg.origin {
                continue;
            }
            if s.outbox.full() {
                // A queue at its limit drops what arrives: counted, and no
                // lock taken (a reader slow on purpose costs one load).
                tally.full += 1;
                continue;
            }
            let d = Delivery {
                msg: msg.clone(),
                qos: msg.qos.min(s.qos),
                retain: s.retain_as_published && msg.retain,
                sub_ids: match many_ids.iter().find(|(k, _)| *k == s.outbox.key) {
                    Some((_, ids)) => SubIds::Many(ids.clone()),
                    None => SubIds::One(s.id),
                },
            };
            let target = (d.qos > 0 && s.outbox.durable()).then(|| Target {
                key: s.outbox.key,
                qos: d.qos,
                retain: d.retain,
                sub_ids: d.sub_ids.as_slice().to_vec(),
            });
            let pushed = s.outbox.push_unsettled(d, policy, &mut tally);
            if pushed != Pushed::Dropped {
                out.queued += 1;
                out.targets.extend(target);
            }
            match pushed {
                Pushed::Dropped | Pushed::Queued => {}
                Pushed::Pressure => {
                    if s.outbox.key != msg.origin
                        && !pressure.iter().any(|o| Arc::ptr_eq(o, &s.outbox))
                    {
                        pressure.push(s.outbox.clone());
                    }
                }
            }
        }
        drop(t);
        tally.settle(&self.budget);
        out
    }

    /// Updates the retained store with `msg`; with a store (and `log`),
    /// writes the change to it under the lock (the message is numbered
    /// here, so the numbers of a topic's retained messages grow in the
    /// order they took effect) and returns the record's ticket, and
    /// whether a [`Record::Queued`] must follow.
    fn retain(&self, msg: &Arc<Message>, log: bool) -> (Option<u64>, bool) {
        let store = self.store.as_ref().filter(|_| log);
        let topic = msg.topic_str();
        let levels: Vec<&str> = topic.split('/').collect();
        let mut t = self.write();
        let mut logged = (None, false);
        if msg.payload.is_empty() {
            t.remove_retained(&levels, None);
            if let Some(store) = store {
                let ticket = store.submit(Record::Unretain {
                    topic: msg.topic.clone(),
                });
                logged = (Some(ticket), false);
            }
        } else {
            let Tree {
                root,
                retained,
                retained_bytes,
                expiring,
                ..
            } = &mut *t;
            let replaced = find(root, topic).and_then(|n| n.retained());
            let count = *retained + usize::from(replaced.is_none());
            let bytes = *retained_bytes - replaced.map_or(0, |m| m.weight()) + msg.weight();
            if count > self.limits.max_retained_messages || bytes > self.limits.max_retained_bytes {
                self.stats.count(Reason::RetainedFull);
                tracing::warn!(
                    topic = %crate::stats::short(topic),
                    max_retained_messages = self.limits.max_retained_messages,
                    max_retained_bytes = self.limits.max_retained_bytes,
                    "retained store full; message delivered but not retained"
                );
                return (None, false);
            }
            *expiring = *expiring - usize::from(replaced.is_some_and(|m| m.expires()))
                + usize::from(msg.expires());
            let node = levels
                .iter()
                .fold(&mut *root, |n, l| n.children.get_or_insert(l));
            node.leaf_mut().retained = Some(msg.clone());
            *retained = count;
            *retained_bytes = bytes;
            if let Some(store) = store {
                msg.seq.store(store.next_seq(), Relaxed);
                // QoS 0 reaches no persistent queue: nothing follows.
                let more = msg.qos > 0;
                let ticket = store.submit(Record::Msg {
                    msg: msg.clone(),
                    retained: true,
                    targets: Vec::new(),
                    more,
                });
                logged = (Some(ticket), more);
            }
        }
        self.stats.retained.store(t.retained as i64, Relaxed);
        logged
    }

    /// Puts a retained message read back from the store in place (at
    /// start, before any client), under the same caps as a publish.
    pub(crate) fn restore_retained(&self, msg: &Arc<Message>) {
        self.retain(msg, false);
    }

    /// Drops retained messages whose message expiry has passed (they are
    /// already never served; this gives their memory and their place under
    /// the caps back). Finds them under the read lock, so publishes go on;
    /// takes the write lock only to remove one. Returns how many went.
    pub fn purge_expired(&self) -> usize {
        let expired: Vec<Arc<Message>> = {
            let t = self.read();
            if t.expiring == 0 {
                return 0;
            }
            let mut found = Vec::new();
            collect_expired(&t.root, &mut found);
            found
        };
        let mut purged = 0;
        for msg in expired {
            let levels: Vec<&str> = msg.topic_str().split('/').collect();
            let mut t = self.write();
            // Still the same message (not replaced meanwhile)?
            let gone = t.remove_retained(&levels, Some(&msg));
            if let (true, Some(store)) = (gone, &self.store) {
                store.submit(Record::Unretain {
                    topic: msg.topic.clone(),
                });
            }
            purged += usize::from(gone);
            self.stats.retained.store(t.retained as i64, Relaxed);
        }
        self.stats.count_n(Reason::MessageExpired, purged as u64);
        purged
    }
}

/// Every expired retained message under `node`.
fn collect_expired(node: &Node, found: &mut Vec<Arc<Message>>) {
    if let Some(m) = node.retained().filter(|m| m.expired()) {
        found.push(m.clone());
    }
    for (_, child) in node.children.iter() {
        collect_expired(child, found);
    }
}

/// The node for `path`, if it exists.
fn find<'a>(root: &'a Node, path: &str) -> Option<&'a Node> {
    path.split('/')
        .try_fold(root, |n, level| n.children.get(level))
}

/// Walks to `levels`, applies `f` to that node, and removes every node on
/// the way back that holds nothing any more.
fn prune(node: &mut Node, levels: &[&str], f: &mut dyn FnMut(&mut Node)) {
    match levels.split_first() {
        None => f(node),
        Some((first, rest)) => {
            let Some(child) = node.children.get_mut(first) else {
                return;
            };
            prune(child, rest, f);
            if child.is_empty() {
                node.children.remove(first);
            }
        }
    }
}

fn push_node<'a>(node: &'a Node, hits: &mut Vec<Hit<'a>>, nodes: &mut usize) {
    let Some(leaf) = node.leaf.as_deref() else {
        return;
    };
    if leaf.subs.is_empty() && leaf.groups.is_empty() {
        return;
    }
    *nodes += 1;
    hits.extend(leaf.subs.iter().map(|sub| Hit { sub }));
    for g in &leaf.groups {
        if g.members.is_empty() {
            continue;
        }
        let i = g.next.fetch_add(1, Relaxed) % g.members.len();
        hits.push(Hit { sub: &g.members[i] });
        // A group's pick counts as a separate node: it may overlap the
        // same session's plain subscription.
        *nodes += 1;
    }
}

/// Collects the subscriptions matching the topic `levels[i..]` under `node`.
/// `dollar`: the topic starts with `$`, which no wildcard at the first level
/// matches.
fn collect_subs<'a>(
    node: &'a Node,
    levels: &[&str],
    i: usize,
    dollar: bool,
    hits: &mut Vec<Hit<'a>>,
    nodes: &mut usize,
) {
    let wild = !(i == 0 && dollar);
    if wild {
        if let Some(c) = node.children.get("#") {
            // `a/#` also matches `a`.
            push_node(c, hits, nodes);
        }
    }
    let Some(level) = levels.get(i) else {
        push_node(node, hits, nodes);
        return;
    };
    if let Some(c) = node.children.get(level) {
        collect_subs(c, levels, i + 1, dollar, hits, nodes);
    }
    if wild {
        if let Some(c) = node.children.get("+") {
            collect_subs(c, levels, i + 1, dollar, hits, nodes);
        }
    }
}

/// Collects the retained messages matching the filter `levels[i..]`.
fn collect_retained(node: &Node, levels: &[&str], i: usize, out: &mut Vec<Arc<Message>>) {
    let Some(level) = levels.get(i) else {
        out.extend(node.live_retained().cloned());
        return;
    };
    let topic_child =
        |name: &str| !(name == "+" || name == "#" || (i == 0 && name.starts_with('$')));
    match *level {
        "#" => {
            if i > 0 {
                // `a/#` matches `a` itself.
                out.extend(node.live_retained().cloned());
            }
            for (name, c) in node.children.iter() {
                if topic_child(name) {
                    all_retained(c, out);
                }
            }
        }
        "+" => {
            for (name, c) in node.children.iter() {
                if topic_child(name) {
                    collect_retained(c, levels, i + 1, out);
                }
            }
        }
        l => {
            if let Some(c) = node.children.get(l) {
                collect_retained(c, levels, i + 1, out);
            }
        }
    }
}

fn all_retained(node: &Node, out: &mut Vec<Arc<Message>>) {
    out.extend(node.live_retained().cloned());
    for (name, c) in node.children.iter() {
        if name != "+" && name != "#" {
            all_retained(c, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Reader;
    use bytes::Bytes;

    fn router(max_filters: usize) -> Router {
        let stats = Arc::new(Stats::default());
        Router::new(
            RouterLimits {
                max_filters,
                max_retained_messages: 3,
                max_retained_bytes: 1 << 20,
            },
            Budget::new(usize::MAX / 2, stats.clone()),
            stats,
        )
    }

    fn outbox(key: u64) -> Arc<Outbox> {
        let budget = crate::outbox::Budget::new(usize::MAX / 2, Arc::new(Stats::default()));
        let o = Outbox::new(key, 100, 1 << 20, budget);
        o.set_reader(Reader {
            reads_everything: true,
            ..Default::default()
        });
        o.set_online(true);
        Arc::new(o)
    }

    fn sub(o: &Arc<Outbox>, qos: u8) -> Sub {
        Sub {
            outbox: o.clone(),
            qos,
            no_local: false,
            retain_as_published: false,
            id: 0,
        }
    }

    fn msg(topic: &'static str, qos: u8, retain: bool) -> Arc<Message> {
        Message::new(
            Bytes::from_static(topic.as_bytes()),
            Bytes::from_static(b"x"),
            qos,
            retain,
            None,
            0,
        )
    }

    fn policy() -> Policy {
        Policy::load(&crate::config::AuthConfig::default()).unwrap()
    }

    fn send(r: &Router, m: &Arc<Message>) -> usize {
        r.publish(m, &policy(), &mut Vec::new()).queued
    }

    #[test]
    fn matching_rules() {
        let r = router(100);
        let cases = [
            (
                "a/b/c",
                vec!["a/b/c", "a/+/c", "a/#", "#", "+/+/+", "a/b/c/#"],
            ),
            ("$SYS/x", vec!["$SYS/#", "$SYS/+"]),
        ];
        let misses = ["a/b", "a/+", "+/+", "$SYS", "b/#"];
        let mut key = 0;
        for (topic, hits) in cases {
            for f in hits.iter().chain(misses.iter()) {
                key += 1;
                let o = outbox(key);
                r.subscribe(f, sub(&o, 0), None).unwrap();
                let m = Message::new(
                    Bytes::from(topic.to_owned()),
                    Bytes::from_static(b"x"),
                    0,
                    false,
                    None,
                    0,
                );
                send(&r, &m);
                assert_eq!(o.len(), usize::from(hits.contains(f)), "{topic} vs {f}");
                r.unsubscribe(f, key);
            }
        }
        let root_wild = outbox(999);
        r.subscribe("#", sub(&root_wild, 0), None).unwrap();
        r.subscribe("+/x", sub(&root_wild, 0), None).unwrap();
        send(&r, &msg("$SYS/x", 0, false));
        assert!(root_wild.is_empty(), "wildcards never match $ topics");
    }

    #[test]
    fn overlapping_filters_give_one_copy_at_the_highest_qos() {
        let r = router(100);
        let o = outbox(1);
        o.set_subscriptions(3);
        r.subscribe("a/#", sub(&o, 0), None).unwrap();
        r.subscribe("a/+", sub(&o, 1), None).unwrap();
        r.subscribe("a/b", sub(&o, 0), None).unwrap();
        assert_eq!(send(&r, &msg("a/b", 1, false)), 1);
        let mut got = std::collections::VecDeque::new();
        o.take(&mut got, 10, 10);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].qos, 1, "min(published 1, best granted 1)");
    }

    #[test]
    fn delivery_qos_is_the_lower_of_publish_and_grant() {
        let r = router(100);
        let (lo, hi) = (outbox(1), outbox(2));
        r.subscribe("t", sub(&lo, 0), None).unwrap();
        r.subscribe("t", sub(&hi, 1), None).unwrap();
        send(&r, &msg("t", 1, false));
        send(&r, &msg("t", 0, false));
        let mut got = std::collections::VecDeque::new();
        lo.take(&mut got, 10, 10);
        hi.take(&mut got, 10, 10);
        let q: Vec<u8> = got.iter().map(|d| d.qos).collect();
        assert_eq!(q, vec![0, 0, 1, 0]);
    }

    #[test]
    fn filters_and_topics_are_freed() {
        let r = router(2);
        let o = outbox(1);
        r.subscribe("a/b/c", sub(&o, 0), None).unwrap();
        r.subscribe("$share/g/x/+", sub(&o, 0), None).unwrap();
        assert_eq!(
            r.subscribe("z", sub(&o, 0), None).unwrap_err(),
            SubscribeError::TableFull
        );
        r.subscribe("a/b/c", sub(&outbox(2), 0), None)
            .expect("an existing filter needs no new slot");
        assert!(r.unsubscribe("a/b/c", 1));
        assert!(r.unsubscribe("a/b/c", 2));
        assert!(r.unsubscribe("$share/g/x/+", 1));
        assert!(!r.unsubscribe("a/b/c", 1));
        assert_eq!(r.filters(), 0);
        send(&r, &msg("r/1", 0, true));
        send(&r, &msg("r/1", 0, true));
        assert_eq!(r.retained(), 1);
        send(
            &r,
            &Message::new(Bytes::from_static(b"r/1"), Bytes::new(), 0, true, None, 0),
        );
        let t = r.read();
        assert_eq!(t.retained, 0);
        assert!(t.root.is_empty(), "no node left: {:?}", t.root);
    }

    #[test]
    fn retained_store_and_caps() {
        let r = router(100);
        for t in ["n/c1/h1", "n/c1/h2", "n/c2/h1", "n/c2/h9"] {
            send(
                &r,
                &Message::new(
                    Bytes::from(t.to_owned()),
                    Bytes::from_static(b"up"),
                    1,
                    true,
                    None,
                    0,
                ),
            );
        }
        assert_eq!(r.retained(), 3, "max_retained_messages = 3");
        assert_eq!(r.stats.dropped(Reason::RetainedFull), 1);
        let o = outbox(1);
        let n = |f: &str| {
            r.subscribe(f, sub(&o, 1), None).unwrap();
            r.retained_for(f).len()
        };
        assert_eq!(n("n/+/h1"), 2);
        assert_eq!(n("n/#"), 3);
        assert_eq!(n("#"), 3);
        assert_eq!(n("n"), 0);
        assert_eq!(n("$share/g/n/#"), 0, "no retained for shared subscriptions");
        // An empty non-retained publish does not delete.
        send(
            &r,
            &Message::new(
                Bytes::from_static(b"n/c1/h1"),
                Bytes::new(),
                0,
                false,
                None,
                0,
            ),
        );
        assert_eq!(r.retained(), 3);
    }

    #[test]
    fn expired_retained_messages_are_purged() {
        let r = router(100);
        let retained = |t: &'static str, expiry: Option<u32>| {
            let props = expiry.map(|e| rumqttd::protocol::PublishProperties {
                message_expiry_interval: Some(e),
                ..Default::default()
            });
            Message::new(
                Bytes::from_static(t.as_bytes()),
                Bytes::from_static(b"v"),
                1,
                true,
                props,
                0,
            )
        };
        assert_eq!(r.purge_expired(), 0, "nothing expiring: no walk");
        send(&r, &retained("e/gone", Some(0)));
        send(&r, &retained("e/later", Some(600)));
        send(&r, &retained("e/never", None));
        assert_eq!(r.retained(), 3);
        assert_eq!(r.purge_expired(), 1);
        assert_eq!(r.retained(), 2);
        assert_eq!(r.stats.dropped(Reason::MessageExpired), 1);
        assert!(
            find(&r.read().root, "e/gone").is_none(),
            "its node is freed"
        );
        // Replaced by a message without expiry: nothing left to watch.
        send(&r, &retained("e/later", None));
        assert_eq!(r.read().expiring, 0);
        assert_eq!(r.purge_expired(), 0);
        assert_eq!(r.retained(), 2);
    }

    #[test]
    fn shared_groups_take_turns() {
        let r = router(100);
        let (a, b) = (outbox(1), outbox(2));
        r.subscribe("$share/w/jobs/#", sub(&a, 0), None).unwrap();
        r.subscribe("$share/w/jobs/#", sub(&b, 0), None).unwrap();
        for _ in 0..10 {
            assert_eq!(send(&r, &msg("jobs/1", 0, false)), 1);
        }
        assert_eq!((a.len(), b.len()), (5, 5));
    }

    #[test]
    fn a_shared_group_belongs_to_its_user() {
        let r = router(100);
        let (squat, worker, other, second) = (outbox(1), outbox(2), outbox(3), outbox(4));
        let g = "$share/history/#";
        r.subscribe(g, sub(&squat, 0), None).unwrap();
        // A logged-in user takes the group back: the squatter is out.
        r.subscribe(g, sub(&worker, 0), Some("history")).unwrap();
        assert_eq!(r.stats.dropped(Reason::ShareTakenBack), 1);
        assert_eq!(
            r.subscribe(g, sub(&squat, 0), None),
            Err(SubscribeError::GroupOfAnotherUser),
            "anonymous clients cannot join it again"
        );
        assert_eq!(
            r.subscribe(g, sub(&other, 0), Some("gerrit")),
            Err(SubscribeError::GroupOfAnotherUser),
            "nor can another user"
        );
        r.subscribe(g, sub(&second, 0), Some("history")).unwrap();
        for _ in 0..10 {
            send(&r, &msg("nova/x", 0, false));
        }
        assert_eq!((squat.len(), worker.len(), second.len()), (0, 5, 5));
    }

    #[test]
    fn no_local() {
        let r = router(100);
        let o = outbox(7);
        let mut s = sub(&o, 0);
        s.no_local = true;
        r.subscribe("t", s, None).unwrap();
        let own = Message::new(
            Bytes::from_static(b"t"),
            Bytes::from_static(b"x"),
            0,
            false,
            None,
            7,
        );
        assert_eq!(send(&r, &own), 0);
        assert_eq!(send(&r, &msg("t", 0, false)), 1);
    }
}
