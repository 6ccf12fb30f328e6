//! Assembles the broker: router, auth, listeners, `$SYS` publisher, and the
//! state every session shares. [`Broker::start`] is what the binary and the
//! tests call.

use firehose::report::Chain;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::auth::{Auth, AuthError};
use crate::config::Config;
use crate::connect;
use crate::outbox::Budget;
use crate::router::{Router, RouterLimits};
use crate::session::Hub;
use crate::shared::{Internal, Shared, SocketSlot};
use crate::stats::{Reason, Stats};
use crate::store::Store;
use crate::transport::{self, Accepted, HttpHandler, Kind, TlsError};

/// Errors starting the broker.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Bind(std::io::Error),
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A running broker.
pub struct Broker {
    hub: Arc<Hub>,
    shutdown_tx: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// Bound addresses by listener kind, in config order (port 0 resolved).
    pub addrs: Vec<(Kind, SocketAddr)>,
}

impl Broker {
    /// Loads auth files, binds every listener and starts serving.
    pub async fn start(cfg: Config) -> Result<Broker, StartError> {
        let auth = Auth::new(cfg.auth.clone())?;
        let tls = match (&cfg.tls.cert, &cfg.tls.key) {
            (Some(c), Some(k)) => {
                Some(transport::tls_acceptor(c, k, cfg.tls.client_ca.as_deref())?)
            }
            _ => None,
        };
        let mut listeners: Vec<(Kind, TcpListener)> = Vec::new();
        let l = &cfg.listeners;
        for (kind, addrs) in [
            (Kind::Mqtt, &l.mqtt),
            (Kind::Mqtts, &l.mqtts),
            (Kind::Ws, &l.ws),
            (Kind::Wss, &l.wss),
        ] {
            for a in addrs {
                listeners.push((
                    kind,
                    transport::bind(*a, kind).await.map_err(StartError::Bind)?,
                ));
            }
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let stats = Arc::new(Stats::default());
        let opened = match &cfg.persistence.dir {
            Some(dir) => Some(Store::open(
                dir,
                cfg.persistence.fsync,
                cfg.persistence.queue_memory,
                stats.clone(),
            )?),
            None => None,
        };
        let (sys_tx, _) = watch::channel(Arc::new(Vec::new()));
        let budget = Budget::new(cfg.limits.max_queued_bytes_total, stats.clone());
        let mut router = Router::new(
            RouterLimits {
                max_filters: cfg.limits.max_filters,
                max_retained_messages: cfg.limits.max_retained_messages,
                max_retained_bytes: cfg.limits.max_retained_bytes,
            },
            budget.clone(),
            stats.clone(),
        );
        if let Some(p) = &opened {
            router.set_store(p.store.clone());
        }
        let cfg_limits = cfg.limits.clone();
        let reserved_handshakes = cfg.reserved_handshakes();
        let shared = Arc::new(Shared {
            budget,
            cfg,
            stats,
            auth,
            router,
            shutdown: shutdown_rx,
            sys: sys_tx,
            open_sockets: AtomicUsize::new(0),
            reading: AtomicUsize::new(0),
            reading_stopped: tokio::sync::Notify::new(),
            per_ip: Mutex::new(HashMap::new()),
            gate: crate::gate::Gate::new(
                cfg_limits.max_handshakes,
                reserved_handshakes,
                cfg_limits.max_handshakes_per_ip,
            ),
            store: opened.as_ref().map(|p| p.store.clone()),
        });
        let hub = Arc::new(Hub::new(shared.clone()));
        if let Some(p) = opened {
            crate::session::restore::all(&hub, &p);
            p.start()?;
        }
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        let tls = tls.map(Arc::new);
        for (kind, listener) in listeners {
            let addr = listener.local_addr().map_err(StartError::Bind)?;
            tracing::info!(listener = kind.as_str(), %addr, "listening");
            let page = match kind {
                Kind::Ws => Some("http"),
                Kind::Wss => Some("https"),
                _ => None,
            };
            if let Some(scheme) = page {
                // Where a newcomer looks first: the stream in a browser.
                tracing::info!(url = %format!("{scheme}://{addr}/"), "live page");
            }
            addrs.push((kind, addr));
            tasks.spawn(accept_loop(kind, listener, tls.clone(), hub.clone()));
        }
        tasks.spawn(sys_loop(shared.clone()));
        tasks.spawn(client_summary(shared.clone()));
        if shared.cfg.demo {
            tasks.spawn(crate::demo::run(Internal::new(shared.clone())));
        }
        if let Some(url) = &shared.cfg.upstream.url {
            let opts = crate::upstream::options(&shared.cfg.upstream)?;
            tasks.spawn(crate::upstream::run(
                Internal::new(shared.clone()),
                opts,
                firehose::url::redact(url),
            ));
        }
        publish_sys(&shared);
        let p = shared.auth.policy();
        tracing::info!(
            users = p.users(),
            acl = shared.cfg.auth.acl_file.is_some(),
            anonymous = shared.cfg.auth.allow_anonymous,
            "auth loaded"
        );
        Ok(Broker {
            hub,
            shutdown_tx,
            tasks,
            addrs,
        })
    }

    /// `--check-config`: loads what [`Broker::start`] would (the password
    /// and ACL files, the TLS files, the upstream settings) without binding
    /// or starting anything.
    pub fn check(cfg: &Config) -> Result<(), StartError> {
        Auth::new(cfg.auth.clone())?;
        if let (Some(c), Some(k)) = (&cfg.tls.cert, &cfg.tls.key) {
            transport::tls_acceptor(c, k, cfg.tls.client_ca.as_deref())?;
        }
        if cfg.upstream.url.is_some() {
            crate::upstream::options(&cfg.upstream)?;
        }
        Ok(())
    }

    /// Re-reads the password and ACL files (SIGHUP). On error the old ones stay.
    pub fn reload(&self) -> Result<(), AuthError> {
        match self.hub.auth.reload() {
            Ok(p) => {
                tracing::info!(users = p.users(), "password and ACL files reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %Chain(&e), "reload failed; keeping the previous password and ACL files");
                Err(e)
            }
        }
    }

    /// Stops accepting, tells connected v5 clients 0x8B, and waits (bounded)
    /// for sessions to close.
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down");
        let _ = self.shutdown_tx.send(true);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        // Sessions deliver what they still have (up to 2 s each, at once),
        // then close their sockets (up to 1 s more).
        if !self.hub.registry.wait_closed(Duration::from_secs(4)).await {
            tracing::warn!(
                sessions = self.hub.registry.tasks(),
                "sessions still open after 4 s; exiting anyway"
            );
        }
        if let Some(store) = &self.hub.store {
            // Everything the sessions wrote on their way out, synced.
            let store = store.clone();
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
        tracing::info!("shutdown complete");
    }
}

struct Http {
    shared: Arc<Shared>,
    /// The live page as served (rendered once: it depends on the config only).
    live: String,
}

/// The live page: the stream itself over MQTT over websockets, with a
/// status panel (`live.html`, no outside scripts).
const LIVE: &str = include_str!("live.html");
/// The broker's own statistics, refreshed from `/stats.json`.
const STATUS_PAGE: &str = include_str!("page.html");

/// The live page, told where firehose-history's page is (its
/// `<meta name="firehose-history">`), if anywhere.
fn live_page(history_url: Option<&str>) -> String {
    match history_url {
        // The config refused quotes and angle brackets; & is the one
        // character left to escape in an attribute.
        Some(url) => LIVE.replacen(
            HISTORY_META,
            &HISTORY_META.replace(
                "content=\"\"",
                &format!(
                    "content=\"{}\"",
                    url.trim_end_matches('/').replace('&', "&amp;")
                ),
            ),
            1,
        ),
        None => LIVE.to_owned(),
    }
}

const HISTORY_META: &str = r#"<meta name="firehose-history" content="">"#;

impl HttpHandler for Http {
    fn get(&self, path: &str) -> Option<(u16, &'static str, String)> {
        let path = path.split('?').next().unwrap_or("");
        match path {
            "/healthz" => Some((
                200,
                "text/plain; charset=utf-8",
                format!("ok {}\n", crate::stats::VERSION),
            )),
            "/metrics" => Some((
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.shared.stats.prometheus(),
            )),
            "/stats.json" => {
                let m: serde_json::Map<String, serde_json::Value> = self
                    .shared
                    .stats
                    .sys_topics()
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect();
                Some((
                    200,
                    "application/json",
                    serde_json::Value::Object(m).to_string(),
                ))
            }
            "/" | "/index.html" => Some((200, "text/html; charset=utf-8", self.live.clone())),
            "/status" => Some((200, "text/html; charset=utf-8", STATUS_PAGE.to_owned())),
            _ => None,
        }
    }
}

async fn accept_loop(
    kind: Kind,
    listener: TcpListener,
    tls: Option<Arc<TlsAcceptor>>,
    hub: Arc<Hub>,
) {
    let shared = hub.shared().clone();
    let http: Arc<dyn HttpHandler> = Arc::new(Http {
        live: live_page(shared.cfg.history_url.as_deref()),
        shared: shared.clone(),
    });
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(listener = kind.as_str(), error = %Chain(&e), "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        shared.stats.connections_total.fetch_add(1, Relaxed);
        // Sockets in a handshake or before CONNECT are capped in total and
        // per address, so a flood of idle sockets cannot exhaust memory or
        // file descriptors, nor lock bridges out (see `gate`).
        let gate = match shared.gate.enter(peer.ip()) {
            Ok(g) => g,
            Err(reason) => {
                shared.stats.count(reason);
                let n = shared.stats.dropped(reason);
                if n.is_power_of_two() {
                    tracing::warn!(listener = kind.as_str(), %peer, reason = reason.name(), max_handshakes = shared.cfg.limits.max_handshakes, max_handshakes_per_ip = shared.cfg.limits.max_handshakes_per_ip, refused = n, "too many sockets in a handshake; closing");
                }
                continue;
            }
        };
        let local = tcp
            .local_addr()
            .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |a| a.ip());
        let (shared, hub) = (shared.clone(), hub.clone());
        let tls = tls.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let slot = SocketSlot::new(shared.clone(), peer.ip());
            let max_packet = shared.cfg.limits.max_packet_size;
            let hs = tokio::time::timeout(
                shared.cfg.handshake_timeout(),
                transport::handshake(
                    kind,
                    tcp,
                    tls.as_deref(),
                    http.as_ref(),
                    max_packet,
                    transport::WsRules {
                        local,
                        allowed_origins: &shared.cfg.listeners.ws_allowed_origins,
                    },
                ),
            )
            .await;
            match hs {
                Err(_) => {
                    shared.stats.count(Reason::HandshakeTimeout);
                    tracing::debug!(listener = kind.as_str(), %peer, "handshake timed out");
                }
                Ok(Err(e @ transport::HandshakeError::Origin(_))) => {
                    shared.stats.count(Reason::WsOrigin);
                    tracing::warn!(listener = kind.as_str(), %peer, error = %Chain(&e), "websocket refused");
                }
                Ok(Err(e)) => {
                    shared.stats.count(Reason::HandshakeFailed);
                    tracing::info!(listener = kind.as_str(), %peer, error = %Chain(&e), "handshake failed");
                }
                Ok(Ok(Accepted::Answered)) => {}
                Ok(Ok(Accepted::Mqtt(io))) => connect::serve(io, peer, slot, gate, hub).await,
            }
        });
    }
}

