//! The way in: from an accepted byte stream to a session.
//!
//! Reads the CONNECT under the handshake timeout, parses it (3.1, 3.1.1 or
//! 5), applies the client-id policy, authenticates, checks the will against
//! the ACL, applies `max_keepalive` and `max_connections`, and refuses with
//! the right CONNACK code for the client's version. A connection that passes
//! is handed to the session task for its client id ([`crate::session`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::BytesMut;
use rumqttd::protocol::{ConnAck, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;

use crate::auth::Who;
use crate::codec::{self, ConnectError, ConnectInfo, Refusal, Version};
use crate::server::{Shared, SocketSlot};
use crate::session;
use crate::stats::Reason;
use crate::topic;
use crate::transport::BoxIo;

/// A client that sent a valid CONNECT and passed authentication.
pub struct Pending {
    pub(crate) reader: ReadHalf<BoxIo>,
    pub(crate) writer: WriteHalf<BoxIo>,
    /// Bytes read behind the CONNECT.
    pub(crate) inbuf: BytesMut,
    pub(crate) info: ConnectInfo,
    /// The authenticated user, `None` for anonymous clients.
    pub(crate) user: Option<String>,
    pub(crate) peer: SocketAddr,
    /// Keepalive after applying `max_keepalive`.
    pub(crate) keep_alive: u16,
    /// Set when the server changed the client's keepalive (told to v5 clients).
    pub(crate) server_keep_alive: Option<u16>,
    /// True when the broker chose the client id (told to v5 clients).
    pub(crate) assigned_id: bool,
    /// Counts the socket until it closes.
    pub(crate) slot: SocketSlot,
    /// The takeover window of the client id, carried into the registry
    /// entry of the session this connection starts.
    pub(crate) takeovers: (std::time::Instant, u32),
}

/// Entry in the client-id registry.
pub(crate) struct Entry {
    /// Tells this task's entry from a successor's with the same id.
    pub(crate) gen: u64,
    /// The session task's mailbox for takeovers and resumes.
    pub(crate) tx: Arc<Mailbox>,
    /// Who owns the client id: only the same user may take it over.
    pub(crate) user: Option<String>,
    /// Start of the current takeover window and takeovers in it.
    pub(crate) takeovers: (std::time::Instant, u32),
}

/// Takeovers of one client id allowed per [`TAKEOVER_WINDOW`].
const MAX_TAKEOVERS: u32 = 5;
const TAKEOVER_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether a connection by `user` may take over the session of `id`: an
/// error when another user owns it (an anonymous client must not knock a
/// bridge off), or when the id changed hands too often lately (two clients
/// fighting over one id). Otherwise the id's takeover window, counted.
fn takeover_check(
    shared: &Shared,
    id: &str,
    user: Option<&str>,
) -> Result<(std::time::Instant, u32), Reason> {
    let now = std::time::Instant::now();
    let mut reg = shared.registry.lock().unwrap_or_else(|e| e.into_inner());
    let Some(e) = reg.get_mut(id) else {
        return Ok((now, 0));
    };
    if e.user.as_deref() != user {
        return Err(Reason::TakeoverOtherUser);
    }
    if now.duration_since(e.takeovers.0) > TAKEOVER_WINDOW {
        e.takeovers = (now, 0);
    }
    e.takeovers.1 += 1;
    if e.takeovers.1 > MAX_TAKEOVERS {
        return Err(Reason::TakeoverRate);
    }
    Ok(e.takeovers)
}

/// Why [`Mailbox::try_send`] gave the connection back.
pub(crate) enum SendError {
    /// A takeover is already waiting.
    Full(Box<Pending>),
    /// The session task is ending.
    Closed(Box<Pending>),
}

/// A session task's mailbox: one slot for a connection that takes the
/// session over. (A tokio mpsc channel would allocate a block of 32 slots
/// per session, idle or not.)
#[derive(Default)]
pub(crate) struct Mailbox {
    /// The waiting connection, and whether the mailbox is closed.
    slot: std::sync::Mutex<(Option<Box<Pending>>, bool)>,
    notify: Notify,
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<Box<Pending>>, bool)> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leaves `p` for the session task, unless one is waiting or it closed.
    pub(crate) fn try_send(&self, p: Box<Pending>) -> Result<(), SendError> {
        let mut s = self.lock();
        if s.1 {
            return Err(SendError::Closed(p));
        }
        if s.0.is_some() {
            return Err(SendError::Full(p));
        }
        s.0 = Some(p);
        drop(s);
        self.notify.notify_one();
        Ok(())
    }

    /// The next connection; `None` once closed and empty.
    pub(crate) async fn recv(&self) -> Option<Box<Pending>> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if let Some(p) = s.0.take() {
                    return Some(p);
                }
                if s.1 {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Refuses further connections; one already waiting stays for
    /// [`Mailbox::try_recv`].
    pub(crate) fn close(&self) {
        self.lock().1 = true;
    }

    /// The waiting connection, if any.
    pub(crate) fn try_recv(&self) -> Option<Box<Pending>> {
        self.lock().0.take()
    }
}

/// Serves one accepted MQTT byte stream from CONNECT to close.
pub async fn serve(io: BoxIo, peer: SocketAddr, slot: SocketSlot, shared: Arc<Shared>) {
    let (mut reader, mut writer) = tokio::io::split(io);
    let limits = &shared.cfg.limits;
    let mut inbuf = BytesMut::with_capacity(4096);
    let read_connect = async {
        loop {
            if inbuf.first().is_some_and(|b| *b != 0x10) {
                return Err(format!(
                    "first packet is not CONNECT (first byte {:#04x})",
                    inbuf[0]
                ));
            }
            match codec::frame_len(&inbuf, limits.max_packet_size) {
                Ok(Some(n)) => return Ok(inbuf.split_to(n).freeze()),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            match reader.read_buf(&mut inbuf).await {
                Ok(0) => return Err("closed before CONNECT".to_owned()),
                Ok(n) => {
                    shared.stats.bytes_received.fetch_add(n as u64, Relaxed);
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    let frame = match tokio::time::timeout(shared.cfg.handshake_timeout(), read_connect).await {
        Err(_) => {
            shared.stats.count(Reason::HandshakeTimeout);
            tracing::debug!(%peer, "no CONNECT in time; closing");
            return;
        }
        Ok(Err(reason)) => {
            shared.stats.count(Reason::Malformed);
            tracing::info!(%peer, %reason, "closing before CONNECT");
            return;
        }
        Ok(Ok(f)) => f,
    };
    shared.stats.messages_received.fetch_add(1, Relaxed);
    let info = match codec::parse_connect(frame) {
        Ok(i) => i,
        Err(e) => {
            // An unknown version is answered in the 3.1.1 form; a bad
            // client id in the client's own version.
            let (reason, answer) = match &e {
                ConnectError::Malformed(_) => (Reason::Malformed, None),
                ConnectError::UnsupportedVersion(_) => (
                    Reason::BadProtocol,
                    Some((Version::V311, Refusal::UnsupportedVersion)),
                ),
                ConnectError::BadClientId(v, _) => {
                    (Reason::BadClientId, Some((*v, Refusal::BadClientId)))
                }
            };
            shared.stats.count(reason);
            tracing::info!(%peer, error = %e, "CONNECT refused");
            if let Some((v, code)) = answer {
                refuse(&mut writer, v, code, &shared).await;
            }
            return;
        }
    };
    let v = info.version;
    let who_log = info.login.as_ref().map(|l| l.username.clone());

    // Client id policy.
    let mut info = info;
    let mut assigned_id = false;
    if info.client_id.is_empty() {
        let allowed = match v {
            Version::V5 => true,
            Version::V311 => info.clean_start,
            Version::V31 => false,
        };
        if !allowed {
            shared.stats.count(Reason::BadClientId);
            tracing::info!(%peer, version = v.as_str(), "empty client id with a persistent session refused");
            refuse(&mut writer, v, Refusal::BadClientId, &shared).await;
            return;
        }
        info.client_id = format!("auto-{:016x}", rand::random::<u64>());
        assigned_id = true;
    }

    // Authentication.
    let policy = shared.auth.policy();
    let user = match policy.login(info.login.as_ref()) {
        Ok(u) => u,
        Err(r) => {
            let (reason, code) = match r {
                crate::auth::Refusal::BadCredentials => {
                    (Reason::BadCredentials, Refusal::BadCredentials)
                }
                crate::auth::Refusal::NotAuthorized => {
                    (Reason::NotAuthorized, Refusal::NotAuthorized)
                }
            };
            shared.stats.count(reason);
            tracing::warn!(%peer, client_id = %crate::stats::short(&info.client_id), user = %crate::stats::who(who_log.as_deref()), reason = reason.name(), "login refused");
            refuse(&mut writer, v, code, &shared).await;
            return;
        }
    };

    // Will: a valid topic the client may write to.
    if let Some(w) = &info.will {
        let ok_topic = std::str::from_utf8(&w.topic)
            .ok()
            .filter(|t| topic::validate_name(t, shared.cfg.topic_limits()).is_ok());
        let Some(t) = ok_topic else {
            shared.stats.count(Reason::Malformed);
            tracing::info!(%peer, client_id = %crate::stats::short(&info.client_id), "will topic invalid; closing");
            return;
        };
        let who = Who {
            user: user.as_deref(),
            client_id: &info.client_id,
        };
        if !policy.may_write(who, t) {
            shared.stats.count(Reason::AclWill);
            tracing::warn!(%peer, client_id = %crate::stats::short(&info.client_id), will_topic = t, "will on a topic the client may not write; refused");
            refuse(&mut writer, v, Refusal::NotAuthorized, &shared).await;
            return;
        }
    }

    // Keepalive ceiling (mosquitto's max_keepalive).
    let max_ka = shared.cfg.limits.max_keepalive;
    let (keep_alive, server_keep_alive) = if info.keep_alive > max_ka
        || (info.keep_alive == 0 && max_ka < 65535)
    {
        match v {
            Version::V5 => (max_ka, Some(max_ka)),
            // A v3 client cannot be told; keepalive 0 ("never") is held to
            // the cap silently, as mosquitto does.
            _ if info.keep_alive == 0 => (max_ka, None),
            _ => {
                shared.stats.count(Reason::BadClientId);
                tracing::info!(%peer, client_id = %crate::stats::short(&info.client_id), keep_alive = info.keep_alive, max_keepalive = max_ka, "keepalive above max_keepalive; refused");
                refuse(&mut writer, v, Refusal::BadClientId, &shared).await;
                return;
            }
        }
    } else {
        (info.keep_alive, None)
    };

    // Takeover of a client id in use.
    let takeovers = match takeover_check(&shared, &info.client_id, user.as_deref()) {
        Ok(t) => t,
        Err(reason) => {
            shared.stats.count(reason);
            let n = shared.stats.dropped(reason);
            if n.is_power_of_two() {
                tracing::warn!(%peer, client_id = %crate::stats::short(&info.client_id), user = %crate::stats::who(user.as_deref()), reason = reason.name(), refused = n, "takeover refused");
            }
            refuse(&mut writer, v, Refusal::BadClientId, &shared).await;
            return;
        }
    };

    // Capacity: the last `reserved_connections` slots are for
    // authenticated users, so anonymous readers cannot lock bridges out.
    let limits = &shared.cfg.limits;
    let connected = shared.stats.clients_connected.load(Relaxed);
    let cap = match user {
        Some(_) => limits.max_connections,
        None => limits.max_connections - shared.cfg.reserved_connections(),
    };
    if connected >= cap as i64 {
        shared.stats.count(Reason::MaxConnections);
        let n = shared.stats.dropped(Reason::MaxConnections);
        if n.is_power_of_two() {
            tracing::warn!(%peer, connected, cap, authenticated = user.is_some(), refused = n, "connection limit reached; refusing");
        }
        refuse(&mut writer, v, Refusal::Busy, &shared).await;
        return;
    }
    let per_ip = limits.max_connections_per_ip;
    if user.is_none() && per_ip > 0 && shared.connections_from(peer.ip()) as usize > per_ip {
        shared.stats.count(Reason::MaxConnectionsPerIp);
        let n = shared.stats.dropped(Reason::MaxConnectionsPerIp);
        if n.is_power_of_two() {
            tracing::warn!(ip = %peer.ip(), max_connections_per_ip = per_ip, refused = n, "too many connections from one address; refusing");
        }
        refuse(&mut writer, v, Refusal::Busy, &shared).await;
        return;
    }

    let pending = Box::new(Pending {
        reader,
        writer,
        inbuf,
        info,
        user,
        peer,
        keep_alive,
        server_keep_alive,
        assigned_id,
        slot,
        takeovers,
    });
    dispatch(pending, shared);
}

/// Hands a connection to the session task for its client id, starting one
/// if there is none.
pub(crate) fn dispatch(mut pending: Box<Pending>, shared: Arc<Shared>) {
    loop {
        let id = pending.info.client_id.clone();
        let mut reg = shared.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = reg.get(&id) {
            match entry.tx.try_send(pending) {
                Ok(()) => return,
                Err(SendError::Full(p)) => {
                    // Several takeovers at once: the newest wins, the others are closed.
                    drop(reg);
                    tracing::info!(client_id = %id, "takeover already in progress; closing this connection");
                    drop(p);
                    return;
                }
                Err(SendError::Closed(p)) => {
                    reg.remove(&id);
                    pending = p;
                    continue;
                }
            }
        }
        let tx = Arc::new(Mailbox::default());
        let rx = tx.clone();
        let gen = shared.next_gen.fetch_add(1, Relaxed);
        let user = pending.user.clone();
        let takeovers = pending.takeovers;
        reg.insert(
            id.clone(),
            Entry {
                gen,
                tx,
                user,
                takeovers,
            },
        );
        drop(reg);
        let shared2 = shared.clone();
        tokio::spawn(async move {
            session::run(pending, rx, gen, shared2).await;
        });
        return;
    }
}

pub(crate) async fn refuse(
    writer: &mut WriteHalf<BoxIo>,
    v: Version,
    why: Refusal,
    shared: &Shared,
) {
    let mut out = BytesMut::new();
    let code = why.code(v);
    let ack = Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        None,
    );
    if codec::encode(v, ack, &mut out).is_ok() {
        let _ = writer.write_all(&out).await;
        let _ = writer.flush().await;
        shared.stats.bytes_sent.fetch_add(out.len() as u64, Relaxed);
        shared.stats.messages_sent.fetch_add(1, Relaxed);
    }
    let _ = writer.shutdown().await;
}
