//! The embedded rumqttd router and the links the edge opens to it.
//!
//! Every session gets one local link, built with a *pooled* internal id
//! (`f<slot>`), never the client's id. That keeps rumqttd's per-client-id
//! memory (the graveyard) bounded by the number of slots, keeps takeover
//! entirely in the edge (so the router's takeover crash path is never hit),
//! and lets client ids contain characters the router refuses (`/`, `+`, ...).
//! Links are always clean: session persistence lives in the edge.

use std::sync::{Arc, Mutex};

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::{Notification, Router, RouterConfig};

/// Errors opening a link.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("all {0} router slots are in use")]
    Full(usize),
    #[error("router refused the link: {0}")]
    Link(String),
    #[error("link builder task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

type BuildFn = dyn Fn(&str) -> Result<(LinkTx, LinkRx, Notification), Box<LinkError>> + Send + Sync;

/// Handle to the router thread.
pub struct RouterHandle {
    build: Arc<BuildFn>,
    slots: Mutex<SlotPool>,
}

struct SlotPool {
    free: Vec<usize>,
    next: usize,
    max: usize,
}

/// A link plus the slot it occupies; give it back with [`RouterHandle::release`].
pub struct Link {
    pub tx: LinkTx,
    pub rx: LinkRx,
    pub slot: usize,
}

impl RouterHandle {
    /// Starts the router thread sized for `max_links` links. Each filter's
    /// log keeps `segment_bytes * segments` of recent messages (payloads are
    /// shared, not copied, between filters). Sessions drain their links
    /// eagerly, so the log only has to absorb a publisher's burst before the
    /// subscribers' tasks run; a burst larger than that makes the router skip
    /// ahead for everyone (it logs "Read cursor start jumped").
    pub fn start(max_links: usize, segment_bytes: usize, segments: usize) -> RouterHandle {
        let config = RouterConfig {
            // One slot more than links: the router refuses at `>=`.
            max_connections: max_links + 1,
            max_outgoing_packet_count: 200,
            max_segment_size: segment_bytes.max(1024),
            max_segment_count: segments.max(1),
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        let router_tx = Router::new(0, config).spawn();
        let build = move |id: &str| {
            LinkBuilder::new(id, router_tx.clone())
                .clean_session(true)
                .dynamic_filters(true)
                .build()
                .map_err(Box::new)
        };
        RouterHandle {
            build: Arc::new(build),
            slots: Mutex::new(SlotPool {
                free: Vec::new(),
                next: 0,
                max: max_links,
            }),
        }
    }

    fn take_slot(&self) -> Result<usize, RouterError> {
        let mut p = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = p.free.pop() {
            return Ok(s);
        }
        if p.next >= p.max {
            return Err(RouterError::Full(p.max));
        }
        p.next += 1;
        Ok(p.next - 1)
    }

    /// Opens a link. `LinkBuilder::build` blocks on the router, so it runs
    /// on the blocking pool.
    pub async fn link(&self) -> Result<Link, RouterError> {
        let slot = self.take_slot()?;
        let build = self.build.clone();
        let res = tokio::task::spawn_blocking(move || build(&format!("f{slot}"))).await;
        match res {
            Ok(Ok((tx, rx, _ack))) => Ok(Link { tx, rx, slot }),
            Ok(Err(e)) => {
                self.give_back(slot);
                Err(RouterError::Link(e.to_string()))
            }
            Err(e) => {
                self.give_back(slot);
                Err(e.into())
            }
        }
    }

    fn give_back(&self, slot: usize) {
        let mut p = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        p.free.push(slot);
    }

    /// Tells the router the link is gone and frees its slot. The router
    /// handles events in order, so the slot can be reused at once.
    pub async fn release(&self, mut link: Link) {
        let bye = rumqttd::protocol::Packet::Disconnect(
            rumqttd::protocol::Disconnect {
                reason_code: rumqttd::protocol::DisconnectReasonCode::NormalDisconnection,
            },
            None,
        );
        let _ = link.tx.send(bye).await;
        self.give_back(link.slot);
    }
}
