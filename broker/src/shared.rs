//! The state every connection and session shares, below them all: the
//! config, counters, auth, router, budget and store, the shutdown signal,
//! the `$SYS` snapshot and the socket counts. It names no session, no
//! connection and no listener (those depend on it, never the reverse;
//! `scripts/check-cycles` holds that), so the broker's own publishers get
//! a narrow [`Internal`] handle to it and nothing more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

use crate::auth::Auth;
use crate::config::Config;
use crate::outbox::Budget;
use crate::router::Router;
use crate::stats::Stats;
use crate::store::{Record, Store};

/// The current `$SYS` values, published to sessions on every interval.
pub(crate) type SysSnapshot = Arc<Vec<(String, Bytes)>>;

/// State shared by every connection and session.
pub(crate) struct Shared {
    pub(crate) cfg: Config,
    pub(crate) stats: Arc<Stats>,
    pub(crate) auth: Auth,
    pub(crate) router: Router,
    /// The broker-wide queued-bytes budget every outbox reports to.
    pub(crate) budget: Arc<Budget>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) sys: watch::Sender<SysSnapshot>,
    pub(crate) open_sockets: AtomicUsize,
    /// Connected sessions still reading from their clients (see shutdown).
    pub(crate) reading: AtomicUsize,
    /// Notified when `reading` drops to zero.
    pub(crate) reading_stopped: tokio::sync::Notify,
    /// Open sockets per peer address, for `max_connections_per_ip`.
    pub(crate) per_ip: Mutex<HashMap<std::net::IpAddr, u32>>,
    /// Sockets that have not finished CONNECT, capped (see [`crate::gate`]).
    pub(crate) gate: Arc<crate::gate::Gate>,
    /// The persistent store (`--persistence`), if any.
    pub(crate) store: Option<Store>,
}

impl Shared {
    /// Publishes from inside the broker (the demo, a mirror edge's
    /// upstream) as a client would: through the router, under the current
    /// ACL snapshot, with origin 0 (no session has it, so no-local never
    /// hides these). Nobody is pushed back: these publishers are not
    /// sockets that could be paused.
    pub(crate) fn publish_internal(
        &self,
        topic: bytes::Bytes,
        payload: bytes::Bytes,
        qos: u8,
        retain: bool,
    ) {
        let msg = crate::message::Message::new(topic, payload, qos, retain, None, 0);
        self.stats.publish_received.fetch_add(1, Relaxed);
        let policy = self.auth.policy();
        let mut pressure = Vec::new();
        self.publish(&msg, &policy, &mut pressure, None);
    }

    /// The one way a message enters the broker: the router fans it out
    /// (see [`Router::publish`]), then the store learns which persistent
    /// sessions hold it. `with` is a record that must reach the disk in the
    /// same write as the message's (a QoS 2 packet id the publisher's
    /// session now holds: if the id were on disk without the message, the
    /// publisher's re-sent PUBLISH would be taken for a duplicate after a
    /// crash and the message lost). Returns the store's ticket when
    /// something was written: a PUBACK for `msg` must wait until it is
    /// durable ([`Store::durable`]).
    pub(crate) fn publish(
        &self,
        msg: &Arc<crate::message::Message>,
        policy: &crate::auth::Policy,
        pressure: &mut Vec<Arc<crate::outbox::Outbox>>,
        with: Option<Record>,
    ) -> Option<u64> {
        let f = self.router.publish(msg, policy, pressure);
        let store = self.store.as_ref()?;
        let rec = if f.more {
            Record::Queued {
                seq: msg.seq(),
                targets: f.targets,
            }
        } else if !f.targets.is_empty() {
            Record::Msg {
                msg: msg.clone(),
                retained: false,
                targets: f.targets,
                more: false,
            }
        } else {
            return match with {
                Some(w) => Some(store.submit(w)),
                None => f.logged,
            };
        };
        // One submit: the writer takes both in one batch, one write.
        Some(store.submit_all(std::iter::once(rec).chain(with)))
    }

    /// Sockets open from `ip`, this one included.
    pub(crate) fn connections_from(&self, ip: std::net::IpAddr) -> u32 {
        let m = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&ip).copied().unwrap_or(0)
    }

    fn track(&self, ip: std::net::IpAddr, open: bool) {
        if open {
            self.open_sockets.fetch_add(1, Relaxed);
        } else {
            self.open_sockets.fetch_sub(1, Relaxed);
        }
        let mut m = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if open {
            *m.entry(ip).or_default() += 1;
        } else if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// One accepted socket, counted (in total and per address) for as long as
/// it lives: it travels with the connection into its session.
pub(crate) struct SocketSlot {
    shared: Arc<Shared>,
    ip: std::net::IpAddr,
}

impl SocketSlot {
    pub(crate) fn new(shared: Arc<Shared>, ip: std::net::IpAddr) -> SocketSlot {
        shared.track(ip, true);
        SocketSlot { shared, ip }
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.shared.track(self.ip, false);
    }
}

/// What the broker's own publishers (the demo, a mirror edge's upstream)
/// may do with the shared state: publish through the router, count, and
/// watch for shutdown. Not the whole [`Shared`]: they are clients, not
/// sessions.
#[derive(Clone)]
pub(crate) struct Internal(Arc<Shared>);

impl Internal {
    pub(crate) fn new(shared: Arc<Shared>) -> Internal {
        Internal(shared)
    }

    /// See [`Shared::publish_internal`].
    pub(crate) fn publish(&self, topic: Bytes, payload: Bytes, qos: u8, retain: bool) {
        self.0.publish_internal(topic, payload, qos, retain);
    }

    /// Changes to `true` when the broker shuts down.
    pub(crate) fn shutdown(&self) -> watch::Receiver<bool> {
        self.0.shutdown.clone()
    }

    /// The counters (the upstream's connection state and messages).
    pub(crate) fn stats(&self) -> &Stats {
        &self.0.stats
    }
}
