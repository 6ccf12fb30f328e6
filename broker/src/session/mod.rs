//! Client sessions: one task per session owns the client's outbox and, while
//! the client is connected, its socket.
//!
//! The session keeps everything MQTT asks a broker to keep for a client: its
//! subscriptions (mirrored in the [`crate::router`]), the outbound queue
//! ([`Outbox`]: bounded, what arrives beyond dropped and counted), what is in flight
//! ([`flight::Outflow`]: re-sent on resume), QoS 2 packet ids awaiting
//! PUBREL, and the will. When a persistent client leaves, the task stays
//! (its outbox keeps filling) and hands it all to the next connection with
//! the same client id. Takeover is a connection left in the task's mailbox
//! ([`registry`]).
//!
//! - `mod.rs` (here): the session's life: connect, park, resume, takeover,
//!   expiry, will, teardown;
//! - [`pending`]: what the layer is handed: an admitted connection, and
//!   the [`Hub`] (the shared state and the registry);
//! - [`registry`]: client ids to tasks, takeover rules, task tracking;
//! - [`connection`]: the socket loop of one connected period;
//! - [`inbound`]: packets from the client;
//! - [`flight`]: what goes out, within the client's limits (unit-tested).

mod connection;
mod flight;
mod held;
mod inbound;
mod pending;
mod pushback;
mod registry;
pub(crate) mod restore;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{ConnAck, ConnAckProperties, ConnectReturnCode, Packet, QoS};

use crate::auth::Who;
use crate::codec::Version;
use crate::message::Message;
use crate::outbox::{Outbox, Reader};
use crate::stats::Reason;
use crate::store::{unix_ms, Record, SessionRec, SubRec};
use flight::Outflow;
pub(crate) use pending::{Hub, Pending};
pub(crate) use registry::dispatch;
use registry::{unregister, Mailbox};

/// How a connected period ended.
enum End {
    /// Another connection took the client id.
    Takeover(Box<Pending>),
    /// The socket closed; `will` says whether the will must be published.
    Closed { will: bool },
    /// The broker is shutting down.
    Shutdown,
}

/// One client id's session, owned by its task (see the module
/// documentation); kept across connections while it has an expiry.
struct Session {
    client_id: String,
    gen: u64,
    shared: Arc<Hub>,
    outbox: Arc<Outbox>,
    version: Version,
    user: Option<String>,
    /// Filter -> what was granted, for filters the router serves.
    subs: HashMap<String, Granted>,
    /// `$SYS`-style filters served by the session from the stats snapshot.
    sys_subs: LazySet<String>,
    /// Retained backlog, in-flight window, packet ids, outbound aliases.
    outflow: Outflow,
    /// QoS 2 packet ids received (accepted or denied once) and not yet
    /// released by PUBREL: a re-sent PUBLISH with one of them is not
    /// routed again (exactly once).
    awaiting_rel: LazySet<u16>,
    /// Topic aliases the client set on this connection (MQTT 5). Boxed:
    /// 8 bytes in every idle session instead of a 48-byte empty map.
    #[allow(clippy::box_collection)]
    in_aliases: Option<Box<HashMap<u16, Bytes>>>,
    expiry: Option<Duration>,
    will: Option<Arc<Message>>,
    will_delay: Duration,
    /// Fast readers' queues this publisher must wait for before reading on
    /// (only readers in `pushback_users` are ever put here).
    pressure: Vec<Arc<Outbox>>,
    /// What this publisher may still wait for them; boxed: allocated the
    /// first time a reader pushes back, which most sessions never see.
    pushback: Option<Box<pushback::PushbackBudget>>,
    /// PUBACKs / PUBRECs waiting for the store ([`held::Held`]); boxed:
    /// only publishers to kept sessions or retained topics ever hold any.
    held: Option<Box<held::Held>>,
    /// This anonymous session holds one of the persistent-session slots.
    anonymous_slot: bool,
    denied_logged: u64,
    /// The CONNECT asked for no session expiry: DISCONNECT may not set one
    /// (MQTT-3.14.2-2).
    expiry_was_zero: bool,
    /// The persistent store keeps this session (see [`Session::keep`]).
    kept: bool,
    /// [`Session::teardown`] ran: its router entries and counters are
    /// given back.
    torn_down: bool,
}

