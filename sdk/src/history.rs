//! Catching up (feature `history`): what firehose-history stored since a
//! time, then the live stream, with no gap and no duplicate.
//!
//! The live subscription is made first and buffered; then the history is
//! read page by page (`GET /v1/events?topic=&since=&payload=true`), and
//! read again until it holds the first live event (the history's ingester
//! may lag the bus: what was published just before the subscription may
//! not be stored yet; [`CATCH_UP_WAIT`] bounds the wait); then the
//! buffered and later live events follow, each skipped when its id was
//! among the last [`OVERLAP`] history events (an event stored while the
//! history was being read arrives both ways). Every event is decoded from
//! its exact payload, so a history event is the same [`Event`] (same id,
//! same typed body) it was live.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = firehose::Client::connect("mqtt://firehose.example.org").await?;
//! let mut evs = firehose::history::subscribe_since(
//!     &client, "gerrit/#", "http://history.example.org:8090", "2h").await?;
//! while let Some(ev) = evs.next().await {
//!     println!("{} {}", ev.kind, ev.subject.unwrap_or_default());
//! }
//! # Ok(()) }
//! ```

use crate::report::Chain;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::client::{ClientError, Subscription};
use crate::filter::Filter;
use crate::reader::{Decoder, Event};
use crate::Client;

/// How many of the last history events are remembered to drop their live
/// copies.
pub const OVERLAP: usize = 10_000;
/// Events per history page.
const PAGE: usize = 1000;
/// How often the history is asked again while it lags the bus.
const POLL: Duration = Duration::from_millis(200);
/// How long the history may take to store the first live event before the
/// stream goes live anyway (logged).
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(30);

/// Why catching up cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The broker side.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The history URL is not http:// or https://.
    #[error("history URL {0:?}: give http://HOST:PORT or https://HOST")]
    Url(String),
    /// The history server could not be asked or refused.
    #[error("history at {url}: {reason}")]
    Server {
        /// Where (without credentials).
        url: String,
        /// What went wrong (its answer, when it gave one).
        reason: String,
    },
    /// The TLS configuration for https:// cannot be built.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Pages of stored events.
struct Pages {
    http: reqwest::Client,
    base: String,
    topic: String,
    since: String,
    after: Option<String>,
    /// The cursor of the last event read.
    last: Option<String>,
    done: bool,
    decoder: Decoder,
}

impl Pages {
    fn new(
        history: &str,
        topic: &str,
        since: &str,
        decoder: Decoder,
    ) -> Result<Pages, HistoryError> {
        let base = history.trim_end_matches('/').to_owned();
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if base.starts_with("https://") {
            b = b.use_preconfigured_tls((*crate::tls::client_config(None)?).clone());
        } else if !base.starts_with("http://") {
            return Err(HistoryError::Url(history.to_owned()));
        }
        let http = b.build().map_err(|e| HistoryError::Server {
            url: crate::url::redact(&base),
            reason: e.to_string(),
        })?;
        Ok(Pages {
            http,
            base,
            topic: topic.to_owned(),
            since: since.to_owned(),
            after: None,
            last: None,
            done: false,
            decoder,
        })
    }

    /// The next page (empty at the end).
    async fn next(&mut self) -> Result<Vec<Event>, HistoryError> {
        if self.done {
            return Ok(Vec::new());
        }
        let err = |reason: String| HistoryError::Server {
            url: crate::url::redact(&self.base),
            reason,
        };
        let limit = PAGE.to_string();
        let mut query = vec![
            ("topic", self.topic.as_str()),
            ("since", self.since.as_str()),
            ("payload", "true"),
            ("limit", limit.as_str()),
        ];
        if let Some(a) = &self.after {
            query.push(("after", a.as_str()));
        }
        let resp = self
            .http
            .get(format!("{}/v1/events", self.base))
            .query(&query)
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| err(e.to_string()))?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|_| err(format!("{status}: not the history API's JSON")))?;
        if !status.is_success() {
            let why = v["error"].as_str().unwrap_or("refused").to_owned();
            return Err(err(format!("{status}: {why}")));
        }
        self.after = v["next"].as_str().map(str::to_owned);
        self.done = self.after.is_none();
        let events = v["events"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if let Some(c) = events.last().and_then(|e| e["cursor"].as_str()) {
            self.last = Some(c.to_owned());
        }
        Ok(events
            .iter()
            .filter_map(|e| event_of(&self.decoder, e))
            .collect())
    }

    /// After the end: look again for what was stored since.
    fn more(&mut self) {
        if self.done {
            self.done = false;
            self.after = self.last.clone();
        }
    }
}

