//! The subscriber client: connects to a Firehose broker (`mqtt://`,
//! `mqtts://`, `ws://`, `wss://`), reconnects with capped jittered backoff
//! and subscribes again by itself, and hands out [`Subscription`]s: streams
//! of [`reader::Event`](crate::reader::Event)s, typed, whatever the
//! bridges' payload mode.
//!
//! ```no_run
//! use firehose::{Client, filter::Filter, reader::Body};
//! # async fn demo() -> Result<(), firehose::client::ClientError> {
//! let client = Client::connect("mqtt://firehose.example.org").await?;
//! let mut merges = client.subscribe(Filter::gerrit().event("change-merged")).await?;
//! while let Some(ev) = merges.next().await {
//!     if let Body::Gerrit(g) = &ev.body {
//!         println!("{} merged in {}", g.change_number().unwrap_or_default(), g.project());
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Persistent sessions ([`ClientBuilder::session`]) keep what arrives while
//! the client is away (up to the broker's queue limit); shared
//! subscriptions ([`Filter::shared`]) split events across a worker pool;
//! [`ClientBuilder::dedup`] drops the second copy of an event two redundant
//! bridges published.

use crate::report::Chain;
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::filter::Filter;
use crate::reader::{Decoder, Event};

/// Errors from connecting or subscribing; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("broker URL")]
    /// The broker URL cannot be used.
    Url(#[from] crate::url::UrlError),
    #[error(transparent)]
    /// The TLS configuration cannot be built.
    Tls(#[from] crate::tls::TlsError),
    #[error("the client has stopped")]
    /// The client's background task ended.
    Stopped,
}

/// Whether the client is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not connected yet.
    Connecting,
    /// Connected.
    Up,
    /// Lost or refused, with the reason; it keeps retrying.
    Down(String),
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    username: Option<String>,
    password: Option<String>,
    ca: Option<PathBuf>,
    session: Option<String>,
    client_id: Option<String>,
    qos: Option<u8>,
    dedup: usize,
    keep_alive: Duration,
    queue: usize,
    decoder: Decoder,
}

/// A connected (or connecting) subscriber.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    mqtt: AsyncClient,
    routes: Arc<Mutex<Routes>>,
    state: watch::Receiver<ConnectionState>,
    qos: QoS,
    queue: usize,
    decoder: Decoder,
    /// Set by [`Client::disconnect`]: the connection is not re-opened.
    closing: Arc<AtomicBool>,
    /// Dropped with the last [`Client`]: stops the connection task at once
    /// (a stale task would reconnect with the same id and take the session
    /// over from a new client).
    _stop: oneshot::Sender<()>,
}

struct Route {
    filter: Filter,
    tx: mpsc::Sender<Event>,
}

/// The subscriptions' streams, and the events no stream wanted yet.
///
/// A resumed persistent session gets what was queued for it right after
/// CONNACK, often before the program has called [`Client::subscribe`]
/// again: those events wait here (the last `queue` of them) and go to the
/// first subscription that wants them, in order, instead of being lost.
struct Routes {
    list: Vec<Route>,
    early: VecDeque<Event>,
    /// How many events may wait in `early`.
    max_early: usize,
}

impl Routes {
    fn new(max_early: usize) -> Routes {
        Routes {
            list: Vec::new(),
            early: VecDeque::new(),
            max_early,
        }
    }

    /// The streams that want `ev` (closed ones forgotten); keeps `ev` for
    /// later when there are none.
    fn targets(&mut self, ev: &Event) -> Vec<mpsc::Sender<Event>> {
        self.list.retain(|route| !route.tx.is_closed());
        let targets: Vec<_> = self
            .list
            .iter()
            .filter(|route| route.filter.wants(ev))
            .map(|route| route.tx.clone())
            .collect();
        if targets.is_empty() && self.max_early > 0 {
            if self.early.len() == self.max_early {
                self.early.pop_front();
                tracing::debug!(
                    max = self.max_early,
                    "no subscription takes the oldest waiting event; dropped"
                );
            }
            self.early.push_back(ev.clone());
        }
        targets
    }

