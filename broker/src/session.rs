//! Client sessions: one task per session owns the client's outbox and, while
//! the client is connected, its socket.
//!
//! The session keeps everything MQTT asks a broker to keep for a client: its
//! subscriptions (mirrored in the [`crate::router`]), the outbound queue
//! ([`Outbox`]: bounded, the oldest dropped and counted), QoS 1 messages in
//! flight (re-sent with DUP on resume), QoS 2 packet ids awaiting PUBREL, and
//! the will. When a persistent client leaves, the task stays (its outbox
//! keeps filling) and hands it all to the next connection with the same
//! client id. Takeover is a message to the running task.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Packet,
    PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, PubRelReason, Publish, QoS,
    RetainForwardRule, SubAck, Subscribe, SubscribeReasonCode, UnsubAck, UnsubAckReason,
    Unsubscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::time::Instant;

use crate::auth::{Policy, Who};
use crate::codec::{self, DecodeError, Version};
use crate::connect::{dispatch, Mailbox, Pending};
use crate::message::{encode_publish, Header, Message};
use crate::outbox::{Delivery, Outbox, Reader};
use crate::router::{Sub, SubscribeError};
use crate::server::Shared;
use crate::stats::Reason;
use crate::topic;
use crate::transport::BoxIo;

/// Largest chunk moved from the queue into the write buffer at once.
const WRITE_CHUNK: usize = 64 * 1024;
/// How long a shutdown keeps delivering to a client before closing it.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);
/// Stop reading from a client whose unread replies pile up beyond this.
const MAX_PENDING_WRITE: usize = 1024 * 1024;
/// Longest a publisher waits, per read, for a fast reader's queue to drain.
const PUSHBACK_MAX: Duration = Duration::from_millis(250);
/// Deliveries moved from the outbox per lock.
const TAKE_BATCH: usize = 256;
/// Read buffer sizes: small for idle clients, grown for publishers.
const READ_MIN: usize = 128;
const READ_MAX: usize = 64 * 1024;

/// How a connected period ended.
enum End {
    /// Another connection took the client id.
    Takeover(Box<Pending>),
    /// The socket closed; `will` says whether the will must be published.
    Closed { will: bool },
    /// The broker is shutting down.
    Shutdown,
}

struct Session {
    client_id: String,
    gen: u64,
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    version: Version,
    user: Option<String>,
    /// Filter -> granted QoS, for filters the router serves.
    subs: HashMap<String, QoS>,
    /// `$SYS`-style filters served by the session from the stats snapshot.
    sys_subs: HashSet<String>,
    /// Retained messages matched at SUBSCRIBE, sent before the live queue
    /// and outside its limits (they are shared with the retained store).
    retained: VecDeque<Delivery>,
    /// Taken from the outbox, not yet written.
    taken: VecDeque<Delivery>,
    inflight: VecDeque<(u16, Delivery)>,
    /// QoS 2 deliveries whose PUBREC came: PUBREL sent, waiting for
    /// PUBCOMP (re-sent as PUBREL, not PUBLISH, on resume).
    released: HashSet<u16>,
    next_pkid: u16,
    /// QoS 2 packet ids received (accepted or denied once) and not yet
    /// released by PUBREL: a re-sent PUBLISH with one of them is not
    /// routed again (exactly once).
    awaiting_rel: HashSet<u16>,
    expiry: Option<Duration>,
    will: Option<Arc<Message>>,
    will_delay: Duration,
    /// Fast readers' queues this publisher must wait for before reading on.
    pressure: Vec<Arc<Outbox>>,
    /// This anonymous session holds one of the persistent-session slots.
    anonymous_slot: bool,
    denied_logged: u64,
    /// The client's Receive Maximum (MQTT 5): QoS >= 1 deliveries in
    /// flight at most, below ours.
    client_receive_max: Option<u16>,
    /// The client's Maximum Packet Size (MQTT 5): larger messages are not
    /// sent to it (counted as `too_large_for_client`).
    client_max_packet: Option<u32>,
    /// The CONNECT asked for no session expiry: DISCONNECT may not set one
    /// (MQTT-3.14.2-2).
    expiry_was_zero: bool,
}

