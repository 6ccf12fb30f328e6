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

use crate::auth::Who;
use crate::codec::{self, ConnectError, ConnectInfo, Refusal, Version};
use crate::server::{Shared, SocketSlot};
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

/// Serves one accepted MQTT byte stream from CONNECT to close.
pub(crate) async fn serve(
    io: BoxIo,
    peer: SocketAddr,
    slot: SocketSlot,
    gate: crate::gate::Slot,
    shared: Arc<Shared>,
) {
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

    // A socket let in on a handshake slot kept for logins must log in.
    if gate.reserved && user.is_none() {
        shared.stats.count(Reason::Handshakes);
        let n = shared.stats.dropped(Reason::Handshakes);
        if n.is_power_of_two() {
            tracing::warn!(%peer, refused = n, "anonymous CONNECT on a handshake slot kept for clients that log in; refusing");
        }
        refuse(&mut writer, v, Refusal::Busy, &shared).await;
        return;
    }
    drop(gate);

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
    let takeovers = match shared
        .sessions
        .takeover_check(&info.client_id, user.as_deref())
    {
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
    crate::session::registry::dispatch(pending, shared);
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
    match codec::encode(v, ack, &mut out) {
        Ok(_) => {
            // The client may be gone already; it is being refused anyway.
            let _ = writer.write_all(&out).await;
            let _ = writer.flush().await;
            shared.stats.bytes_sent.fetch_add(out.len() as u64, Relaxed);
            shared.stats.messages_sent.fetch_add(1, Relaxed);
        }
        Err(e) => {
            shared.stats.count(Reason::EncodeFailed);
            tracing::error!(error = %e, "cannot encode a refusing CONNACK");
        }
    }
    let _ = writer.shutdown().await;
}