    /// Adds a stream, handing it the waiting events it wants (the channel
    /// holds at least `max_early`, so none is refused).
    fn add(&mut self, route: Route) {
        let (wanted, rest): (VecDeque<Event>, VecDeque<Event>) = std::mem::take(&mut self.early)
            .into_iter()
            .partition(|ev| route.filter.wants(ev));
        self.early = rest;
        for ev in wanted {
            let _ = route.tx.try_send(ev);
        }
        self.list.push(route);
    }
}

/// A stream of events for one filter. Dropping it stops the delivery to it
/// (the MQTT subscription stays until the client is dropped).
pub struct Subscription {
    rx: mpsc::Receiver<Event>,
}

impl Subscription {
    /// A stream fed by another part of the SDK (catching up from history).
    #[cfg_attr(not(feature = "history"), allow(dead_code))]
    pub(crate) fn from_channel(rx: mpsc::Receiver<Event>) -> Subscription {
        Subscription { rx }
    }

    /// The next event, or `None` once the client is gone.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl futures_util::Stream for Subscription {
    type Item = Event;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

impl ClientBuilder {
    /// Credentials (readers rarely need them: the firehose is public).
    pub fn credentials(mut self, username: &str, password: &str) -> Self {
        self.username = Some(username.to_owned());
        self.password = Some(password.to_owned());
        self
    }

    /// The password alone, for the user named in the URL
    /// (`mqtt://history@host` with a password file).
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// A CA file (PEM) for `mqtts://`/`wss://`; default: the system's roots.
    pub fn ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(path.into());
        self
    }

    /// A persistent session named `name` (the client id): subscriptions at
    /// QoS 1 that the broker keeps, with what arrives while offline. What
    /// the broker kept arrives right after connecting, usually before the
    /// program subscribes again: the client holds it (up to [`queue`]
    /// events) for the first subscription that wants it.
    ///
    /// [`queue`]: ClientBuilder::queue
    pub fn session(mut self, name: &str) -> Self {
        self.session = Some(name.to_owned());
        self
    }

    /// The client id for a clean session (default: a random one).
    pub fn client_id(mut self, id: &str) -> Self {
        self.client_id = Some(id.to_owned());
        self
    }

    /// QoS of the subscriptions: 0, 1 or 2 (default 0, or 1 with a
    /// persistent session).
    pub fn qos(mut self, qos: u8) -> Self {
        self.qos = Some(qos.min(2));
        self
    }

    /// Drops an event whose id was seen among the last `window` events
    /// (redundant bridges publish the same event with the same id).
    pub fn dedup(mut self, window: usize) -> Self {
        self.dedup = window;
        self
    }

    /// Events buffered per subscription before the client waits for its
    /// reader, and events held for a subscription not made yet (default
    /// 1024).
    pub fn queue(mut self, n: usize) -> Self {
        self.queue = n.max(1);
        self
    }

    /// How messages are read: where Zuul's reports are
    /// ([`Decoder::zuul_root`]).
    pub fn decoder(mut self, decoder: Decoder) -> Self {
        self.decoder = decoder;
        self
    }

    /// The rumqttc options this builder connects with (URL, transport,
    /// TLS, credentials, session): for a program that also publishes, on
    /// its own rumqttc client.
    pub fn mqtt_options(&self) -> Result<MqttOptions, ClientError> {
        let e = crate::url::parse(&self.url, crate::url::MQTT_SCHEMES, crate::url::MQTT_FORM)?;
        let (tls, ws) = match e.scheme.as_str() {
            "mqtts" | "ssl" => (true, false),
            "ws" => (false, true),
            "wss" => (true, true),
            _ => (false, false),
        };
        let id = self
            .session
            .clone()
            .or(self.client_id.clone())
            .unwrap_or_else(|| format!("firehose-sdk-{:016x}", rand::random::<u64>()));
        let addr = if ws {
            let path = match e.path.as_str() {
                "" | "/" => "/mqtt",
                p => p,
            };
            let host = if e.host.contains(':') {
                format!("[{}]", e.host)
            } else {
                e.host.clone()
            };
            format!(
                "{}://{host}:{}{path}",
                if tls { "wss" } else { "ws" },
                e.port
            )
        } else {
            e.host.clone()
        };
        let port = e.port;
        let mut opts = MqttOptions::new(id, addr, port);
        opts.set_keep_alive(self.keep_alive);
        opts.set_clean_session(self.session.is_none());
        opts.set_max_packet_size(16 * 1024 * 1024, 64 * 1024);
        let user = self.username.clone().or(e.user.clone());
        let pass = self.password.clone().or(e.password.clone());
        if let Some(user) = user {
            opts.set_credentials(user, pass.unwrap_or_default());
        }
        if tls {
            let cfg = crate::tls::client_config(self.ca.as_deref())?;
            let t = TlsConfiguration::Rustls(cfg);
            opts.set_transport(if ws {
                Transport::wss_with_config(t)
            } else {
                Transport::tls_with_config(t)
            });
        } else if ws {
            opts.set_transport(Transport::Ws);
        }
        Ok(opts)
    }