pub(crate) async fn run(first: Box<Pending>, mailbox: Arc<Mailbox>, gen: u64, shared: Arc<Shared>) {
    shared.stats.sessions.fetch_add(1, Relaxed);
    let limits = &shared.cfg.limits;
    let outbox = Arc::new(Outbox::new(
        gen,
        limits.max_queued_messages,
        limits.max_queued_bytes,
        shared.budget.clone(),
    ));
    let mut s = Session {
        client_id: first.info.client_id.clone(),
        gen,
        shared: shared.clone(),
        outbox,
        version: first.info.version,
        user: None,
        subs: HashMap::new(),
        sys_subs: HashSet::new(),
        retained: VecDeque::new(),
        taken: VecDeque::new(),
        inflight: VecDeque::new(),
        released: HashSet::new(),
        next_pkid: 1,
        awaiting_rel: HashSet::new(),
        expiry: None,
        will: None,
        will_delay: Duration::ZERO,
        pressure: Vec::new(),
        anonymous_slot: false,
        denied_logged: 0,
        client_receive_max: None,
        client_max_packet: None,
        expiry_was_zero: true,
    };
    let mut conn = first;
    let mut present = false;
    loop {
        s.adopt(&conn, present);
        let end = s.connected(conn, present, &mailbox).await;
        match end {
            End::Takeover(next) => {
                let resume =
                    !next.info.clean_start && s.expiry.is_some() && next.info.version == s.version;
                // A will with a delay is not sent when the session goes on
                // in a new connection before the delay ends (MQTT 5, 3.1.3.2.2).
                if !resume || s.will_delay.is_zero() {
                    s.publish_will();
                }
                if resume {
                    conn = next;
                    present = true;
                    continue;
                }
                s.teardown();
                unregister_then_dispatch(&shared, &s.client_id, s.gen, &mailbox, Some(next));
                return;
            }
            End::Shutdown => {
                s.teardown();
                unregister(&shared, &s.client_id, s.gen, &mailbox);
                return;
            }
            End::Closed { will } => {
                let Some(expiry) = s.expiry else {
                    if will {
                        s.publish_will();
                    }
                    s.teardown();
                    unregister(&shared, &s.client_id, s.gen, &mailbox);
                    return;
                };
                if will && s.will_delay.is_zero() {
                    s.publish_will();
                }
                match s.parked(expiry, will, &mailbox).await {
                    Some(next) => {
                        let resume = !next.info.clean_start && next.info.version == s.version;
                        if resume {
                            conn = next;
                            present = true;
                            continue;
                        }
                        s.teardown();
                        unregister_then_dispatch(
                            &shared,
                            &s.client_id,
                            s.gen,
                            &mailbox,
                            Some(next),
                        );
                        return;
                    }
                    None => {
                        s.teardown();
                        unregister(&shared, &s.client_id, s.gen, &mailbox);
                        return;
                    }
                }
            }
        }
    }
}

fn unregister(shared: &Arc<Shared>, id: &str, gen: u64, mailbox: &Mailbox) {
    unregister_then_dispatch(shared, id, gen, mailbox, None)
}

/// Removes this task's registry entry, then restarts any connection that
/// reached the mailbox meanwhile (and `next`) on a fresh session.
fn unregister_then_dispatch(
    shared: &Arc<Shared>,
    id: &str,
    gen: u64,
    mailbox: &Mailbox,
    next: Option<Box<Pending>>,
) {
    {
        let mut reg = shared.registry.lock().unwrap_or_else(|e| e.into_inner());
        if reg.get(id).is_some_and(|e| e.gen == gen) {
            reg.remove(id);
        }
    }
    mailbox.close();
    let mut waiting: Vec<Box<Pending>> = next.into_iter().collect();
    waiting.extend(mailbox.try_recv());
    // Only the newest connection may have the id; older ones are closed.
    if let Some(p) = waiting.pop() {
        dispatch(p, shared.clone());
    }
}