/// One subscription's options, as granted (kept for the store).
#[derive(Debug, Clone, Copy)]
struct Granted {
    qos: QoS,
    no_local: bool,
    retain_as_published: bool,
    id: u32,
}

/// A set that costs one pointer while empty, which it is in almost every
/// session (every idle reader pays for the empty ones).
#[derive(Debug)]
#[allow(clippy::box_collection)]
struct LazySet<T>(Option<Box<HashSet<T>>>);

impl<T> Default for LazySet<T> {
    fn default() -> Self {
        LazySet(None)
    }
}

impl<T: std::hash::Hash + Eq + Clone> LazySet<T> {
    fn contains(&self, x: &T) -> bool {
        self.0.as_ref().is_some_and(|s| s.contains(x))
    }

    fn insert(&mut self, x: T) -> bool {
        self.0.get_or_insert_with(Default::default).insert(x)
    }

    /// Removes `x`; the allocation goes with the last element.
    fn remove(&mut self, x: &T) -> bool {
        let Some(s) = &mut self.0 else { return false };
        let removed = s.remove(x);
        if s.is_empty() {
            self.0 = None;
        }
        removed
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |s| s.len())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the elements.
    fn to_set(&self) -> HashSet<T> {
        self.0.as_deref().cloned().unwrap_or_default()
    }
}

/// However the task ends (returned, or its future dropped), the router
/// forgets its subscriptions and the gauges are given back.
impl Drop for Session {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The task of one session, spawned by [`registry::dispatch`] for the
/// first connection of a client id: serves connections until the session
/// ends, then hands a waiting successor to a fresh session.
pub(crate) async fn run(first: Box<Pending>, mailbox: Arc<Mailbox>, gen: u64, shared: Arc<Hub>) {
    let s = Session::new(
        gen,
        first.info.client_id.clone(),
        first.info.version,
        first.user.as_deref(),
        shared,
    );
    s.serve(first, false, mailbox).await;
}

/// The task of a session read back from the store ([`restore`]): it
/// starts parked, as its client left it (or as the restart cut it off),
/// with what is left of its expiry and its will's delay.
async fn run_restored(
    mut s: Session,
    expiry_left: Duration,
    will_in: Option<Duration>,
    departed_ms: u64,
    mailbox: Arc<Mailbox>,
) {
    let next = s.parked(expiry_left, will_in, departed_ms, &mailbox).await;
    match next {
        Some(next) if s.resumed_by(&next) => s.serve(next, true, mailbox).await,
        next => s.end(next, &mailbox),
    }
}

impl Session {
    /// A session with nothing in it yet, counted.
    /// A session belongs to one user for its whole life (another user's
    /// CONNECT with its id starts a fresh one), so its queue limits are
    /// that user's from the start.
    fn new(
        gen: u64,
        client_id: String,
        version: Version,
        user: Option<&str>,
        shared: Arc<Hub>,
    ) -> Session {
        shared.stats.sessions.fetch_add(1, Relaxed);
        let limits = shared.cfg.limits.for_user(user);
        let outbox = Arc::new(Outbox::new(
            gen,
            limits.max_queued_messages,
            limits.max_queued_bytes,
            shared.budget.clone(),
        ));
        Session {
            client_id,
            gen,
            shared,
            outbox,
            version,
            user: None,
            subs: HashMap::new(),
            sys_subs: LazySet::default(),
            outflow: Outflow::default(),
            awaiting_rel: LazySet::default(),
            in_aliases: None,
            expiry: None,
            will: None,
            will_delay: Duration::ZERO,
            pressure: Vec::new(),
            pushback: None,
            held: None,
            anonymous_slot: false,
            denied_logged: 0,
            expiry_was_zero: true,
            kept: false,
            torn_down: false,
        }
    }

