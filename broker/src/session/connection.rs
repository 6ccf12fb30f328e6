//! A session's connected period: one task drives the client's socket both
//! ways. It reads packets (handled in [`super::inbound`]), writes what the
//! [`super::flight::Outflow`] takes from the outbox, keeps the keepalive,
//! applies the publisher pushback, and ends on close, takeover or shutdown
//! (delivering what is queued first, then closing gracefully).

use firehose::report::Chain;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::time::Instant;

use super::registry::Mailbox;
use super::Pending;
use super::{End, Session};
use crate::codec::{DecodeError, Version};
use crate::outbox::Outbox;
use crate::shared::Shared;
use crate::stats::Reason;
use crate::transport::BoxIo;

/// Largest chunk moved from the queue into the write buffer at once.
pub(super) const WRITE_CHUNK: usize = 64 * 1024;
/// How long a shutdown keeps delivering to a client before closing it.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);
/// Stop reading from a client whose unread replies pile up beyond this.
pub(super) const MAX_PENDING_WRITE: usize = 1024 * 1024;
/// Longest a publisher waits, per read, for a fast reader's queue to drain.
const PUSHBACK_MAX: Duration = Duration::from_millis(250);
/// Read buffer sizes: small for idle clients, grown for publishers.
const READ_MIN: usize = 128;
const READ_MAX: usize = 64 * 1024;

