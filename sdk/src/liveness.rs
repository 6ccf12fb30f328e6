//! Is it up? os-lively's question, answered from the firehose's retained
//! state: every bridge's `firehose/status/<bridge>/<instance>` and every nova
//! service's `nova/<deployment>/service/<binary>/<host>`. A new subscriber
//! gets all of them at once (retained), then each change.
//!
//! ```no_run
//! # async fn demo() -> Result<(), firehose::client::ClientError> {
//! let client = firehose::Client::connect("mqtt://firehose.example.org").await?;
//! let live = client.liveness().await?;
//! live.wait_synced(std::time::Duration::from_secs(2)).await;
//! if live.nova_service_is_up("cell1", "nova-compute", "compute-7") == Some(false) {
//!     println!("compute-7 is down");
//! }
//! let mut changes = live.changes();
//! while let Ok(change) = changes.recv().await {
//!     println!("{change:?}");
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::client::{Client, ClientError};
use crate::filter::Filter;
use crate::nova::ServiceState;
use crate::reader::Body;
use crate::status::{State, Status};

/// A change of state.
#[derive(Debug, Clone)]
pub enum Change {
    /// A bridge's status message changed.
    Bridge {
        /// `gerrit`, `nova`, ...
        bridge: String,
        /// Its instance name.
        instance: String,
        /// What it says now.
        status: Box<Status>,
    },
    /// A nova service's state changed.
    NovaService {
        /// The deployment (cell, region).
        deployment: String,
        /// What nova says now.
        state: ServiceState,
    },
}

#[derive(Default)]
struct Known {
    /// Told when the first message arrives.
    first: Arc<tokio::sync::Notify>,
    bridges: HashMap<(String, String), Status>,
    services: HashMap<(String, String, String), ServiceState>,
    /// A message arrived since subscribing (retained ones come first).
    seen_any: bool,
}

/// The latest state of every bridge and nova service, kept current.
#[derive(Clone)]
pub struct Liveness {
    known: Arc<Mutex<Known>>,
    changes: broadcast::Sender<Change>,
}

impl Client {
    /// Subscribes to every bridge's status and every nova service's state.
    pub async fn liveness(&self) -> Result<Liveness, ClientError> {
        let mut status = self.subscribe(Filter::status()).await?;
        let mut services = self.subscribe(Filter::topic("nova/+/service/#")).await?;
        let live = Liveness {
            known: Arc::new(Mutex::new(Known::default())),
            changes: broadcast::channel(1024).0,
        };
        let l = live.clone();
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    e = status.next() => e,
                    e = services.next() => e,
                };
                let Some(ev) = ev else { return };
                let levels: Vec<&str> = ev.topic.split('/').collect();
                let change = match (ev.body, levels.as_slice()) {
                    (Body::Status(s), [.., "firehose", "status", bridge, instance]) => {
                        let key = (bridge.to_string(), instance.to_string());
                        l.lock().bridges.insert(key, (*s).clone());
                        Change::Bridge {
                            bridge: bridge.to_string(),
                            instance: instance.to_string(),
                            status: s,
                        }
                    }
                    (Body::NovaService(s), [.., "nova", deployment, "service", _, _]) => {
                        let key = (deployment.to_string(), s.binary.clone(), s.host.clone());
                        l.lock().services.insert(key, s.clone());
                        Change::NovaService {
                            deployment: deployment.to_string(),
                            state: s,
                        }
                    }
                    _ => continue,
                };
                let first = {
                    let mut k = l.lock();
                    let was = k.seen_any;
                    k.seen_any = true;
                    (!was).then(|| k.first.clone())
                };
                if let Some(n) = first {
                    n.notify_waiters();
                }
                let _ = l.changes.send(change);
            }
        });
        Ok(live)
    }
}

impl Liveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the retained states arrived, at most `timeout`: the
    /// first message, then until none came for 100 ms (MQTT has no "end of
    /// retained" marker; the broker sends them all at once on subscribe).
    pub async fn wait_synced(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let first = self.lock().first.clone();
        // Made before looking, so a first message in between still wakes it.
        let arrived = first.notified();
        if !self.lock().seen_any {
            let _ = tokio::time::timeout_at(deadline, arrived).await;
        }
        let mut changes = self.changes();
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(100), changes.recv()).await
        {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
    }

    /// Whether a bridge says it is up (`None`: never heard of it).
    /// Degraded (connected to the broker, not to its source) is not up.
    pub fn is_up(&self, bridge: &str, instance: &str) -> Option<bool> {
        self.bridge_status(bridge, instance)
            .map(|s| s.state == State::Up)
    }

    /// A bridge's last status message.
    pub fn bridge_status(&self, bridge: &str, instance: &str) -> Option<Status> {
        self.lock()
            .bridges
            .get(&(bridge.to_owned(), instance.to_owned()))
            .cloned()
    }

    /// Whether nova says a service is up (`None`: never heard of it).
    pub fn nova_service_is_up(&self, deployment: &str, binary: &str, host: &str) -> Option<bool> {
        self.lock()
            .services
            .get(&(deployment.to_owned(), binary.to_owned(), host.to_owned()))
            .map(ServiceState::is_up)
    }

    /// Every change from now on.
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}
