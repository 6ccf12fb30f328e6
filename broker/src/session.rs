//! Client sessions: one task per session owns the client's router link and,
//! while the client is connected, its socket.
//!
//! The session, not the router, keeps everything MQTT asks a broker to keep:
//! subscriptions (so UNSUBSCRIBE is answered right), the outbound queue
//! (bounded; the oldest message is dropped and counted when it is full), QoS 1
//! messages in flight (re-sent with DUP on resume), and the will. When a
//! persistent client leaves, the task stays, keeps draining its link into the
//! queue, and hands it all to the next connection with the same client id.
//! Takeover is a message to the running task, so two links never share an id.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Filter,
    Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, Publish, QoS,
    SubAck, Subscribe, SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};
use rumqttd::Notification;
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::auth::{Policy, Who};
use crate::codec::{self, DecodeError, Refusal, Version};
use crate::connect::{dispatch, refuse, Pending};
use crate::router::Link;
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
    link: Option<Link>,
    version: Version,
    user: Option<String>,
    /// Filter -> granted QoS, for filters the router serves.
    subs: HashMap<String, QoS>,
    /// `$SYS`-style filters served by the edge.
    sys_subs: HashSet<String>,
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    inflight: VecDeque<(u16, Bytes)>,
    next_pkid: u16,
    /// Pkids of denied QoS 2 publishes whose PUBREL we answer ourselves.
    denied_qos2: HashSet<u16>,
    expiry: Option<Duration>,
    will: Option<(Publish, Option<rumqttd::protocol::PublishProperties>)>,
    will_delay: Duration,
    reads_everything: bool,
    /// True while a client is connected (QoS 0 is not queued otherwise).
    online: bool,
    encode_buf: BytesMut,
    denied_logged: u64,
}

pub(crate) async fn run(
    first: Pending,
    mut mailbox: mpsc::Receiver<Pending>,
    gen: u64,
    shared: Arc<Shared>,
) {
    let link = match shared.router.link().await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(client_id = %first.info.client_id, error = %e, "cannot open a router link; refusing");
            shared.stats.count(Reason::MaxConnections);
            let mut p = first;
            refuse(&mut p.writer, p.info.version, Refusal::Busy, &shared).await;
            unregister(&shared, &p.info.client_id, gen, &mut mailbox);
            return;
        }
    };
    shared.stats.sessions.fetch_add(1, Relaxed);
    let mut s = Session {
        client_id: first.info.client_id.clone(),
        gen,
        shared: shared.clone(),
        link: Some(link),
        version: first.info.version,
        user: None,
        subs: HashMap::new(),
        sys_subs: HashSet::new(),
        queue: VecDeque::new(),
        queued_bytes: 0,
        inflight: VecDeque::new(),
        next_pkid: 1,
        denied_qos2: HashSet::new(),
        expiry: None,
        will: None,
        will_delay: Duration::ZERO,
        reads_everything: true,
        online: false,
        encode_buf: BytesMut::with_capacity(64 * 1024),
        denied_logged: 0,
    };
    let mut conn = first;
    let mut present = false;
    loop {
        s.adopt(&conn, present);
        let end = s.connected(conn, present, &mut mailbox).await;
        match end {
            End::Takeover(next) => {
                let resume =
                    !next.info.clean_start && s.expiry.is_some() && next.info.version == s.version;
                // A will with a delay is not sent when the session goes on
                // in a new connection before the delay ends (MQTT 5, 3.1.3.2.2).
                if !resume || s.will_delay.is_zero() {
                    s.publish_will().await;
                }
                if resume {
                    conn = *next;
                    present = true;
                    continue;
                }
                s.teardown().await;
                unregister_then_dispatch(&shared, &s.client_id, s.gen, &mut mailbox, Some(*next));
                return;
            }
            End::Shutdown => {
                s.teardown().await;
                unregister(&shared, &s.client_id, s.gen, &mut mailbox);
                return;
            }
            End::Closed { will } => {
                let Some(expiry) = s.expiry else {
                    if will {
                        s.publish_will().await;
                    }
                    s.teardown().await;
                    unregister(&shared, &s.client_id, s.gen, &mut mailbox);
                    return;
                };
                if will && s.will_delay.is_zero() {
                    s.publish_will().await;
                }
                match s.parked(expiry, will, &mut mailbox).await {
                    Some(next) => {
                        let resume = !next.info.clean_start && next.info.version == s.version;
                        if resume {
                            conn = next;
                            present = true;
                            continue;
                        }
                        s.teardown().await;
                        unregister_then_dispatch(
                            &shared,
                            &s.client_id,
                            s.gen,
                            &mut mailbox,
                            Some(next),
                        );
                        return;
                    }
                    None => {
                        s.teardown().await;
                        unregister(&shared, &s.client_id, s.gen, &mut mailbox);
                        return;
                    }
                }
            }
        }
    }
}