impl Session {
    /// The connected loop: socket in, outbox out, one task.
    pub(super) async fn connected(
        &mut self,
        conn: Box<Pending>,
        present: bool,
        mailbox: &Mailbox,
    ) -> End {
        let mut wbuf = BytesMut::new();
        let mut wpos = 0usize;
        self.connack(&conn, present, &mut wbuf);
        let limits = self.flight_limits(&conn);
        self.outflow.connected(limits, present, &mut wbuf);
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
        let online = Online::new(&shared, &outbox);
        tracing::info!(target: crate::stats::CLIENTS, client_id = %crate::stats::short(&self.client_id), %peer, version = self.version.as_str(), user = %crate::stats::who(self.user.as_deref()), session_present = present, "client connected");
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
        // The store's watermark, for acknowledgements that wait on it.
        let mut durable = shared
            .store
            .as_ref()
            .filter(|s| s.holds_acks())
            .map(|s| s.durable());

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
                        if let (Some(t), Some(rx)) = (self.held_last(), durable.as_mut()) {
                            // The store writes what is queued before it
                            // stops; these acknowledgements are owed.
                            let _ = tokio::time::timeout(SHUTDOWN_DRAIN, rx.wait_for(|d| *d >= t)).await;
                            let now = *rx.borrow();
                            self.release_held(now, &mut wbuf);
                        }
                        Box::pin(self.drain_for_shutdown(&mut writer, &mut wbuf, &mut wpos)).await;
                        let bye = self.disconnect_packet(DisconnectReasonCode::ServerShuttingDown);
                        Box::pin(last_write(&mut writer, &wbuf[wpos..], &bye)).await;
                        Box::pin(linger(&mut writer, &mut reader)).await;
                        break End::Shutdown;
                    }
                    next = mailbox.recv() => {
                        if let Some(next) = next {
                            // What the old connection sent before the new
                            // one came counts first: a DISCONNECT that ends
                            // the session (expiry 0) must not be resumed.
                            if want_read {
                                use futures_util::FutureExt;
                                if let Some(Ok(n)) = reader.read_buf(&mut inbuf).now_or_never() {
                                    let end = if n > 0 {
                                        self.take_input(&mut inbuf, &mut wbuf, wpos, &mut writer, peer).await
                                    } else {
                                        None
                                    };
                                    if let Some(End::Closed { will: false }) = end {
                                        // A normal DISCONNECT: no will.
                                        self.will = None;
                                    }
                                }
                            }
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
                            }
                            Err(e) => {
                                tracing::debug!(client_id = %crate::stats::short(&self.client_id), %peer, error = %Chain(&e), "read failed");
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
                    now = wait_durable(durable.as_mut(), self.held_front()), if self.held.is_some() => {
                        self.release_held(now, &mut wbuf);
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
        drop(online);
        self.pressure.clear();
        // Acknowledgements for a connection that is gone: its client sends
        // those publishes again.
        self.held = None;
        tracing::info!(target: crate::stats::CLIENTS, client_id = %crate::stats::short(&self.client_id), %peer, reason = match &end { End::Takeover(_) => "takeover", End::Closed { will: true } => "connection lost", End::Closed { will: false } => "disconnect", End::Shutdown => "shutdown" }, "client disconnected");
        end
    }

    /// Runs the packets waiting in `inbuf`. Returns how the connection ends
    /// when a packet ends it (DISCONNECT, or a bad packet: counted, logged,
    /// told to v5 clients), after a last write of what is pending.
    ///
    /// Publisher pushback: the packets stop at the first publish that filled
    /// a live reader's queue to three quarters. Then it waits (at most
    /// [`PUSHBACK_MAX`] each time) until those readers drained, runs the
    /// next packets, and so on until `inbuf` is done; only then is the
    /// socket read again. Slow readers never end up here (see [`Outbox`]).
    async fn take_input(
        &mut self,
        inbuf: &mut BytesMut,
        wbuf: &mut BytesMut,
        wpos: usize,
        writer: &mut WriteHalf<BoxIo>,
        peer: SocketAddr,
    ) -> Option<End> {
        let max_packet = self.shared.cfg.limits.max_packet_size;
        loop {
            let (end, bye) = match self.incoming(inbuf, wbuf, max_packet) {
                Ok(None) if self.pressure.is_empty() => return None,
                Ok(None) => {
                    // Boxed: the wait exists only while a publisher is held.
                    Box::pin(self.wait_for_readers()).await;
                    continue;
                }
                Ok(Some(end)) => (end, BytesMut::new()),
                Err(e) => (End::Closed { will: true }, self.bad_packet(&e, peer)),
            };
            Box::pin(last_write(writer, &wbuf[wpos..], &bye)).await;
            return Some(end);
        }
    }

    /// Waits until the readers this publisher filled have drained to half
    /// (or turned slow, or [`PUSHBACK_MAX`] passed), within what is left of
    /// this publisher's budget for the current second (`pushback_budget_ms`).
    async fn wait_for_readers(&mut self) {
        let pressure = std::mem::take(&mut self.pressure);
        let start = Instant::now();
        let per_second = Duration::from_millis(self.shared.cfg.limits.pushback_budget_ms);
        let budget = self.pushback.get_or_insert_with(|| {
            Box::new(super::pushback::PushbackBudget::new(per_second, start))
        });
        let allowed = budget.allowance(start).min(PUSHBACK_MAX);
        if allowed.is_zero() {
            return;
        }
        let until = start + allowed;
        for o in pressure {
            o.wait_for_space(until).await;
        }
        let waited = Instant::now().saturating_duration_since(start);
        if let Some(b) = self.pushback.as_mut() {
            b.spend(waited);
        }
        let stats = &self.shared.stats;
        stats.pushback_waits.fetch_add(1, Relaxed);
        stats
            .pushback_wait_ms
            .fetch_add(waited.as_millis() as u64, Relaxed);
    }

    /// Counts and logs a packet that ends the connection; returns the
    /// DISCONNECT that tells a v5 client why.
    fn bad_packet(&self, e: &DecodeError, peer: SocketAddr) -> BytesMut {
        let (reason, code) = match e {
            DecodeError::TooLarge { .. } => {
                (Reason::PacketTooLarge, DisconnectReasonCode::PacketTooLarge)
            }
            DecodeError::Protocol(_) | DecodeError::ForbiddenType(_) => {
                (Reason::Malformed, DisconnectReasonCode::ProtocolError)
            }
            DecodeError::TopicAlias { .. } => {
                (Reason::Malformed, DisconnectReasonCode::TopicAliasInvalid)
            }
            _ => (Reason::Malformed, DisconnectReasonCode::MalformedPacket),
        };
        self.shared.stats.count(reason);
        tracing::warn!(client_id = %crate::stats::short(&self.client_id), %peer, error = %Chain(&e), reason = e.label(), "closing connection: bad packet");
        self.disconnect_packet(code)
    }

    /// A DISCONNECT with `code` for v5 clients; nothing for older ones,
    /// which have no server DISCONNECT.
    fn disconnect_packet(&self, code: DisconnectReasonCode) -> BytesMut {
        let mut out = BytesMut::new();
        if self.version == Version::V5 {
            let bye = Packet::Disconnect(Disconnect { reason_code: code }, None);
            self.send(bye, &mut out);
        }
        out
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
}

/// A connected period: the client counts as connected and its outbox as
/// online from [`Online::new`] until this is dropped, on every way out.
struct Online<'a> {
    shared: &'a Shared,
    outbox: &'a Outbox,
}

impl<'a> Online<'a> {
    fn new(shared: &'a Shared, outbox: &'a Outbox) -> Online<'a> {
        shared.stats.clients_connected.fetch_add(1, Relaxed);
        shared.stats.client_connects.fetch_add(1, Relaxed);
        outbox.set_blocked(false);
        outbox.set_online(true);
        shared.budget.unpark(outbox.key);
        Online { shared, outbox }
    }
}

impl Drop for Online<'_> {
    fn drop(&mut self) {
        self.shared.stats.clients_connected.fetch_sub(1, Relaxed);
        self.shared.stats.client_disconnects.fetch_add(1, Relaxed);
        self.outbox.set_online(false);
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

/// Waits until the store's watermark reaches `ticket`; returns it. Never
/// returns without a store (the branch is off then).
async fn wait_durable(
    rx: Option<&mut tokio::sync::watch::Receiver<u64>>,
    ticket: Option<u64>,
) -> u64 {
    match (rx, ticket) {
        (Some(rx), Some(t)) => {
            let reached = rx.wait_for(|d| *d >= t).await.map(|d| *d);
            match reached {
                Ok(d) => d,
                Err(_) => std::future::pending().await,
            }
        }
        _ => std::future::pending().await,
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