    /// Serves connections, the first being `conn`, until the session ends.
    async fn serve(mut self, first: Box<Pending>, resumed: bool, mailbox: Arc<Mailbox>) {
        let s = &mut self;
        let mut conn = first;
        let mut present = resumed;
        // Each connected period ends with the connection that goes on with
        // this session, or with none (the session ends; a connection that
        // does not resume it starts a fresh one).
        let successor = loop {
            s.adopt(&conn, present);
            let next = match s.connected(conn, present, &mailbox).await {
                End::Takeover(next) => {
                    // A will with a delay is not sent when the session goes on
                    // in a new connection before the delay ends (MQTT 5, 3.1.3.2.2).
                    if !s.resumed_by(&next) || s.will_delay.is_zero() {
                        s.publish_will();
                    }
                    next
                }
                End::Shutdown => {
                    // The client was cut off by the stop: its session
                    // expiry counts from now (a will is not armed by a stop).
                    s.save(Some(unix_ms()), false);
                    break None;
                }
                End::Closed { will } => {
                    let Some(expiry) = s.expiry else {
                        if will {
                            s.publish_will();
                        }
                        break None;
                    };
                    if will && s.will_delay.is_zero() {
                        s.publish_will();
                    }
                    let will_in = (will && s.will.is_some() && !s.will_delay.is_zero())
                        .then_some(s.will_delay);
                    let departed = unix_ms();
                    s.save(Some(departed), will_in.is_some());
                    match s.parked(expiry, will_in, departed, &mailbox).await {
                        Some(next) => next,
                        None => break None,
                    }
                }
            };
            if !s.resumed_by(&next) {
                break Some(next);
            }
            conn = next;
            present = true;
        };
        self.end(successor, &mailbox);
    }

    /// The session is over: gives everything back, and hands a connection
    /// that did not resume it to a fresh session.
    fn end(mut self, successor: Option<Box<Pending>>, mailbox: &Mailbox) {
        if successor
            .as_ref()
            .is_some_and(|n| n.user.is_some() && self.user.is_none())
        {
            self.shared.stats.count(Reason::IdTakenBack);
        }
        self.teardown();
        let shared = self.shared.clone();
        unregister(&shared, &self.client_id, self.gen, mailbox, successor);
    }

    /// Whether `next` (same client id) goes on with this session rather
    /// than starting a fresh one.
    /// Only the session's own user resumes it: a logged-in user taking an
    /// id back from an anonymous client starts afresh.
    fn resumed_by(&self, next: &Pending) -> bool {
        !next.info.clean_start
            && self.expiry.is_some()
            && next.info.version == self.version
            && next.user == self.user
    }

    fn who(&self) -> Who<'_> {
        Who {
            user: self.user.as_deref(),
            client_id: &self.client_id,
        }
    }