    /// Starts the client; it connects (and reconnects) in the background.
    pub async fn connect(self) -> Result<Client, ClientError> {
        let opts = self.mqtt_options()?;
        let shown = crate::url::redact(&self.url);
        let (mqtt, eventloop) = AsyncClient::new(opts, 256);
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connecting);
        let qos = match (self.qos, self.session.is_some()) {
            (Some(2), _) => QoS::ExactlyOnce,
            (Some(1), _) | (None, true) => QoS::AtLeastOnce,
            _ => QoS::AtMostOnce,
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let closing = Arc::new(AtomicBool::new(false));
        let inner = Arc::new(Inner {
            mqtt: mqtt.clone(),
            routes: Arc::new(Mutex::new(Routes::new(self.queue))),
            state: state_rx,
            qos,
            queue: self.queue,
            decoder: self.decoder.clone(),
            closing: closing.clone(),
            _stop: stop_tx,
        });
        tokio::spawn(drive(
            eventloop,
            mqtt,
            Stop {
                dropped: stop_rx,
                closing,
            },
            inner.routes.clone(),
            state_tx,
            Dedup::new(self.dedup),
            qos,
            shown,
            self.decoder,
        ));
        Ok(Client { inner })
    }
}

impl Client {
    /// How to connect to `url`; see [`ClientBuilder`].
    pub fn builder(url: &str) -> ClientBuilder {
        ClientBuilder {
            url: url.to_owned(),
            username: None,
            password: None,
            ca: None,
            session: None,
            client_id: None,
            qos: None,
            dedup: 0,
            keep_alive: Duration::from_secs(30),
            queue: 1024,
            decoder: Decoder::DEFAULT,
        }
    }