impl Session {
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
        let props = info.properties.as_ref();
        self.client_receive_max = props.and_then(|p| p.receive_maximum).filter(|r| *r > 0);
        self.client_max_packet = props.and_then(|p| p.max_packet_size).filter(|m| *m > 0);
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
        });
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
            topic_alias_max: Some(0),
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
        let _ = codec::encode(p.info.version, ack, out);
    }

    /// The connected loop: socket in, outbox out, one task.
    async fn connected(&mut self, conn: Box<Pending>, present: bool, mailbox: &Mailbox) -> End {
        let mut wbuf = BytesMut::new();
        let mut wpos = 0usize;
        self.connack(&conn, present, &mut wbuf);
        let Pending {
            mut reader,
            mut writer,
            mut inbuf,
            peer,
            keep_alive,
            slot: _slot,
            ..
        } = *conn;
        let shared = self.shared.clone();
        let outbox = self.outbox.clone();
        let stats = &shared.stats;
        stats.clients_connected.fetch_add(1, Relaxed);
        stats.client_connects.fetch_add(1, Relaxed);
        outbox.set_blocked(false);
        outbox.set_online(true);
        shared.budget.unpark(outbox.key);
        tracing::info!(target: crate::stats::CLIENTS, client_id = %crate::stats::short(&self.client_id), %peer, version = self.version.as_str(), user = %crate::stats::who(self.user.as_deref()), session_present = present, "client connected");
        if present {
            let v5 = self.version == Version::V5;
            // In their original order (MQTT-4.6.0-1): released QoS 2 ones
            // as PUBREL, the others as PUBLISH with DUP.
            for (pkid, d) in self.inflight.iter() {
                if self.released.contains(pkid) {
                    self.send(pubrel(*pkid, PubRelReason::Success), &mut wbuf);
                    continue;
                }
                let h = Header {
                    qos: d.qos,
                    retain: d.retain,
                    dup: true,
                    pkid: *pkid,
                };
                encode_publish(&d.msg, h, v5, sub_ids(d), &mut wbuf);
            }
        } else {
            // A clean start: what was in flight for the old session goes back
            // to nobody (the outbox was cleared at teardown).
            self.inflight.clear();
            self.released.clear();
        }

        let ka = if keep_alive == 0 {
            None
        } else {
            Some(Duration::from_millis(keep_alive as u64 * 1500))
        };
        let far = Duration::from_secs(86400 * 365);
        let deadline = tokio::time::sleep(ka.unwrap_or(far));
        tokio::pin!(deadline);
        let mut shutdown = shared.shutdown.clone();
        let mut sys_rx = shared.sys.subscribe();
        sys_rx.mark_unchanged();
        let mut read_size = READ_MIN;
        let mut reading = Reading::new(&shared);

        // Bytes that arrived right behind the CONNECT.
        let mut early = if inbuf.is_empty() {
            None
        } else {
            self.take_input(&mut inbuf, &mut wbuf, wpos, &mut writer, peer)
                .await
        };
        if early.is_none() && !self.pressure.is_empty() {
            early =
                Box::pin(self.paced_input(&mut inbuf, &mut wbuf, wpos, &mut writer, peer)).await;
        }
        let end = if let Some(end) = early {
            end
        } else {
            loop {
                if wpos == wbuf.len() {
                    wpos = 0;
                    wbuf.clear();
                    self.fill(&mut wbuf, false);
                    if wbuf.is_empty() && wbuf.capacity() > 4096 {
                        // Idle again after a burst: give the memory back.
                        wbuf = BytesMut::new();
                    }
                }
                if inbuf.is_empty() && inbuf.capacity() > READ_MIN && read_size == READ_MIN {
                    inbuf = BytesMut::new();
                }
                let want_read = wbuf.len() - wpos < MAX_PENDING_WRITE;
                if want_read && inbuf.capacity() - inbuf.len() < read_size / 2 {
                    inbuf.reserve(read_size);
                }
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => {
                        // Deliver only once no session reads (and routes) any
                        // more: a publish PUBACKed after our drain would be lost.
                        reading.stop();
                        Box::pin(Reading::wait_all_stopped(&shared)).await;
                        Box::pin(self.drain_for_shutdown(&mut writer, &mut wbuf, &mut wpos)).await;
                        let bye = self.disconnect_packet(DisconnectReasonCode::ServerShuttingDown);
                        Box::pin(last_write(&mut writer, &wbuf[wpos..], &bye)).await;
                        Box::pin(linger(&mut writer, &mut reader)).await;
                        break End::Shutdown;
                    }
                    next = mailbox.recv() => {
                        if let Some(next) = next {
                            tracing::info!(client_id = %crate::stats::short(&self.client_id), old = %peer, new = %next.peer, "session taken over");
                            let bye = self.disconnect_packet(DisconnectReasonCode::SessionTakenOver);
                            Box::pin(last_write(&mut writer, &[], &bye)).await;
                            break End::Takeover(next);
                        }
                    }
                    r = reader.read_buf(&mut inbuf), if want_read => {
                        match r {
                            Ok(0) => break End::Closed { will: true },
                            Ok(n) => {
                                stats.bytes_received.fetch_add(n as u64, Relaxed);
                                // Grow the read size for clients that send a
                                // lot (publishers), shrink it for idle ones.
                                read_size = if n >= read_size / 2 {
                                    (read_size * 2).min(READ_MAX)
                                } else {
                                    (read_size / 2).max(READ_MIN)
                                };
                                if let Some(ka) = ka {
                                    deadline.as_mut().reset(Instant::now() + ka);
                                }
                                if let Some(end) = self.take_input(&mut inbuf, &mut wbuf, wpos, &mut writer, peer).await {
                                    break end;
                                }
                                if !self.pressure.is_empty() {
                                    if let Some(end) = Box::pin(self.paced_input(&mut inbuf, &mut wbuf, wpos, &mut writer, peer)).await {
                                        break end;
                                    }
                                }
                            }
                            Err(e) => {
                                tracing::debug!(client_id = %crate::stats::short(&self.client_id), %peer, error = %e, "read failed");
                                break End::Closed { will: true };
                            }
                        }
                    }
                    _ = outbox.ready(), if wpos == wbuf.len() => {}
                    w = writer.write(&wbuf[wpos..]), if wpos < wbuf.len() => {
                        match w {
                            Ok(0) | Err(_) => break End::Closed { will: true },
                            Ok(n) => {
                                wpos += n;
                                stats.bytes_sent.fetch_add(n as u64, Relaxed);
                                // A socket that takes less than offered is
                                // full: a slow reader, for the pushback.
                                outbox.set_blocked(wpos < wbuf.len());
                                outbox.progressed();
                                if wpos == wbuf.len() && writer.flush().await.is_err() {
                                    break End::Closed { will: true };
                                }
                            }
                        }
                    }
                    _ = &mut deadline, if ka.is_some() => {
                        stats.count(Reason::KeepaliveTimeout);
                        tracing::info!(client_id = %crate::stats::short(&self.client_id), %peer, keep_alive, "keepalive expired; closing");
                        break End::Closed { will: true };
                    }
                    r = sys_rx.changed(), if !self.sys_subs.is_empty() => {
                        if r.is_ok() {
                            let snapshot = sys_rx.borrow_and_update().clone();
                            self.deliver_sys(&snapshot, false, &mut wbuf);
                        }
                    }
                }
            }
        };
        let _ = writer.shutdown().await;
        stats.clients_connected.fetch_sub(1, Relaxed);
        stats.client_disconnects.fetch_add(1, Relaxed);
        outbox.set_online(false);
        self.pressure.clear();
        tracing::info!(target: crate::stats::CLIENTS, client_id = %crate::stats::short(&self.client_id), %peer, reason = match &end { End::Takeover(_) => "takeover", End::Closed { will: true } => "connection lost", End::Closed { will: false } => "disconnect", End::Shutdown => "shutdown" }, "client disconnected");
        end
    }

    /// Publisher pushback: the packets in `inbuf` stopped at the first
    /// publish that filled a live reader's queue to three quarters. Wait
    /// (at most [`PUSHBACK_MAX`] each time) until those readers drained,
    /// run the next packets, and so on until `inbuf` is done; only then is
    /// the socket read again. Slow readers never end up here (see [`Outbox`]).
    async fn paced_input(
        &mut self,
        inbuf: &mut BytesMut,
        wbuf: &mut BytesMut,
        wpos: usize,
        writer: &mut WriteHalf<BoxIo>,
        peer: SocketAddr,
    ) -> Option<End> {
        while !self.pressure.is_empty() {
            let until = Instant::now() + PUSHBACK_MAX;
            for o in std::mem::take(&mut self.pressure) {
                o.wait_for_space(until).await;
            }
            if let Some(end) = self.take_input(inbuf, wbuf, wpos, writer, peer).await {
                return Some(end);
            }
        }
        None
    }

    /// Runs the packets waiting in `inbuf`. Returns how the connection ends
    /// when a packet ends it (DISCONNECT, or a bad packet: counted, logged,
    /// told to v5 clients), after a last write of what is pending.
    async fn take_input(
        &mut self,
        inbuf: &mut BytesMut,
        wbuf: &mut BytesMut,
        wpos: usize,
        writer: &mut WriteHalf<BoxIo>,
        peer: SocketAddr,
    ) -> Option<End> {
        let max_packet = self.shared.cfg.limits.max_packet_size;
        match self.incoming(inbuf, wbuf, max_packet) {
            Ok(None) => None,
            Ok(Some(end)) => {
                Box::pin(last_write(writer, &wbuf[wpos..], &[])).await;
                Some(end)
            }
            Err(e) => {
                let (reason, code) = match e {
                    DecodeError::TooLarge { .. } => {
                        (Reason::PacketTooLarge, DisconnectReasonCode::PacketTooLarge)
                    }
                    DecodeError::Protocol(_) | DecodeError::ForbiddenType(_) => {
                        (Reason::Malformed, DisconnectReasonCode::ProtocolError)
                    }
                    DecodeError::TopicAlias(_) => {
                        (Reason::Malformed, DisconnectReasonCode::TopicAliasInvalid)
                    }
                    _ => (Reason::Malformed, DisconnectReasonCode::MalformedPacket),
                };
                self.shared.stats.count(reason);
                tracing::warn!(client_id = %crate::stats::short(&self.client_id), %peer, error = %e, reason = e.label(), "closing connection: bad packet");
                let bye = self.disconnect_packet(code);
                Box::pin(last_write(writer, &wbuf[wpos..], &bye)).await;
                Some(End::Closed { will: true })
            }
        }
    }

    /// A DISCONNECT with `code` for v5 clients; nothing for older ones,
    /// which have no server DISCONNECT.
    fn disconnect_packet(&self, code: DisconnectReasonCode) -> BytesMut {
        let mut out = BytesMut::new();
        if self.version == Version::V5 {
            let bye = Packet::Disconnect(Disconnect { reason_code: code }, None);
            let _ = codec::encode(self.version, bye, &mut out);
        }
        out
    }

    /// Kept for a persistent client that left: the outbox keeps filling
    /// (QoS >= 1, within its limits) until the client comes back or the
    /// session expires.
    async fn parked(
        &mut self,
        expiry: Duration,
        will: bool,
        mailbox: &Mailbox,
    ) -> Option<Box<Pending>> {
        let end = tokio::time::sleep(expiry);
        tokio::pin!(end);
        let will_at = tokio::time::sleep(self.will_delay.min(expiry));
        tokio::pin!(will_at);
        let mut will_pending = will && !self.will_delay.is_zero();
        let mut shutdown = self.shared.shutdown.clone();
        self.shared.budget.park(&self.outbox);
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
                }
            }
        }
    }

    /// Shutting down: hands the client everything still queued for it (the
    /// broker keeps nothing once it exits), for at most [`SHUTDOWN_DRAIN`],
    /// then returns with `wbuf` still to write.
    async fn drain_for_shutdown(
        &mut self,
        writer: &mut WriteHalf<BoxIo>,
        wbuf: &mut BytesMut,
        wpos: &mut usize,
    ) {
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        while Instant::now() < deadline {
            self.fill(wbuf, true);
            let pending = &wbuf[*wpos..];
            if pending.is_empty() {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, writer.write_all(pending)).await {
                Ok(Ok(())) => {
                    self.shared
                        .stats
                        .bytes_sent
                        .fetch_add(pending.len() as u64, Relaxed);
                    wbuf.clear();
                    *wpos = 0;
                }
                _ => return,
            }
        }
    }

    /// The next delivery to write: retained ones first, then the outbox.
    /// A QoS >= 1 delivery is only taken while `room` allows.
    fn next_delivery(&mut self, room: usize) -> Option<Delivery> {
        let fits = |d: &Delivery| d.qos == 0 || room > 0;
        if let Some(d) = self.retained.front() {
            return if fits(d) {
                self.retained.pop_front()
            } else {
                None
            };
        }
        if self.taken.is_empty() {
            self.outbox.take(&mut self.taken, TAKE_BATCH, room);
        }
        match self.taken.front() {
            Some(d) if fits(d) => self.taken.pop_front(),
            _ => None,
        }
    }

    /// Encodes queued deliveries into the write buffer, up to
    /// [`WRITE_CHUNK`] and within the in-flight window; `all` ignores both
    /// (the last delivery before shutdown).
    fn fill(&mut self, wbuf: &mut BytesMut, all: bool) {
        let max_inflight = if all {
            usize::MAX
        } else {
            let ours = self.shared.cfg.limits.max_inflight_messages as usize;
            self.client_receive_max
                .map_or(ours, |theirs| ours.min(theirs as usize))
        };
        let v5 = self.version == Version::V5;
        let max_packet = self.client_max_packet.map_or(usize::MAX, |m| m as usize);
        let mut sent = 0;
        while all || wbuf.len() < WRITE_CHUNK {
            let room = max_inflight.saturating_sub(self.inflight.len());
            let Some(d) = self.next_delivery(room) else {
                break;
            };
            if d.msg.expired() {
                // Its message expiry passed while it waited (MQTT-3.3.2-5).
                self.shared.stats.count(Reason::MessageExpired);
                self.outbox.progressed();
                continue;
            }
            let pkid = if d.qos > 0 { self.alloc_pkid() } else { 0 };
            let h = Header {
                qos: d.qos,
                retain: d.retain,
                dup: false,
                pkid,
            };
            let start = wbuf.len();
            encode_publish(&d.msg, h, v5, sub_ids(&d), wbuf);
            if wbuf.len() - start > max_packet {
                // It may not be sent to this client at all (MQTT-3.1.2-25):
                // dropped for it alone, counted, as if acknowledged.
                wbuf.truncate(start);
                self.shared.stats.count(Reason::TooLargeForClient);
                self.outbox.progressed();
                continue;
            }
            if d.qos > 0 {
                self.inflight.push_back((pkid, d));
            }
            sent += 1;
        }
        if sent > 0 {
            // Once per fill, not per delivery: these counters are shared by
            // every session.
            self.shared.stats.publish_sent.fetch_add(sent, Relaxed);
            self.shared.stats.messages_sent.fetch_add(sent, Relaxed);
        }
        // Idle again after a burst (or a big retained set): give it back.
        if self.taken.is_empty() && self.taken.capacity() > 32 {
            self.taken = VecDeque::new();
        }
        if self.retained.is_empty() && self.retained.capacity() > 32 {
            self.retained = VecDeque::new();
        }
    }

    /// A QoS `qos` delivery in flight is done (PUBACK, PUBCOMP, or a v5
    /// PUBREC with an error): the window has room again.
    fn settle(&mut self, pkid: u16, qos: u8) {
        if let Some(i) = self
            .inflight
            .iter()
            .position(|(p, d)| *p == pkid && d.qos == qos)
        {
            self.inflight.remove(i);
            self.outbox.progressed();
        }
    }

    fn alloc_pkid(&mut self) -> u16 {
        loop {
            let p = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|(q, _)| *q == p) {
                return p;
            }
        }
    }

    /// Parses and handles every complete packet in `inbuf`. Returns
    /// `Some(end)` when the client disconnected cleanly.
    fn incoming(
        &mut self,
        inbuf: &mut BytesMut,
        out: &mut BytesMut,
        max: usize,
    ) -> Result<Option<End>, DecodeError> {
        let mut end = None;
        let policy = self.shared.auth.policy();
        // Stop at the first publish that put pressure on a reader: the rest
        // waits in `inbuf` for the pushback.
        while end.is_none() && self.pressure.is_empty() {
            let meta = publish_meta(inbuf);
            let Some(p) = codec::decode(self.version, inbuf, max)? else {
                break;
            };
            self.shared.stats.messages_received.fetch_add(1, Relaxed);
            match p {
                Packet::Publish(publish, props) => {
                    self.on_publish(publish, props, meta, &policy, out)?
                }
                Packet::PubAck(ack, _) => self.settle(ack.pkid, 1),
                Packet::PubRel(rel, _) => {
                    let reason = if self.awaiting_rel.remove(&rel.pkid) {
                        PubCompReason::Success
                    } else {
                        PubCompReason::PacketIdentifierNotFound
                    };
                    self.send(
                        Packet::PubComp(
                            PubComp {
                                pkid: rel.pkid,
                                reason,
                            },
                            None,
                        ),
                        out,
                    );
                }
                Packet::PubRec(rec, _) => {
                    // QoS 2, step 2: the client has it; release it. A v5
                    // client's error code ends the exchange there.
                    let ours = self
                        .inflight
                        .iter()
                        .any(|(p, d)| *p == rec.pkid && d.qos == 2);
                    let failed = !matches!(
                        rec.reason,
                        PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                    );
                    if !ours {
                        self.send(
                            pubrel(rec.pkid, PubRelReason::PacketIdentifierNotFound),
                            out,
                        );
                    } else if failed {
                        self.settle(rec.pkid, 2);
                    } else {
                        self.released.insert(rec.pkid);
                        self.send(pubrel(rec.pkid, PubRelReason::Success), out);
                    }
                }
                Packet::PubComp(comp, _) => {
                    if self.released.remove(&comp.pkid) {
                        self.settle(comp.pkid, 2);
                    }
                }
                Packet::Subscribe(sub, props) => self.on_subscribe(sub, props, &policy, out),
                Packet::Unsubscribe(unsub, _) => self.on_unsubscribe(unsub, out),
                Packet::PingReq(_) => {
                    self.send(Packet::PingResp(rumqttd::protocol::PingResp), out);
                }
                Packet::Disconnect(d, props) => {
                    // MQTT 5: the session expiry may change at DISCONNECT,
                    // but not from 0 (MQTT-3.14.2-2).
                    if let Some(secs) = props.and_then(|p| p.session_expiry_interval) {
                        if self.expiry_was_zero && secs > 0 {
                            return Err(DecodeError::Protocol(
                                "DISCONNECT sets a session expiry the CONNECT did not ask for"
                                    .into(),
                            ));
                        }
                        self.expiry = (secs > 0).then(|| Duration::from_secs(secs as u64));
                        self.limit_anonymous_persistence();
                    }
                    let will = d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
                    end = Some(End::Closed { will });
                }
                other => {
                    return Err(DecodeError::Protocol(format!(
                        "unexpected packet {:?}",
                        packet_name(&other)
                    )));
                }
            }
        }
        Ok(end)
    }

    /// Encodes a control packet for this client. Our own packets always
    /// encode; if one does not, that is counted and logged, never silent.
    fn send(&self, p: Packet, out: &mut BytesMut) {
        match codec::encode(self.version, p, out) {
            Ok(_) => {
                self.shared.stats.messages_sent.fetch_add(1, Relaxed);
            }
            Err(e) => {
                self.shared.stats.count(Reason::Malformed);
                tracing::error!(client_id = %crate::stats::short(&self.client_id), error = %e, "cannot encode a reply");
            }
        }
    }

    fn on_publish(
        &mut self,
        publish: Publish,
        props: Option<rumqttd::protocol::PublishProperties>,
        meta: (u8, u16),
        policy: &Policy,
        out: &mut BytesMut,
    ) -> Result<(), DecodeError> {
        let (qos, pkid) = meta;
        self.shared.stats.publish_received.fetch_add(1, Relaxed);
        // We announce a topic alias maximum of 0: any alias is invalid
        // (MQTT-3.3.2-9), answered with DISCONNECT 0x94.
        if let Some(alias) = props.as_ref().and_then(|p| p.topic_alias) {
            return Err(DecodeError::TopicAlias(alias));
        }
        let topic_str = std::str::from_utf8(&publish.topic)
            .map_err(|_| DecodeError::Malformed("topic is not UTF-8".into()))?;
        let limits = self.shared.cfg.topic_limits();
        let refused = match topic::validate_name(topic_str, limits) {
            // A mirror edge is read-only: what it serves comes from its core.
            Ok(()) => {
                if policy.may_write(self.who(), topic_str) && self.shared.cfg.upstream.url.is_none()
                {
                    None
                } else {
                    Some(Reason::AclPublish)
                }
            }
            Err(topic::TopicError::TooLong(_) | topic::TopicError::TooDeep(_)) => {
                Some(Reason::TopicLimit)
            }
            Err(e) => return Err(DecodeError::Malformed(format!("publish topic: {e}"))),
        };
        let v5 = self.version == Version::V5;
        if let Some(reason) = refused {
            self.shared.stats.count(reason);
            self.denied_logged += 1;
            if self.denied_logged.is_power_of_two() {
                tracing::warn!(client_id = %crate::stats::short(&self.client_id), user = %crate::stats::who(self.user.as_deref()), topic = %crate::stats::short(topic_str), reason = reason.name(), denied = self.denied_logged, "publish dropped");
            }
            let (ack, rec) = match (v5, reason) {
                (false, _) => (PubAckReason::Success, PubRecReason::Success),
                (true, Reason::TopicLimit) => (
                    PubAckReason::TopicNameInvalid,
                    PubRecReason::TopicNameInvalid,
                ),
                (true, _) => (PubAckReason::NotAuthorized, PubRecReason::NotAuthorized),
            };
            match qos {
                1 => self.send(Packet::PubAck(PubAck { pkid, reason: ack }, None), out),
                2 => {
                    // A v5 client is told (and sends no PUBREL); a v3 one
                    // goes through the whole QoS 2 handshake.
                    if !v5 {
                        self.awaiting_rel.insert(pkid);
                    }
                    self.send(Packet::PubRec(PubRec { pkid, reason: rec }, None), out);
                }
                _ => {}
            }
            return Ok(());
        }
        // A QoS 2 publish re-sent before our PUBREC arrived was routed once.
        let first = qos < 2 || self.awaiting_rel.insert(pkid);
        if first {
            let msg = Message::new(
                publish.topic,
                publish.payload,
                qos,
                publish.retain,
                props,
                self.gen,
            );
            self.shared.router.publish(&msg, policy, &mut self.pressure);
        }
        match qos {
            1 => self.send(
                Packet::PubAck(
                    PubAck {
                        pkid,
                        reason: PubAckReason::Success,
                    },
                    None,
                ),
                out,
            ),
            2 => self.send(
                Packet::PubRec(
                    PubRec {
                        pkid,
                        reason: PubRecReason::Success,
                    },
                    None,
                ),
                out,
            ),
            _ => {}
        }
        Ok(())
    }

    fn on_subscribe(
        &mut self,
        sub: Subscribe,
        props: Option<rumqttd::protocol::SubscribeProperties>,
        policy: &Policy,
        out: &mut BytesMut,
    ) {
        let v5 = self.version == Version::V5;
        let limits = self.shared.cfg.topic_limits();
        let max_subs = self.shared.cfg.limits.max_subscriptions_per_client;
        let sub_id = props
            .as_ref()
            .and_then(|p| p.id)
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or(0);
        let mut codes = Vec::with_capacity(sub.filters.len());
        let mut new_sys = Vec::new();
        // Before the router holds the new ones (at most this many more), so
        // a publish never sees fewer subscriptions than the router holds.
        self.outbox
            .set_subscriptions(self.subs.len() + sub.filters.len());
        for f in sub.filters {
            let inner = crate::auth::shared_inner(&f.path);
            let known = self.subs.contains_key(&f.path) || self.sys_subs.contains(&f.path);
            let code = if topic::validate_filter(inner, limits).is_err()
                || (f.path.starts_with("$share/") && inner == f.path)
            {
                self.shared.stats.count(Reason::TopicLimit);
                if v5 {
                    SubscribeReasonCode::TopicFilterInvalid
                } else {
                    SubscribeReasonCode::Failure
                }
            } else if !policy.may_subscribe(self.who(), &f.path) {
                self.shared.stats.count(Reason::AclSubscribe);
                tracing::info!(client_id = %crate::stats::short(&self.client_id), user = %crate::stats::who(self.user.as_deref()), filter = %crate::stats::short(&f.path), "subscription denied");
                // 0x80 in both versions: many v5 clients treat 0x87 here
                // as a broken SUBACK rather than a refusal.
                SubscribeReasonCode::Failure
            } else if !known && self.subs.len() + self.sys_subs.len() >= max_subs {
                self.shared.stats.count(Reason::TooManySubscriptions);
                if v5 {
                    SubscribeReasonCode::QuotaExceeded
                } else {
                    SubscribeReasonCode::Failure
                }
            } else if topic::is_system_filter(&f.path) {
                if self.sys_subs.insert(f.path.clone()) {
                    self.shared.stats.subscriptions.fetch_add(1, Relaxed);
                }
                new_sys.push(f.path.clone());
                SubscribeReasonCode::Success(QoS::AtMostOnce)
            } else {
                let granted = f.qos;
                let entry = Sub {
                    outbox: self.outbox.clone(),
                    qos: granted as u8,
                    no_local: v5 && f.nolocal,
                    retain_as_published: v5 && f.preserve_retain,
                    id: sub_id,
                };
                match self.shared.router.subscribe(&f.path, entry) {
                    Err(SubscribeError::TableFull) => {
                        self.shared.stats.count(Reason::FilterTableFull);
                        tracing::warn!(client_id = %crate::stats::short(&self.client_id), filter = %crate::stats::short(&f.path), "filter table full (max_filters); subscription refused");
                        if v5 {
                            SubscribeReasonCode::QuotaExceeded
                        } else {
                            SubscribeReasonCode::Failure
                        }
                    }
                    Ok(retained) => {
                        if self.subs.insert(f.path.clone(), granted).is_none() {
                            self.shared.stats.subscriptions.fetch_add(1, Relaxed);
                        }
                        let send_retained = match f.retain_forward_rule {
                            RetainForwardRule::OnEverySubscribe => true,
                            RetainForwardRule::OnNewSubscribe => !known,
                            RetainForwardRule::Never => false,
                        };
                        if send_retained || !v5 {
                            self.retained
                                .extend(retained.into_iter().map(|msg| Delivery {
                                    qos: msg.qos.min(granted as u8),
                                    msg,
                                    retain: true,
                                    sub_ids: crate::outbox::SubIds::One(sub_id),
                                }));
                        }
                        SubscribeReasonCode::Success(granted)
                    }
                }
            };
            codes.push(code);
        }
        self.send(
            Packet::SubAck(
                SubAck {
                    pkid: sub.pkid,
                    return_codes: codes,
                },
                None,
            ),
            out,
        );
        self.outbox.set_subscriptions(self.subs.len());
        if !new_sys.is_empty() {
            let snapshot = self.shared.sys.borrow().clone();
            let only: HashSet<String> = new_sys.into_iter().collect();
            self.deliver_sys_filtered(&snapshot, true, out, &only);
        }
    }

    fn on_unsubscribe(&mut self, unsub: Unsubscribe, out: &mut BytesMut) {
        let mut reasons = Vec::with_capacity(unsub.filters.len());
        for f in unsub.filters {
            if self.subs.remove(&f).is_some() {
                self.shared.stats.subscriptions.fetch_sub(1, Relaxed);
                self.shared.router.unsubscribe(&f, self.gen);
                reasons.push(UnsubAckReason::Success);
            } else if self.sys_subs.remove(&f) {
                self.shared.stats.subscriptions.fetch_sub(1, Relaxed);
                reasons.push(UnsubAckReason::Success);
            } else {
                reasons.push(UnsubAckReason::NoSubscriptionExisted);
            }
        }
        // After the router forgot them: a publish never sees fewer
        // subscriptions than the router holds.
        self.outbox.set_subscriptions(self.subs.len());
        self.send(
            Packet::UnsubAck(
                UnsubAck {
                    pkid: unsub.pkid,
                    reasons,
                },
                None,
            ),
            out,
        );
    }

    fn deliver_sys(
        &mut self,
        snapshot: &crate::server::SysSnapshot,
        retain: bool,
        out: &mut BytesMut,
    ) {
        let filters = self.sys_subs.clone();
        self.deliver_sys_filtered(snapshot, retain, out, &filters);
    }

    fn deliver_sys_filtered(
        &mut self,
        snapshot: &crate::server::SysSnapshot,
        retain: bool,
        out: &mut BytesMut,
        filters: &HashSet<String>,
    ) {
        for (t, v) in snapshot.iter() {
            if filters.iter().any(|f| topic::matches(t, f)) {
                let p = Publish::new(Bytes::from(t.clone()), v.clone(), retain);
                if codec::encode(self.version, Packet::Publish(p, None), out).is_ok() {
                    self.shared.stats.publish_sent.fetch_add(1, Relaxed);
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
        self.shared.router.publish(&will, &policy, &mut Vec::new());
    }

    fn teardown(&mut self) {
        for f in self.subs.keys() {
            self.shared.router.unsubscribe(f, self.gen);
        }
        let n = (self.subs.len() + self.sys_subs.len()) as i64;
        self.shared.stats.subscriptions.fetch_sub(n, Relaxed);
        self.subs = HashMap::new();
        self.sys_subs = HashSet::new();
        let dropped = self.outbox.clear() + self.taken.len() + self.inflight.len();
        if dropped > 0 {
            tracing::debug!(client_id = %crate::stats::short(&self.client_id), dropped, "session ended with undelivered messages");
        }
        self.retained = VecDeque::new();
        self.taken = VecDeque::new();
        self.inflight = VecDeque::new();
        self.released = HashSet::new();
        if std::mem::take(&mut self.anonymous_slot) {
            self.shared.stats.anonymous_persistent.fetch_sub(1, Relaxed);
        }
        self.shared.stats.sessions.fetch_sub(1, Relaxed);
    }
}

/// Counts the connected sessions still reading their clients, so that a
/// shutdown drains queues only after every publisher has stopped.
struct Reading<'a> {
    shared: &'a Shared,
    active: bool,
}

impl<'a> Reading<'a> {
    fn new(shared: &'a Shared) -> Reading<'a> {
        shared.reading.fetch_add(1, Relaxed);
        Reading {
            shared,
            active: true,
        }
    }

    fn stop(&mut self) {
        if std::mem::take(&mut self.active) && self.shared.reading.fetch_sub(1, Relaxed) == 1 {
            self.shared.reading_stopped.notify_waiters();
        }
    }

    /// Waits (at most a second: a publisher held in its pushback stops
    /// within 250 ms) until no session reads any more.
    async fn wait_all_stopped(shared: &Shared) {
        let until = Instant::now() + Duration::from_secs(1);
        loop {
            let stopped = shared.reading_stopped.notified();
            tokio::pin!(stopped);
            stopped.as_mut().enable();
            if shared.reading.load(Relaxed) == 0
                || tokio::time::timeout_at(until, stopped).await.is_err()
            {
                return;
            }
        }
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The subscription identifiers to send with a delivery.
fn pubrel(pkid: u16, reason: PubRelReason) -> Packet {
    Packet::PubRel(rumqttd::protocol::PubRel { pkid, reason }, None)
}

fn sub_ids(d: &Delivery) -> &[u32] {
    d.sub_ids.as_slice()
}

/// The last bytes for a connection about to close: what is still pending,
/// then `last` (a DISCONNECT, say). A client that does not read gets one
/// second, so closing never waits on it.
async fn last_write(writer: &mut WriteHalf<BoxIo>, pending: &[u8], last: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = writer.write_all(pending).await;
        let _ = writer.write_all(last).await;
        let _ = writer.flush().await;
    })
    .await;
}

/// Closes a connection gracefully at shutdown: FIN, then reads (and drops)
/// what the client still sends (its PUBACKs) until it closes too, for at
/// most a second. Dropping a socket with unread input sends RST instead of
/// FIN, and an RST makes the client's kernel discard what the client had
/// not read yet: the last messages delivered to it would be lost.
async fn linger(writer: &mut WriteHalf<BoxIo>, reader: &mut tokio::io::ReadHalf<BoxIo>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = writer.shutdown().await;
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// QoS and packet id of a PUBLISH at the front of `buf` (zeros otherwise).
fn publish_meta(buf: &[u8]) -> (u8, u16) {
    if buf.first().map(|b| b >> 4) != Some(3) {
        return (0, 0);
    }
    let qos = codec::encoded_qos(buf);
    if qos == 0 {
        return (0, 0);
    }
    match codec::encoded_pkid_offset(buf) {
        Some(off) => (qos, u16::from_be_bytes([buf[off], buf[off + 1]])),
        None => (qos, 0),
    }
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(..) => "CONNECT",
        Packet::ConnAck(..) => "CONNACK",
        Packet::SubAck(..) => "SUBACK",
        Packet::UnsubAck(..) => "UNSUBACK",
        Packet::PingResp(..) => "PINGRESP",
        _ => "other",
    }
}