    /// Takes the per-connection settings of a new connection.
    fn adopt(&mut self, p: &Pending, present: bool) {
        let info = &p.info;
        if !present {
            self.version = info.version;
        }
        self.user = p.user.clone();
        self.expiry = match info.version {
            Version::V5 => info
                .properties
                .as_ref()
                .and_then(|pr| pr.session_expiry_interval)
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(s as u64)),
            _ if !info.clean_start => Some(Duration::from_secs(
                self.shared.cfg.limits.persistent_client_expiration_secs,
            )),
            _ => None,
        };
        self.limit_anonymous_persistence();
        self.in_aliases = None;
        self.expiry_was_zero = self.expiry.is_none();
        self.will = info.will.as_ref().map(|w| {
            let props =
                info.will_properties
                    .as_ref()
                    .map(|wp| rumqttd::protocol::PublishProperties {
                        payload_format_indicator: wp.payload_format_indicator,
                        message_expiry_interval: wp.message_expiry_interval,
                        topic_alias: None,
                        response_topic: wp.response_topic.clone(),
                        correlation_data: wp.correlation_data.clone(),
                        user_properties: wp.user_properties.clone(),
                        subscription_identifiers: Vec::new(),
                        content_type: wp.content_type.clone(),
                    });
            // The will topic was checked at CONNECT.
            Message::new(
                w.topic.clone(),
                w.message.clone(),
                w.qos as u8,
                w.retain,
                props,
                self.gen,
            )
        });
        self.will_delay = info
            .will_properties
            .as_ref()
            .and_then(|w| w.delay_interval)
            .map(|d| Duration::from_secs(d as u64))
            .unwrap_or_default();
        let policy = self.shared.auth.policy();
        self.outbox.set_reader(Reader {
            client_id: self.client_id.clone(),
            user: self.user.clone(),
            reads_everything: policy.reads_everything(self.who()),
            policy_gen: policy.generation(),
            holds_publishers: self.shared.cfg.may_push_back(self.user.as_deref()),
        });
        self.keep();
    }

    /// Lets the store keep this session while it has an expiry (and the
    /// broker a store), and writes what it is now.
    fn keep(&mut self) {
        let want = self.expiry.is_some() && self.shared.store.is_some();
        if want != self.kept {
            if !want {
                if let Some(store) = &self.shared.store {
                    store.submit(Record::SessionEnd { key: self.gen });
                }
            }
            self.kept = want;
            self.outbox
                .set_durable(self.shared.store.clone().filter(|_| want));
            self.outflow.keep_journal(want);
        }
        self.save(None, false);
    }

    /// Writes the session's state to the store (when it keeps it):
    /// `departed_ms` is when its client left (`None`: connected), and
    /// `will_armed` says its will is due after its delay.
    fn save(&self, departed_ms: Option<u64>, will_armed: bool) {
        let (true, Some(store)) = (self.kept, &self.shared.store) else {
            return;
        };
        let mut subs: Vec<SubRec> = self
            .subs
            .iter()
            .map(|(filter, g)| SubRec {
                filter: filter.clone(),
                qos: g.qos as u8,
                no_local: g.no_local,
                retain_as_published: g.retain_as_published,
                id: g.id,
            })
            .chain(self.sys_subs.to_set().into_iter().map(|filter| SubRec {
                filter,
                qos: 0,
                no_local: false,
                retain_as_published: false,
                id: 0,
            }))
            .collect();
        subs.sort_by(|a, b| a.filter.cmp(&b.filter));
        let level = match self.version {
            Version::V31 => 3,
            Version::V311 => 4,
            Version::V5 => 5,
        };
        store.submit(Record::Session(Box::new(SessionRec {
            key: self.gen,
            client_id: self.client_id.clone(),
            user: self.user.clone(),
            level,
            expiry_secs: self.expiry.map_or(0, |e| e.as_secs()),
            subs,
            will: self.will.clone().map(|w| {
                let delay = self.will_delay.as_secs().min(u32::MAX as u64) as u32;
                (w, delay)
            }),
            departed_ms,
            will_armed,
        })));
    }

    /// Writes what the outflow's journal holds to the store.
    fn write_journal(&mut self) {
        let Some(j) = self.outflow.take_journal() else {
            return;
        };
        let Some(store) = &self.shared.store else {
            return;
        };
        let key = self.gen;
        let mut recs = Vec::with_capacity(3);
        if !j.sent.is_empty() {
            recs.push(Record::Sent { key, sent: j.sent });
        }
        if !j.acked.is_empty() {
            recs.push(Record::Acked { key, seqs: j.acked });
        }
        recs.extend(
            j.released
                .into_iter()
                .map(|pkid| Record::Released { key, pkid }),
        );
        store.submit_all(recs);
    }

    /// The record of a QoS 2 packet id received (`held`) or released, for
    /// a session the store keeps.
    fn inbound_record(&self, pkid: u16, held: bool) -> Option<Record> {
        (self.kept && self.shared.store.is_some()).then_some(Record::Inbound {
            key: self.gen,
            pkid,
            held,
        })
    }

    /// Writes [`Session::inbound_record`] on its own (a release).
    fn write_inbound(&self, pkid: u16, held: bool) {
        if let (Some(r), Some(store)) = (self.inbound_record(pkid, held), &self.shared.store) {
            store.submit(r);
        }
    }

    /// What the outflow must respect on this connection: our in-flight
    /// limit or the client's lower Receive Maximum, the client's Maximum
    /// Packet Size and Topic Alias Maximum (MQTT 5 CONNECT properties).
    fn flight_limits(&self, p: &Pending) -> flight::Limits {
        let props = p.info.properties.as_ref();
        let ours = self
            .shared
            .cfg
            .limits
            .for_user(self.user.as_deref())
            .max_inflight_messages;
        let theirs = props.and_then(|p| p.receive_maximum).filter(|r| *r > 0);
        flight::Limits {
            v5: self.version == Version::V5,
            window: theirs.map_or(ours, |t| ours.min(t)),
            max_packet: props
                .and_then(|p| p.max_packet_size)
                .filter(|m| *m > 0)
                .unwrap_or(u32::MAX),
            alias_max: props.and_then(|p| p.topic_alias_max).unwrap_or(0),
        }
    }

    /// Moves what the outbox holds into `wbuf` (see [`Outflow::fill`]) and
    /// counts it.
    fn fill(&mut self, wbuf: &mut BytesMut, all: bool) {
        let done = self
            .outflow
            .fill(&self.outbox, wbuf, connection::WRITE_CHUNK, all);
        let stats = &self.shared.stats;
        if done.sent > 0 {
            // Once per fill, not per delivery: these counters are shared by
            // every session.
            stats.publish_sent.fetch_add(done.sent, Relaxed);
            stats.messages_sent.fetch_add(done.sent, Relaxed);
        }
        if done.skipped() {
            stats.count_n(Reason::MessageExpired, done.expired);
            stats.count_n(Reason::TooLargeForClient, done.too_large);
            self.outbox.progressed();
        }
        self.write_journal();
    }

    /// Anonymous clients get persistent sessions only up to
    /// `max_anonymous_persistent_sessions` at once (beyond, a clean one,
    /// counted), and none that outlives `persistent_client_expiration_secs`.
    fn limit_anonymous_persistence(&mut self) {
        if self.user.is_some() || self.expiry.is_none() {
            return;
        }
        let limits = &self.shared.cfg.limits;
        let cap = Duration::from_secs(limits.persistent_client_expiration_secs);
        self.expiry = self.expiry.map(|e| e.min(cap));
        if self.anonymous_slot {
            return;
        }
        let n = &self.shared.stats.anonymous_persistent;
        if n.fetch_add(1, Relaxed) >= limits.max_anonymous_persistent_sessions as i64 {
            n.fetch_sub(1, Relaxed);
            self.expiry = None;
            self.shared.stats.count(Reason::PersistentAnonymous);
        } else {
            self.anonymous_slot = true;
        }
    }

    fn connack(&mut self, p: &Pending, present: bool, out: &mut BytesMut) {
        let asked = p
            .info
            .properties
            .as_ref()
            .and_then(|pr| pr.session_expiry_interval)
            .unwrap_or(0);
        let granted = self
            .expiry
            .map_or(0, |e| e.as_secs().min(u32::MAX as u64) as u32);
        let props = (p.info.version == Version::V5).then(|| ConnAckProperties {
            // Told only when it differs from what the client asked for.
            session_expiry_interval: (asked != granted).then_some(granted),
            assigned_client_identifier: p.assigned_id.then(|| self.client_id.clone()),
            server_keep_alive: p.server_keep_alive,
            // Absent: QoS 2 is supported both ways.
            max_qos: None,
            retain_available: Some(1),
            max_packet_size: Some(self.shared.cfg.limits.max_packet_size as u32),
            topic_alias_max: Some(self.shared.cfg.limits.max_topic_alias),
            wildcard_subscription_available: Some(1),
            subscription_identifiers_available: Some(1),
            shared_subscription_available: Some(1),
            ..Default::default()
        });
        let ack = Packet::ConnAck(
            ConnAck {
                session_present: present && p.info.version != Version::V31,
                code: ConnectReturnCode::Success,
            },
            props,
        );
        self.send(ack, out);
    }

    /// Kept for a persistent client that left: the outbox keeps filling
    /// (QoS >= 1, within its limits) until the client comes back or the
    /// session expires.
    async fn parked(
        &mut self,
        expiry: Duration,
        will_in: Option<Duration>,
        departed_ms: u64,
        mailbox: &Mailbox,
    ) -> Option<Box<Pending>> {
        let end = tokio::time::sleep(expiry);
        tokio::pin!(end);
        let will_at = tokio::time::sleep(will_in.unwrap_or_default().min(expiry));
        tokio::pin!(will_at);
        let mut will_pending = will_in.is_some();
        let mut shutdown = self.shared.shutdown.clone();
        self.shared.budget.park(&self.outbox);
        if expiry.is_zero() {
            // Already past (a session restored after its client was away
            // longer): it ends before any reconnect can resume it.
            self.shared.stats.count(Reason::SessionExpired);
            if will_pending {
                self.publish_will();
            }
            return None;
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => return None,
                p = mailbox.recv() => return p,
                _ = &mut end => {
                    self.shared.stats.count(Reason::SessionExpired);
                    tracing::info!(client_id = %crate::stats::short(&self.client_id), "persistent session expired");
                    if will_pending {
                        self.publish_will();
                    }
                    return None;
                }
                _ = &mut will_at, if will_pending => {
                    will_pending = false;
                    self.publish_will();
                    self.save(Some(departed_ms), false);
                }
            }
        }
    }

    fn publish_will(&mut self) {
        let Some(will) = self.will.take() else {
            return;
        };
        let topic = will.topic_str();
        if !self.shared.auth.policy().may_write(self.who(), topic) {
            self.shared.stats.count(Reason::AclWill);
            return;
        }
        tracing::info!(client_id = %crate::stats::short(&self.client_id), topic = %crate::stats::short(topic), "publishing will");
        let policy = self.shared.auth.policy();
        // Nobody reads from a closed session: no pushback here.
        self.shared.publish(&will, &policy, &mut Vec::new(), None);
    }

    /// Ends the session: router entries, queues and gauges given back;
    /// the store forgets it, unless the broker is stopping (then it is
    /// what the next start restores). Runs once (later calls do nothing).
    fn teardown(&mut self) {
        if std::mem::replace(&mut self.torn_down, true) {
            return;
        }
        if std::mem::take(&mut self.kept) && !*self.shared.shutdown.borrow() {
            if let Some(store) = &self.shared.store {
                store.submit(Record::SessionEnd { key: self.gen });
            }
        }
        for f in self.subs.keys() {
            self.shared.router.unsubscribe(f, self.gen);
        }
        let n = (self.subs.len() + self.sys_subs.len()) as i64;
        self.shared.stats.subscriptions.fetch_sub(n, Relaxed);
        self.subs = HashMap::new();
        self.sys_subs = LazySet::default();
        let dropped = self.outbox.clear() + self.outflow.clear();
        if dropped > 0 {
            tracing::debug!(client_id = %crate::stats::short(&self.client_id), dropped, "session ended with undelivered messages");
        }
        self.awaiting_rel = LazySet::default();
        if std::mem::take(&mut self.anonymous_slot) {
            self.shared.stats.anonymous_persistent.fetch_sub(1, Relaxed);
        }
        self.shared.stats.sessions.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    /// Every idle reader holds one `Session` (issue #14's budget is 4 KB
    /// per idle reader, everything included): keep it from creeping up.
    #[test]
    fn a_session_stays_small() {
        let size = std::mem::size_of::<super::Session>();
        eprintln!("Session is {size} bytes");
        assert!(size <= 360, "Session is {size} bytes");
    }
}