fn unregister(shared: &Arc<Shared>, id: &str, gen: u64, mailbox: &mut mpsc::Receiver<Pending>) {
    unregister_then_dispatch(shared, id, gen, mailbox, None)
}

/// Removes this task's registry entry, then restarts any connection that
/// reached the mailbox meanwhile (and `next`) on a fresh session.
fn unregister_then_dispatch(
    shared: &Arc<Shared>,
    id: &str,
    gen: u64,
    mailbox: &mut mpsc::Receiver<Pending>,
    next: Option<Pending>,
) {
    {
        let mut reg = shared.registry.lock().unwrap_or_else(|e| e.into_inner());
        if reg.get(id).is_some_and(|e| e.gen == gen) {
            reg.remove(id);
        }
    }
    mailbox.close();
    let mut waiting: Vec<Pending> = next.into_iter().collect();
    while let Ok(p) = mailbox.try_recv() {
        waiting.push(p);
    }
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
        self.will = info.will.as_ref().map(|w| {
            let qos = (w.qos as u8).min(1);
            // Publish's QoS is crate-private in rumqttd: build the packet
            // from its serialized form.
            let mut b = BytesMut::with_capacity(5 + w.topic.len() + w.message.len());
            b.put_u8(0x30 | (qos << 1) | w.retain as u8);
            b.put_u16(if qos > 0 { 1 } else { 0 });
            b.put_u16(w.topic.len() as u16);
            b.extend_from_slice(&w.topic);
            b.extend_from_slice(&w.message);
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
            (Publish::deserialize(b.freeze()), props)
        });
        self.will_delay = info
            .will_properties
            .as_ref()
            .and_then(|w| w.delay_interval)
            .map(|d| Duration::from_secs(d as u64))
            .unwrap_or_default();
        let policy = self.shared.auth.policy();
        self.reads_everything = policy.reads_everything(self.who());
    }

    fn connack(&mut self, p: &Pending, present: bool, out: &mut BytesMut) {
        let props = (p.info.version == Version::V5).then(|| ConnAckProperties {
            assigned_client_identifier: p.assigned_id.then(|| self.client_id.clone()),
            server_keep_alive: p.server_keep_alive,
            max_qos: Some(1),
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

    /// The connected loop: socket in, router out, one task.
    async fn connected(
        &mut self,
        conn: Pending,
        present: bool,
        mailbox: &mut mpsc::Receiver<Pending>,
    ) -> End {
        let mut wbuf = BytesMut::with_capacity(WRITE_CHUNK * 2);
        let mut wpos = 0usize;
        self.connack(&conn, present, &mut wbuf);
        let Pending {
            mut reader,
            mut writer,
            mut inbuf,
            peer,
            keep_alive,
            ..
        } = conn;
        let shared = self.shared.clone();
        let stats = &shared.stats;
        stats.clients_connected.fetch_add(1, Relaxed);
        self.online = true;
        tracing::info!(client_id = %self.client_id, %peer, version = self.version.as_str(), user = ?self.user, session_present = present, "client connected");
        if present {
            for (pkid, msg) in self.inflight.iter() {
                let start = wbuf.len();
                wbuf.extend_from_slice(msg);
                patch_publish(&mut wbuf[start..], *pkid, true);
            }
        } else {
            self.inflight.clear();
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

        // Bytes that arrived right behind the CONNECT.
        let early = if inbuf.is_empty() {
            None
        } else {
            self.take_input(&mut inbuf, &mut wbuf, wpos, &mut writer, peer)
                .await
        };
        let end = if let Some(end) = early {
            end
        } else {
            loop {
                if wpos == wbuf.len() {
                    wbuf.clear();
                    wpos = 0;
                    self.fill(&mut wbuf);
                }
                let link = match self.link.as_mut() {
                    Some(l) => l,
                    None => break End::Closed { will: true },
                };
                let want_read = wbuf.len() - wpos < MAX_PENDING_WRITE;
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => {
                        self.drain_for_shutdown(&mut writer, &mut wbuf, &mut wpos).await;
                        let bye = self.disconnect_packet(DisconnectReasonCode::ServerShuttingDown);
                        last_write(&mut writer, &wbuf[wpos..], &bye).await;
                        break End::Shutdown;
                    }
                    next = mailbox.recv() => {
                        if let Some(next) = next {
                            tracing::info!(client_id = %self.client_id, old = %peer, new = %next.peer, "session taken over");
                            let bye = self.disconnect_packet(DisconnectReasonCode::SessionTakenOver);
                            last_write(&mut writer, &[], &bye).await;
                            break End::Takeover(Box::new(next));
                        }
                    }
                    r = reader.read_buf(&mut inbuf), if want_read => {
                        match r {
                            Ok(0) => break End::Closed { will: true },
                            Ok(n) => {
                                stats.bytes_received.fetch_add(n as u64, Relaxed);
                                if let Some(ka) = ka {
                                    deadline.as_mut().reset(Instant::now() + ka);
                                }
                                if let Some(end) = self.take_input(&mut inbuf, &mut wbuf, wpos, &mut writer, peer).await {
                                    break end;
                                }
                            }
                            Err(e) => {
                                tracing::debug!(client_id = %self.client_id, %peer, error = %e, "read failed");
                                break End::Closed { will: true };
                            }
                        }
                    }
                    n = link.rx.next() => {
                        match n {
                            Ok(Some(n)) => self.notification(n, &mut wbuf).await,
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!(client_id = %self.client_id, error = %e, "router link closed");
                                break End::Closed { will: true };
                            }
                        }
                    }
                    w = writer.write(&wbuf[wpos..]), if wpos < wbuf.len() => {
                        match w {
                            Ok(0) | Err(_) => break End::Closed { will: true },
                            Ok(n) => {
                                wpos += n;
                                stats.bytes_sent.fetch_add(n as u64, Relaxed);
                                if wpos == wbuf.len() && writer.flush().await.is_err() {
                                    break End::Closed { will: true };
                                }
                            }
                        }
                    }
                    _ = &mut deadline, if ka.is_some() => {
                        stats.count(Reason::KeepaliveTimeout);
                        tracing::info!(client_id = %self.client_id, %peer, keep_alive, "keepalive expired; closing");
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
        self.online = false;
        tracing::info!(client_id = %self.client_id, %peer, reason = match &end { End::Takeover(_) => "takeover", End::Closed { will: true } => "connection lost", End::Closed { will: false } => "disconnect", End::Shutdown => "shutdown" }, "client disconnected");
        end
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
        match self.incoming(inbuf, wbuf, max_packet).await {
            Ok(None) => None,
            Ok(Some(end)) => {
                last_write(writer, &wbuf[wpos..], &[]).await;
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
                    _ => (Reason::Malformed, DisconnectReasonCode::MalformedPacket),
                };
                self.shared.stats.count(reason);
                tracing::warn!(client_id = %self.client_id, %peer, error = %e, reason = e.label(), "closing connection: bad packet");
                let bye = self.disconnect_packet(code);
                last_write(writer, &wbuf[wpos..], &bye).await;
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

    /// Kept for a persistent client that left: drain the link into the
    /// queue until the client comes back or the session expires.
    async fn parked(
        &mut self,
        expiry: Duration,
        will: bool,
        mailbox: &mut mpsc::Receiver<Pending>,
    ) -> Option<Pending> {
        let end = tokio::time::sleep(expiry);
        tokio::pin!(end);
        let will_at = tokio::time::sleep(self.will_delay.min(expiry));
        tokio::pin!(will_at);
        let mut will_pending = will && !self.will_delay.is_zero();
        let mut shutdown = self.shared.shutdown.clone();
        let mut scratch = BytesMut::new();
        loop {
            let link = self.link.as_mut()?;
            tokio::select! {
                _ = shutdown.changed() => return None,
                p = mailbox.recv() => return p,
                _ = &mut end => {
                    self.shared.stats.count(Reason::SessionExpired);
                    tracing::info!(client_id = %self.client_id, "persistent session expired");
                    if will_pending {
                        self.publish_will().await;
                    }
                    return None;
                }
                _ = &mut will_at, if will_pending => {
                    will_pending = false;
                    self.publish_will().await;
                }
                n = link.rx.next() => match n {
                    Ok(Some(n)) => {
                        self.notification(n, &mut scratch).await;
                        scratch.clear();
                    }
                    Ok(None) => {}
                    Err(_) => return None,
                }
            }
        }
    }

    /// Shutting down: hands the client what the router still has for it
    /// and what is queued (the broker keeps nothing once it exits), for at
    /// most [`SHUTDOWN_DRAIN`], then returns with `wbuf` still to write.
    async fn drain_for_shutdown(
        &mut self,
        writer: &mut WriteHalf<BoxIo>,
        wbuf: &mut BytesMut,
        wpos: &mut usize,
    ) {
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        while Instant::now() < deadline {
            // Whatever the router forwards until it has been quiet a moment.
            while let Some(link) = self.link.as_mut() {
                match tokio::time::timeout(Duration::from_millis(50), link.rx.next()).await {
                    Ok(Ok(Some(n))) => self.notification(n, wbuf).await,
                    Ok(Ok(None)) if Instant::now() < deadline => {}
                    _ => break,
                }
            }
            self.fill_all(wbuf);
            let pending = &wbuf[*wpos..];
            if pending.is_empty() && self.queue.is_empty() {
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

    /// Moves every queued message into the write buffer, ignoring the
    /// in-flight window (the last delivery before shutdown).
    fn fill_all(&mut self, wbuf: &mut BytesMut) {
        while let Some(msg) = self.queue.pop_front() {
            self.queued_bytes -= msg.len();
            let start = wbuf.len();
            wbuf.extend_from_slice(&msg);
            if codec::encoded_qos(&msg) > 0 {
                let pkid = self.alloc_pkid();
                patch_publish(&mut wbuf[start..], pkid, false);
                self.inflight.push_back((pkid, msg));
            }
            self.shared.stats.publish_sent.fetch_add(1, Relaxed);
            self.shared.stats.messages_sent.fetch_add(1, Relaxed);
        }
    }

    /// Moves queued messages into the write buffer, within the in-flight window.
    fn fill(&mut self, wbuf: &mut BytesMut) {
        let max_inflight = self.shared.cfg.limits.max_inflight_messages as usize;
        while wbuf.len() < WRITE_CHUNK {
            let Some(front) = self.queue.front() else {
                break;
            };
            let qos = codec::encoded_qos(front);
            if qos > 0 && self.inflight.len() >= max_inflight {
                break;
            }
            let Some(msg) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes -= msg.len();
            let start = wbuf.len();
            wbuf.extend_from_slice(&msg);
            if qos > 0 {
                let pkid = self.alloc_pkid();
                patch_publish(&mut wbuf[start..], pkid, false);
                self.inflight.push_back((pkid, msg));
            }
            self.shared.stats.publish_sent.fetch_add(1, Relaxed);
            self.shared.stats.messages_sent.fetch_add(1, Relaxed);
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

    fn enqueue(&mut self, msg: Bytes, connected: bool) {
        let limits = &self.shared.cfg.limits;
        if !connected && codec::encoded_qos(&msg) == 0 {
            self.shared.stats.count(Reason::OfflineQos0);
            return;
        }
        while !self.queue.is_empty()
            && (self.queue.len() >= limits.max_queued_messages
                || self.queued_bytes + msg.len() > limits.max_queued_bytes)
        {
            if let Some(old) = self.queue.pop_front() {
                self.queued_bytes -= old.len();
                self.shared.stats.count(Reason::QueueFull);
            }
        }
        if limits.max_queued_messages == 0 {
            self.shared.stats.count(Reason::QueueFull);
            return;
        }
        self.queued_bytes += msg.len();
        self.queue.push_back(msg);
    }

    /// Handles one router notification. `out` receives control packets.
    async fn notification(&mut self, n: Notification, out: &mut BytesMut) {
        let connected = self.online;
        match n {
            Notification::Forward(f) => {
                let topic_ok = self.reads_everything
                    || std::str::from_utf8(&f.publish.topic)
                        .map(|t| self.shared.auth.policy().may_read(self.who(), t))
                        .unwrap_or(false);
                let packet = Packet::Publish(f.publish, f.properties);
                if codec::encode(self.version, packet, &mut self.encode_buf).is_err() {
                    return;
                }
                let msg = self.encode_buf.split().freeze();
                if codec::encoded_qos(&msg) > 0 {
                    // The edge owns delivery to the client: ack the router now.
                    if let Some(off) = codec::encoded_pkid_offset(&msg) {
                        let pkid = u16::from_be_bytes([msg[off], msg[off + 1]]);
                        if let Some(link) = self.link.as_mut() {
                            let ack = Packet::PubAck(
                                PubAck {
                                    pkid,
                                    reason: PubAckReason::Success,
                                },
                                None,
                            );
                            let _ = link.tx.send(ack).await;
                        }
                    }
                }
                if !topic_ok {
                    self.shared.stats.count(Reason::AclRead);
                    return;
                }
                self.enqueue(msg, connected);
            }
            Notification::DeviceAck(ack) => {
                let p: Option<Packet> = Notification::DeviceAck(ack).into();
                // CONNACK/SUBACK/UNSUBACK/PINGRESP: the edge answers those itself.
                if let Some(
                    p @ (Packet::PubAck(..)
                    | Packet::PubRec(..)
                    | Packet::PubComp(..)
                    | Packet::PubRel(..)),
                ) = p
                {
                    if codec::encode(self.version, p, out).is_ok() {
                        self.shared.stats.messages_sent.fetch_add(1, Relaxed);
                    }
                }
            }
            Notification::Unschedule => {
                if let Some(link) = self.link.as_ref() {
                    let _ = link.rx.wake().await;
                }
            }
            Notification::Disconnect(..) => {
                tracing::warn!(client_id = %self.client_id, "router disconnected the link");
            }
            _ => {}
        }
    }

    /// Parses and handles every complete packet in `inbuf`. Returns
    /// `Some(end)` when the client disconnected cleanly.
    async fn incoming(
        &mut self,
        inbuf: &mut BytesMut,
        out: &mut BytesMut,
        max: usize,
    ) -> Result<Option<End>, DecodeError> {
        let mut batch: Vec<Packet> = Vec::new();
        let mut end = None;
        let policy = self.shared.auth.policy();
        while end.is_none() {
            let meta = publish_meta(inbuf);
            let Some(p) = codec::decode(self.version, inbuf, max)? else {
                break;
            };
            self.shared.stats.messages_received.fetch_add(1, Relaxed);
            match p {
                Packet::Publish(publish, props) => {
                    self.on_publish(publish, props, meta, &policy, &mut batch, out)?
                }
                Packet::PubAck(ack, _) => {
                    if let Some(i) = self.inflight.iter().position(|(p, _)| *p == ack.pkid) {
                        self.inflight.remove(i);
                    }
                }
                Packet::PubRel(rel, props) => {
                    if self.denied_qos2.remove(&rel.pkid) {
                        let _ = codec::encode(
                            self.version,
                            Packet::PubComp(
                                PubComp {
                                    pkid: rel.pkid,
                                    reason: PubCompReason::Success,
                                },
                                None,
                            ),
                            out,
                        );
                    } else {
                        batch.push(Packet::PubRel(rel, props));
                    }
                }
                Packet::PubRec(rec, _) => {
                    // We never send QoS 2; answer so a confused client is not stuck.
                    let _ = codec::encode(
                        self.version,
                        Packet::PubRel(
                            rumqttd::protocol::PubRel {
                                pkid: rec.pkid,
                                reason: rumqttd::protocol::PubRelReason::PacketIdentifierNotFound,
                            },
                            None,
                        ),
                        out,
                    );
                }
                Packet::PubComp(..) => {}
                Packet::Subscribe(sub, props) => {
                    self.on_subscribe(sub, props, &policy, &mut batch, out)
                }
                Packet::Unsubscribe(unsub, _) => self.on_unsubscribe(unsub, &mut batch, out),
                Packet::PingReq(_) => {
                    let _ = codec::encode(
                        self.version,
                        Packet::PingResp(rumqttd::protocol::PingResp),
                        out,
                    );
                }
                Packet::Disconnect(d, _) => {
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
        if let Some(link) = self.link.as_mut() {
            if let Some(last) = batch.pop() {
                {
                    let mut b = link.tx.buffer();
                    b.extend(batch);
                }
                let _ = link.tx.send(last).await;
            }
        }
        Ok(end)
    }

    fn on_publish(
        &mut self,
        publish: Publish,
        props: Option<rumqttd::protocol::PublishProperties>,
        meta: (u8, u16),
        policy: &Policy,
        batch: &mut Vec<Packet>,
        out: &mut BytesMut,
    ) -> Result<(), DecodeError> {
        let (qos, pkid) = meta;
        self.shared.stats.publish_received.fetch_add(1, Relaxed);
        if props.as_ref().is_some_and(|p| p.topic_alias.is_some()) {
            return Err(DecodeError::Protocol(
                "topic alias used, but topic alias maximum is 0".into(),
            ));
        }
        let topic_str = std::str::from_utf8(&publish.topic)
            .map_err(|_| DecodeError::Malformed("topic is not UTF-8".into()))?;
        let limits = self.shared.cfg.topic_limits();
        let allowed = match topic::validate_name(topic_str, limits) {
            Ok(()) => {
                if policy.may_write(self.who(), topic_str) {
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
        if let Some(reason) = allowed {
            self.shared.stats.count(reason);
            self.denied_logged += 1;
            if self.denied_logged.is_power_of_two() {
                tracing::warn!(client_id = %self.client_id, user = ?self.user, topic = topic_str, reason = reason.name(), denied = self.denied_logged, "publish dropped");
            }
            let v5_reason = if reason == Reason::TopicLimit {
                PubAckReason::TopicNameInvalid
            } else {
                PubAckReason::NotAuthorized
            };
            match qos {
                1 => {
                    let r = if self.version == Version::V5 {
                        v5_reason
                    } else {
                        PubAckReason::Success
                    };
                    let _ = codec::encode(
                        self.version,
                        Packet::PubAck(PubAck { pkid, reason: r }, None),
                        out,
                    );
                }
                2 => {
                    let r = if self.version == Version::V5 {
                        PubRecReason::NotAuthorized
                    } else {
                        PubRecReason::Success
                    };
                    if self.version != Version::V5 {
                        self.denied_qos2.insert(pkid);
                    }
                    let _ = codec::encode(
                        self.version,
                        Packet::PubRec(PubRec { pkid, reason: r }, None),
                        out,
                    );
                }
                _ => {}
            }
            return Ok(());
        }
        if publish.retain {
            self.shared
                .track_retained(topic_str, publish.payload.is_empty());
        }
        batch.push(Packet::Publish(publish, props));
        Ok(())
    }

    fn on_subscribe(
        &mut self,
        sub: Subscribe,
        props: Option<rumqttd::protocol::SubscribeProperties>,
        policy: &Policy,
        batch: &mut Vec<Packet>,
        out: &mut BytesMut,
    ) {
        let v5 = self.version == Version::V5;
        let limits = self.shared.cfg.topic_limits();
        let max_subs = self.shared.cfg.limits.max_subscriptions_per_client;
        let mut codes = Vec::with_capacity(sub.filters.len());
        let mut to_router: Vec<Filter> = Vec::new();
        let mut new_sys = Vec::new();
        for mut f in sub.filters {
            let inner = crate::auth::shared_inner(&f.path);
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
                tracing::info!(client_id = %self.client_id, user = ?self.user, filter = %f.path, "subscription denied");
                if v5 {
                    SubscribeReasonCode::NotAuthorized
                } else {
                    SubscribeReasonCode::Failure
                }
            } else if !self.subs.contains_key(&f.path)
                && !self.sys_subs.contains(&f.path)
                && self.subs.len() + self.sys_subs.len() >= max_subs
            {
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
            } else if !self.shared.admit_filter(&f.path) {
                self.shared.stats.count(Reason::FilterTableFull);
                tracing::warn!(client_id = %self.client_id, filter = %f.path, "filter table full (max_filters); subscription refused");
                if v5 {
                    SubscribeReasonCode::QuotaExceeded
                } else {
                    SubscribeReasonCode::Failure
                }
            } else {
                if f.qos == QoS::ExactlyOnce {
                    f.qos = QoS::AtLeastOnce;
                }
                if self.subs.insert(f.path.clone(), f.qos).is_none() {
                    self.shared.stats.subscriptions.fetch_add(1, Relaxed);
                }
                let granted = f.qos;
                to_router.push(f);
                SubscribeReasonCode::Success(granted)
            };
            codes.push(code);
        }
        let _ = codec::encode(
            self.version,
            Packet::SubAck(
                SubAck {
                    pkid: sub.pkid,
                    return_codes: codes,
                },
                None,
            ),
            out,
        );
        self.shared.stats.messages_sent.fetch_add(1, Relaxed);
        if !to_router.is_empty() {
            batch.push(Packet::Subscribe(
                Subscribe {
                    pkid: sub.pkid,
                    filters: to_router,
                },
                props,
            ));
        }
        if !new_sys.is_empty() {
            let snapshot = self.shared.sys.borrow().clone();
            let only: HashSet<String> = new_sys.into_iter().collect();
            self.deliver_sys_filtered(&snapshot, true, out, &only);
        }
    }

    fn on_unsubscribe(&mut self, unsub: Unsubscribe, batch: &mut Vec<Packet>, out: &mut BytesMut) {
        let mut reasons = Vec::with_capacity(unsub.filters.len());
        let mut to_router = Vec::new();
        for f in unsub.filters {
            if self.subs.remove(&f).is_some() {
                self.shared.stats.subscriptions.fetch_sub(1, Relaxed);
                to_router.push(f);
                reasons.push(UnsubAckReason::Success);
            } else if self.sys_subs.remove(&f) {
                self.shared.stats.subscriptions.fetch_sub(1, Relaxed);
                reasons.push(UnsubAckReason::Success);
            } else {
                reasons.push(UnsubAckReason::NoSubscriptionExisted);
            }
        }
        let _ = codec::encode(
            self.version,
            Packet::UnsubAck(
                UnsubAck {
                    pkid: unsub.pkid,
                    reasons,
                },
                None,
            ),
            out,
        );
        self.shared.stats.messages_sent.fetch_add(1, Relaxed);
        if !to_router.is_empty() {
            batch.push(Packet::Unsubscribe(
                Unsubscribe {
                    pkid: unsub.pkid,
                    filters: to_router,
                },
                None,
            ));
        }
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

    async fn publish_will(&mut self) {
        let Some((will, props)) = self.will.take() else {
            return;
        };
        let topic = String::from_utf8_lossy(&will.topic).into_owned();
        if !self.shared.auth.policy().may_write(self.who(), &topic) {
            self.shared.stats.count(Reason::AclWill);
            return;
        }
        if will.retain {
            self.shared.track_retained(&topic, will.payload.is_empty());
        }
        tracing::info!(client_id = %self.client_id, topic = %topic, "publishing will");
        if let Some(link) = self.link.as_mut() {
            let _ = link.tx.send(Packet::Publish(will, props)).await;
        }
    }

    async fn teardown(&mut self) {
        if let Some(link) = self.link.take() {
            self.shared.router.release(link).await;
        }
        let n = (self.subs.len() + self.sys_subs.len()) as i64;
        self.shared.stats.subscriptions.fetch_sub(n, Relaxed);
        self.subs.clear();
        self.sys_subs.clear();
        let dropped = self.queue.len() + self.inflight.len();
        if dropped > 0 {
            tracing::debug!(client_id = %self.client_id, dropped, "session ended with undelivered messages");
        }
        self.queue.clear();
        self.inflight.clear();
        self.shared.stats.sessions.fetch_sub(1, Relaxed);
    }
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

/// Writes our packet id into an encoded QoS>0 PUBLISH, and DUP if asked.
fn patch_publish(wire: &mut [u8], pkid: u16, dup: bool) {
    if let Some(off) = codec::encoded_pkid_offset(wire) {
        wire[off..off + 2].copy_from_slice(&pkid.to_be_bytes());
    }
    if dup {
        wire[0] |= 0x08;
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
