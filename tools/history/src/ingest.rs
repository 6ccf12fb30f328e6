//! The ingester: a persistent MQTT session at QoS 1 whose deliveries are
//! acknowledged only once they are committed, so a restart of
//! firehose-history (or of the broker) loses nothing, and the store's
//! unique event ids make the redelivery harmless (nothing stored twice).
//!
//! Two tasks: the MQTT event loop reads deliveries and hands them over; the
//! writer commits whatever has arrived as one batch (no waiting for a
//! batch to fill: under load batches grow to the broker's in-flight window
//! by themselves) and hands back their packet ids, which the event loop
//! writes as PUBACKs all at once, in one write to the socket (through
//! rumqttc's request channel each would be a write of its own: at 20,000
//! events/s that was an eighth of history's CPU). A slow or failing
//! database only delays the PUBACKs: the broker holds the rest in this
//! session's own queue, so the bus and its publishers never wait for it.

use firehose::report::Chain;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use firehose::backoff::Backoff;
use rumqttc::{
    AsyncClient, Event as MqttEvent, EventLoop, Packet, PubAck, QoS, SubscribeReasonCode,
};
use tokio::sync::mpsc;

use crate::fields::{row, Row};
use crate::stats::Stats;
use crate::store::Store;

/// Where and what to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestConfig {
    /// `mqtt://`, `mqtts://`, `ws://`, `wss://`.
    pub broker: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// CA certificate(s) (PEM) for `mqtts://` and `wss://`.
    pub ca: Option<PathBuf>,
    /// The persistent session's client id.
    pub session: String,
    /// Topic filters (default `#`; never `$SYS`).
    pub filters: Vec<String>,
    /// A shared-subscription group: several ingesters split the events,
    /// each stored once.
    pub share: Option<String>,
    /// Events per batch at most.
    pub batch: usize,
    /// Where Zuul's reports are ([`firehose::reader::Decoder::zuul_root`]).
    pub zuul_root: String,
}

/// Why ingesting cannot start.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Client(#[from] firehose::client::ClientError),
    #[error("filter {0:?}: $SYS is the broker's own state, not events; firehose-history never stores it")]
    Sys(String),
}

/// Unix ms now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl IngestConfig {
    /// The MQTT filters subscribed to (with the `$share` prefix when set).
    pub fn subscriptions(&self) -> Result<Vec<String>, IngestError> {
        self.filters
            .iter()
            .map(|f| {
                if f.starts_with('$') {
                    return Err(IngestError::Sys(f.clone()));
                }
                Ok(match &self.share {
                    Some(g) => format!("$share/{g}/{f}"),
                    None => f.clone(),
                })
            })
            .collect()
    }
}