    /// Connects to `url` with the defaults (clean session, no dedup).
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Client::builder(url).connect().await
    }

    /// How this client reads messages (for events it gets elsewhere, such
    /// as a history page, read the same way).
    pub fn decoder(&self) -> &Decoder {
        &self.inner.decoder
    }

    /// Subscribes to `filter`; events arrive on the returned stream.
    pub async fn subscribe(&self, filter: impl Into<Filter>) -> Result<Subscription, ClientError> {
        let filter = filter.into();
        let (tx, rx) = mpsc::channel(self.inner.queue);
        let mqtt_filter = filter.mqtt();
        self.inner
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(Route { filter, tx });
        self.inner
            .mqtt
            .subscribe(mqtt_filter, self.inner.qos)
            .await
            .map_err(|_| ClientError::Stopped)?;
        Ok(Subscription { rx })
    }

    /// The connection state now and as it changes.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    /// Waits until the client is connected (or `timeout`); true if it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut st = self.state();
        tokio::time::timeout(timeout, st.wait_for(|s| *s == ConnectionState::Up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Disconnects cleanly and for good (a persistent session stays on
    /// the broker, for the next client with its name).
    pub async fn disconnect(&self) {
        self.inner.closing.store(true, Ordering::Release);
        let _ = self.inner.mqtt.disconnect().await;
    }
}

/// How the connection task learns it must end.
struct Stop {
    /// Resolves (with an error) when the last `Client` is dropped.
    dropped: oneshot::Receiver<()>,
    closing: Arc<AtomicBool>,
}

/// Remembers the last `window` event ids.
struct Dedup {
    window: usize,
    seen: HashSet<String>,
    order: VecDeque<String>,
}

impl Dedup {
    fn new(window: usize) -> Dedup {
        Dedup {
            window,
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// True when `id` was seen recently (a duplicate).
    fn repeat(&mut self, id: Option<&str>) -> bool {
        let (Some(id), true) = (id, self.window > 0) else {
            return false;
        };
        if self.seen.contains(id) {
            return true;
        }
        self.seen.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        if self.order.len() > self.window {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        false
    }
}

/// Polls the connection until the client is dropped: reconnects with
/// backoff, subscribes again when the broker kept no session, and routes
/// each message to the subscriptions that want it.
/// Why a connection failed, said so a reader can act on it.
fn reason(e: &rumqttc::ConnectionError, url: &str) -> String {
    match e {
        // An HTTP answer ("HTTP/1.1 400 ...") read as MQTT: its first
        // byte, 'H', is a PUBACK's packet type.
        rumqttc::ConnectionError::NotConnAck(_) if url.starts_with("mqtt") => format!(
            "{e}: this port does not speak MQTT over TCP (a websocket or HTTP port?); try ws://HOST:PORT/mqtt"
        ),
        _ => e.to_string(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    mut eventloop: rumqttc::EventLoop,
    mqtt: AsyncClient,
    mut stop: Stop,
    routes: Arc<Mutex<Routes>>,
    state: watch::Sender<ConnectionState>,
    mut dedup: Dedup,
    qos: QoS,
    url: String,
    decoder: Decoder,
) {
    let mut backoff = crate::backoff::Backoff::default();
    loop {
        // Only the client's end cancels a poll: rumqttc's poll must not be
        // dropped while it connects or reads.
        let polled = tokio::select! {
            biased;
            _ = &mut stop.dropped => return,
            p = eventloop.poll() => p,
        };
        match polled {
            Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                state.send_replace(ConnectionState::Up);
                tracing::debug!(%url, session_present = ack.session_present, "connected");
                if !ack.session_present {
                    let filters: Vec<String> = routes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .list
                        .iter()
                        .map(|r| r.filter.mqtt())
                        .collect();
                    for f in filters {
                        if mqtt.try_subscribe(f, qos).is_err() {
                            break;
                        }
                    }
                }
            }
            Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                let ev = decoder.decode_bytes(&p.topic, p.payload, p.retain);
                if dedup.repeat(ev.id.as_deref()) {
                    continue;
                }
                let targets = routes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .targets(&ev);
                // Waits for a slow reader: backpressure, not loss. The last
                // (usually the only) subscription gets the event itself.
                if let Some((last, others)) = targets.split_last() {
                    for tx in others {
                        let _ = tx.send(ev.clone()).await;
                    }
                    let _ = last.send(ev).await;
                }
            }
            Ok(_) => {}
            Err(e) if stop.closing.load(Ordering::Acquire) => {
                state.send_replace(ConnectionState::Down(format!("disconnected ({e})")));
                return;
            }
            Err(e) => {
                state.send_replace(ConnectionState::Down(reason(&e, &url)));
                let delay = backoff.next_delay();
                tracing::debug!(%url, error = %Chain(&e), retry_in = ?delay, "connection lost; reconnecting");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(topic: &str) -> Event {
        crate::reader::decode(topic, b"{}", false)
    }

    #[test]
    fn events_nobody_wanted_wait_for_the_first_subscription_that_does() {
        let mut r = Routes::new(2);
        for t in ["gerrit/a/x", "nova/c/y", "gerrit/b/z"] {
            assert!(r.targets(&ev(t)).is_empty());
        }
        // Bounded: the oldest went.
        let topics: Vec<&str> = r.early.iter().map(|e| e.topic.as_str()).collect();
        assert_eq!(topics, ["nova/c/y", "gerrit/b/z"]);
        let (tx, mut rx) = mpsc::channel(2);
        r.add(Route {
            filter: Filter::gerrit(),
            tx,
        });
        assert_eq!(
            rx.try_recv().map(|e| e.topic).ok().as_deref(),
            Some("gerrit/b/z")
        );
        assert!(rx.try_recv().is_err());
        assert_eq!(r.early.len(), 1, "the nova event still waits");
        assert_eq!(r.targets(&ev("gerrit/c/w")).len(), 1);
        assert_eq!(r.early.len(), 1, "a routed event does not wait");
    }
}
