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
use crate::server::Shared;
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
}

/// Entry in the client-id registry.
pub(crate) struct Entry {
    /// Tells this task's entry from a successor's with the same id.
    pub(crate) gen: u64,
    /// The session task's mailbox for takeovers and resumes.
    pub(crate) tx: Arc<Mailbox>,
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
pub async fn serve(io: BoxIo, peer: SocketAddr, shared: Arc<Shared>) {
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
            let (reason, code) = match &e {
                ConnectError::Malformed(_) => (Reason::Malformed, None),
                ConnectError::UnsupportedVersion(_) => {
                    (Reason::BadProtocol, Some(Refusal::UnsupportedVersion))
                }
                ConnectError::BadClientId(_) => (Reason::BadClientId, Some(Refusal::BadClientId)),
            };
            shared.stats.count(reason);
            tracing::info!(%peer, error = %e, "CONNECT refused");
            if let Some(code) = code {
                // The version is unknown or unusable here: answer in the 3.1.1 form.
                refuse(&mut writer, Version::V311, code, &shared).await;
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
            tracing::warn!(%peer, client_id = %info.client_id, user = ?who_log, reason = reason.name(), "login refused");
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
            tracing::info!(%peer, client_id = %info.client_id, "will topic invalid; closing");
            return;
        };
        let who = Who {
            user: user.as_deref(),
            client_id: &info.client_id,
        };
        if !policy.may_write(who, t) {
            shared.stats.count(Reason::AclWill);
            tracing::warn!(%peer, client_id = %info.client_id, will_topic = t, "will on a topic the client may not write; refused");
            refuse(&mut writer, v, Refusal::NotAuthorized, &shared).await;
            return;
        }
    }

    // Keepalive ceiling (mosquitto's max_keepalive).
    let max_ka = shared.cfg.limits.max_keepalive;
    let (keep_alive, server_keep_alive) = if info.keep_alive > max_ka
        || (info.keep_alive == 0 && max_ka < 65535 && v == Version::V5)
    {
        if v != Version::V5 {
            shared.stats.count(Reason::BadClientId);
            tracing::info!(%peer, client_id = %info.client_id, keep_alive = info.keep_alive, max_keepalive = max_ka, "keepalive above max_keepalive; refused");
            refuse(&mut writer, v, Refusal::BadClientId, &shared).await;
            return;
        }
        (max_ka, Some(max_ka))
    } else {
        (info.keep_alive, None)
    };

    // Capacity.
    let connected = shared.stats.clients_connected.load(Relaxed);
    if connected >= shared.cfg.limits.max_connections as i64 {
        shared.stats.count(Reason::MaxConnections);
        tracing::warn!(%peer, connected, "max_connections reached; refusing");
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
        reg.insert(id.clone(), Entry { gen, tx });
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