/// Reads from the broker and stores until `stop` resolves; then commits
/// and acknowledges what has arrived, and disconnects.
pub async fn run(
    cfg: IngestConfig,
    store: Store,
    stats: Arc<Stats>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), IngestError> {
    let subs = cfg.subscriptions()?;
    let mut b = firehose::Client::builder(&cfg.broker)
        .session(&cfg.session)
        .qos(1);
    match (&cfg.username, &cfg.password) {
        (Some(u), p) => b = b.credentials(u, p.as_deref().unwrap_or_default()),
        // The user is the URL's (mqtt://history@host), the password a file's.
        (None, Some(p)) => b = b.password(p),
        (None, None) => {}
    }
    if let Some(ca) = &cfg.ca {
        b = b.ca(ca.clone());
    }
    let mut opts = b.mqtt_options()?;
    opts.set_manual_acks(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    // The broker sends at most its in-flight window before our PUBACKs:
    // this channel never fills beyond it, so the event loop (and its
    // keep-alive) never waits for the database.
    let (tx, rx) = mpsc::channel::<(Row, u16)>(65_536);
    let (acks_tx, mut acks_rx) = mpsc::unbounded_channel::<Vec<u16>>();
    let writer = tokio::spawn(write(rx, acks_tx, store, stats.clone(), cfg.batch));
    let shown = firehose::url::redact(&cfg.broker);
    let decoder = firehose::reader::Decoder::new().zuul_root(&cfg.zuul_root);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    tokio::pin!(stop);
    loop {
        let ev = tokio::select! {
            biased;
            _ = &mut stop => break,
            // Only between packets of a connection: cancelling rumqttc's
            // poll there is safe (a packet read in part stays in its
            // codec's buffer); a connect is never cut short.
            Some(pkids) = acks_rx.recv(), if eventloop.network.is_some() => {
                send_acks(&mut eventloop, pkids, &mut acks_rx).await;
                continue;
            }
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                stats.connected.store(1, Relaxed);
                tracing::info!(broker = %shown, session = %cfg.session, resumed = ack.session_present, "connected");
                for f in &subs {
                    if client.subscribe(f.clone(), QoS::AtLeastOnce).await.is_err() {
                        break;
                    }
                }
            }
            Ok(MqttEvent::Incoming(Packet::SubAck(s))) => {
                if s.return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    tracing::error!(filters = ?subs, "the broker refused a subscription");
                }
            }
            Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                let topic = p.topic.clone();
                let ev = decoder.decode_bytes(&topic, p.payload.clone(), p.retain);
                let r = row(&ev, now_ms());
                if tx.send((r, p.pkid)).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                stats.disconnects.fetch_add(1, Relaxed);
                stats.connected.store(0, Relaxed);
                let delay = backoff.next_delay();
                tracing::warn!(broker = %shown, error = %Chain(&e), retry_in = ?delay, "connection to the broker lost");
                tokio::time::sleep(delay).await;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
    if let Some(pkids) = acks_rx.recv().await {
        send_acks(&mut eventloop, pkids, &mut acks_rx).await;
    }
    let _ = client.disconnect().await;
    // Let the DISCONNECT go out.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    Ok(())
}

/// Writes the PUBACKs of committed deliveries (and of any batch committed
/// meanwhile) to the connection, flushed once. Packets for QoS 1
/// deliveries keep no state in rumqttc, so writing them past its request
/// channel changes nothing else. Without a connection there is nothing to
/// acknowledge: the broker delivers the same messages again in the resumed
/// session, and the store counts them as duplicates.
async fn send_acks(
    eventloop: &mut EventLoop,
    first: Vec<u16>,
    more: &mut mpsc::UnboundedReceiver<Vec<u16>>,
) {
    let Some(network) = eventloop.network.as_mut() else {
        return;
    };
    let mut batch = Some(first);
    while let Some(pkids) = batch.take().or_else(|| more.try_recv().ok()) {
        for pkid in pkids {
            if network
                .write(Packet::PubAck(PubAck::new(pkid)))
                .await
                .is_err()
            {
                // The next poll reports the broken connection.
                return;
            }
        }
    }
    let _ = network.flush().await;
}

/// Commits what has arrived, then acknowledges it; retries a batch the
/// database refuses (nothing is acknowledged before it is stored).
async fn write(
    mut rx: mpsc::Receiver<(Row, u16)>,
    acks: mpsc::UnboundedSender<Vec<u16>>,
    store: Store,
    stats: Arc<Stats>,
    max: usize,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    while let Some(first) = rx.recv().await {
        let start = Instant::now();
        let mut batch = vec![first];
        while batch.len() < max {
            match rx.try_recv() {
                Ok(x) => batch.push(x),
                Err(_) => break,
            }
        }
        let (rows, pkids): (Vec<Row>, Vec<u16>) = batch.into_iter().unzip();
        let done = loop {
            match store.insert(&rows).await {
                Ok(done) => break done,
                Err(e) => {
                    stats.store_errors.fetch_add(1, Relaxed);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %firehose::report::error_chain(&e), events = rows.len(), retry_in = ?delay, "cannot store a batch; retrying (nothing acknowledged meanwhile)");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        backoff.reset();
        stats.stored.fetch_add(done.stored, Relaxed);
        stats.duplicates.fetch_add(done.duplicates, Relaxed);
        stats
            .not_events
            .fetch_add(rows.iter().filter(|r| !r.readable).count() as u64, Relaxed);
        stats.batches.fetch_add(1, Relaxed);
        stats.committed.notify_waiters();
        stats
            .lag_ms
            .store(start.elapsed().as_millis() as i64, Relaxed);
        if let Some(last) = rows.last() {
            stats.last_received_ms.store(last.received_ms, Relaxed);
        }
        if acks.send(pkids).is_err() {
            return;
        }
    }
}
