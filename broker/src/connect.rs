//! The way in: from an accepted byte stream to a session.
//!
//! Reads the CONNECT under the handshake timeout and parses it (3.1, 3.1.1
//! or 5); [`crate::admission::admit`], a pure function, decides it (client
//! id, login, will, keepalive, capacity); then the registry's takeover
//! rules. Every refusal goes through one path: counted, logged at powers of
//! two per reason, answered with the CONNACK code for the client's version.
//! A connection that passes is handed to the session task for its client
//! id ([`crate::session`]).

use firehose::report::Chain;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::BytesMut;
use rumqttd::protocol::{ConnAck, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};

use crate::codec::{self, ConnectError, Refusal, Version};
use crate::session::{Hub, Pending};
use crate::shared::{Shared, SocketSlot};
use crate::stats::Reason;
use crate::transport::BoxIo;

/// Serves one accepted MQTT byte stream from CONNECT to close.
pub(crate) async fn serve(
    io: BoxIo,
    peer: SocketAddr,
    slot: SocketSlot,
    gate: crate::gate::Slot,
    hub: Arc<Hub>,
) {
    let shared: &Shared = &hub;
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
            let (v, answer) = match answer {
                Some((v, code)) => (v, Some(code)),
                None => (Version::V311, None),
            };
            let r = crate::admission::Refused {
                reason,
                answer,
                why: e.to_string(),
                user: None,
            };
            return refuse_counted(&mut writer, v, r, "", peer, shared).await;
        }
    };
    let v = info.version;
    let who_log = info.login.as_ref().map(|l| l.username.clone());
    let counts = crate::admission::Counts {
        connected: shared.stats.clients_connected.load(Relaxed),
        from_ip: shared.connections_from(peer.ip()),
        reserved_slot: gate.reserved,
    };
    let policy = shared.auth.policy();
    let admitted = crate::admission::admit(&info, &policy, &shared.cfg, counts, || {
        format!("auto-{:016x}", rand::random::<u64>())
    });
    // The socket is past its handshake either way.
    drop(gate);
    let a = match admitted {
        Ok(a) => a,
        Err(mut r) => {
            // A refused login is logged with the name it claimed.
            r.user = r.user.or(who_log);
            return refuse_counted(&mut writer, v, r, &info.client_id, peer, shared).await;
        }
    };
    let mut info = info;
    info.client_id = a.client_id;

    // Takeover of a client id in use (the registry's rules, counted there).
    let takeovers = match hub
        .registry
        .takeover_check(&info.client_id, a.user.as_deref())
    {
        Ok(t) => t,
        Err(reason) => {
            let r = crate::admission::Refused {
                reason,
                answer: Some(Refusal::BadClientId),
                why: "the client id belongs to another user's session, or changed hands too often"
                    .into(),
                user: a.user.clone(),
            };
            return refuse_counted(&mut writer, v, r, &info.client_id, peer, shared).await;
        }
    };
    let (user, keep_alive, server_keep_alive, assigned_id) =
        (a.user, a.keep_alive, a.server_keep_alive, a.assigned_id);

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
    crate::session::dispatch(pending, hub);
}

/// The one refuse path: counts the reason, logs it (the first time and
/// then at powers of two, per reason, so a flood cannot fill the log), and
/// answers with the CONNACK code for the client's version, or closes.
async fn refuse_counted(
    writer: &mut WriteHalf<BoxIo>,
    v: Version,
    r: crate::admission::Refused,
    client_id: &str,
    peer: SocketAddr,
    shared: &Shared,
) {
    shared.stats.count(r.reason);
    let n = shared.stats.dropped(r.reason);
    if n.is_power_of_two() {
        tracing::warn!(%peer, client_id = %crate::stats::short(client_id), user = %crate::stats::who(r.user.as_deref()), reason = r.reason.name(), why = %r.why, refused = n, "CONNECT refused");
    }
    if let Some(code) = r.answer {
        refuse(writer, v, code, shared).await;
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
            tracing::error!(error = %Chain(&e), "cannot encode a refusing CONNACK");
        }
    }
    let _ = writer.shutdown().await;
}