/// A history event, decoded from its payload as a live one would be.
fn event_of(decoder: &Decoder, v: &Value) -> Option<Event> {
    let topic = v["topic"].as_str()?;
    let payload = v["payload"].as_str()?;
    let retained = v["retained"].as_bool().unwrap_or(false);
    Some(decoder.decode_bytes(
        topic,
        bytes::Bytes::copy_from_slice(payload.as_bytes()),
        retained,
    ))
}

/// An event's key for the overlap: its id, or for a message that is not
/// an event, a hash of its topic and payload.
fn key(ev: &Event) -> String {
    match &ev.id {
        Some(id) => id.clone(),
        None => {
            let mut k = ev.topic.as_bytes().to_vec();
            k.push(0);
            k.extend_from_slice(&ev.payload);
            crate::envelope::stable_id("mqtt", &k)
        }
    }
}

/// The keys of the last [`OVERLAP`] history events.
struct Recent {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Recent {
    fn add(&mut self, id: &str) {
        if self.ids.insert(id.to_owned()) {
            self.order.push_back(id.to_owned());
            if self.order.len() > OVERLAP {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }
}

/// Subscribes to `topic` (an MQTT filter) on `client`, and returns a stream
/// of what `history` (firehose-history's URL) stored since `since` (an RFC
/// 3339 time, a duration back like `2h`, or a cursor), then the live
/// events: no gap, no duplicate. Fails when the history cannot be read at
/// all; a page that fails later ends the stream, logged.
pub async fn subscribe_since(
    client: &Client,
    topic: &str,
    history: &str,
    since: &str,
) -> Result<Subscription, HistoryError> {
    let mut pages = Pages::new(history, topic, since, client.decoder().clone())?;
    let mut live = client.subscribe(Filter::topic(topic)).await?;
    // The first page before anything is returned: a wrong URL or a bad
    // `since` is the caller's error, not a silent live-only stream.
    let first = pages.next().await?;
    let (buf_tx, mut buf_rx) = mpsc::unbounded_channel::<Event>();
    tokio::spawn(async move {
        while let Some(ev) = live.next().await {
            if buf_tx.send(ev).is_err() {
                return;
            }
        }
    });
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        let mut recent = Recent {
            ids: HashSet::new(),
            order: VecDeque::new(),
        };
        // Live events wait here until the history has caught up with them.
        let mut pending: VecDeque<Event> = VecDeque::new();
        // The first live event: once the history holds it, it
        // holds everything the broker delivered before our subscription
        // (the history's own session got those first, and stores in
        // order). Until then the history may lag the bus: keep reading it.
        let mut first_live: Option<(String, tokio::time::Instant)> = None;
        let mut page = first;
        loop {
            for ev in page {
                recent.add(&key(&ev));
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            while let Ok(ev) = buf_rx.try_recv() {
                if first_live.is_none() {
                    first_live = Some((key(&ev), tokio::time::Instant::now()));
                }
                pending.push_back(ev);
            }
            match &first_live {
                Some((id, _)) if recent.ids.contains(id) => break,
                Some((id, since)) if pages.done && since.elapsed() > CATCH_UP_WAIT => {
                    tracing::warn!(waited = ?CATCH_UP_WAIT, first_live = %id, "catching up: the history has not stored the first live event yet; going live (events stored late may be missing)");
                    break;
                }
                _ => {}
            }
            if pages.done {
                tokio::time::sleep(POLL).await;
                pages.more();
            }
            page = match pages.next().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "catching up: a history page failed; the stream ends");
                    return;
                }
            };
        }
        loop {
            let ev = match pending.pop_front() {
                Some(ev) => ev,
                None => match buf_rx.recv().await {
                    Some(ev) => ev,
                    None => return,
                },
            };
            if recent.ids.contains(&key(&ev)) {
                continue;
            }
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    });
    Ok(Subscription::from_channel(rx))
}