fn publish_sys(shared: &Shared) {
    let snap: Vec<(String, Bytes)> = shared
        .stats
        .sys_topics()
        .into_iter()
        .map(|(k, v)| (k, Bytes::from(v)))
        .collect();
    shared.sys.send_replace(Arc::new(snap));
}

async fn sys_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(shared.cfg.sys_interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut trim = Trim::default();
    loop {
        tick.tick().await;
        let purged = shared.router.purge_expired();
        if purged > 0 {
            tracing::debug!(purged, "expired retained messages dropped");
        }
        publish_sys(&shared);
        let s = &shared.stats;
        if trim.after_tick(s.sessions.load(Relaxed), s.publish_sent.load(Relaxed)) {
            release_free_memory();
        }
    }
}

/// Once a minute, at info: how many clients came and went. Each connect
/// and disconnect is logged only with `--verbose` (target [`crate::stats::CLIENTS`]).
async fn client_summary(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let s = &shared.stats;
    let (mut came, mut left) = (0, 0);
    loop {
        tick.tick().await;
        let (c, l) = (
            s.client_connects.load(Relaxed),
            s.client_disconnects.load(Relaxed),
        );
        if (c, l) != (came, left) {
            tracing::info!(
                connected = s.clients_connected.load(Relaxed),
                came = c - came,
                left = l - left,
                "clients in the last minute"
            );
        }
        (came, left) = (c, l);
    }
}

/// Decides when to give memory back to the OS.
///
/// glibc's malloc keeps freed memory in its arenas: after thousands of
/// clients disconnect, or after a burst of millions of deliveries drained,
/// it stays resident (measured in BENCHMARKS.md). So `malloc_trim` runs on a
/// `$SYS` tick when the session count has fallen by half (and by at least
/// 1,000) since its peak, or when deliveries stopped after at least
/// 1,000,000 since the last trim. It costs milliseconds, at most once a tick.
#[derive(Debug, Default)]
struct Trim {
    peak_sessions: i64,
    sent_at_trim: u64,
    sent_last_tick: u64,
}

impl Trim {
    fn after_tick(&mut self, sessions: i64, sent: u64) -> bool {
        self.peak_sessions = self.peak_sessions.max(sessions);
        let wave_left = self.peak_sessions - sessions >= 1000 && sessions * 2 <= self.peak_sessions;
        let burst_over = sent == self.sent_last_tick && sent - self.sent_at_trim >= 1_000_000;
        self.sent_last_tick = sent;
        if wave_left || burst_over {
            self.peak_sessions = sessions;
            self.sent_at_trim = sent;
            return true;
        }
        false
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own arenas.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(released = released != 0, "returned free memory to the OS");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

#[cfg(test)]
mod tests {
    use super::{live_page, Trim, HISTORY_META, LIVE};

    #[test]
    fn the_live_page_learns_where_the_history_is() {
        assert_eq!(LIVE.matches(HISTORY_META).count(), 1);
        assert_eq!(live_page(None), LIVE);
        let page = live_page(Some("https://h.example/history/?a=1&b=2"));
        assert!(
            page.contains(
                r#"<meta name="firehose-history" content="https://h.example/history/?a=1&amp;b=2">"#
            ),
            "{page}"
        );
    }

    #[test]
    fn trims_after_a_wave_of_disconnects_or_a_drained_burst() {
        let mut t = Trim::default();
        assert!(!t.after_tick(5_000, 0));
        assert!(!t.after_tick(4_000, 0), "a fifth left: not yet");
        assert!(t.after_tick(2_000, 0), "more than half left");
        assert!(!t.after_tick(2_000, 0), "once per wave");
        assert!(!t.after_tick(2_000, 900_000));
        assert!(!t.after_tick(2_000, 1_500_000), "still delivering");
        assert!(t.after_tick(2_000, 1_500_000), "burst over");
        assert!(!t.after_tick(2_000, 1_500_000));
    }
}
