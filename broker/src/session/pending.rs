//! What the session layer is handed: a connection that passed admission
//! ([`Pending`]), and the broker as this layer sees it ([`Hub`]).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{ReadHalf, WriteHalf};

use super::registry::Registry;
use crate::codec::ConnectInfo;
use crate::shared::{Shared, SocketSlot};
use crate::transport::BoxIo;

/// A client that sent a valid CONNECT and passed authentication.
pub(crate) struct Pending {
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

/// The broker as sessions see it: the state shared with every layer below
/// ([`Shared`], reached through `Deref`) and the registry of session
/// tasks, which only sessions and the way in ([`crate::connect`]) touch.
/// The registry is here, not in [`Shared`], because it holds sessions'
/// mailboxes of [`Pending`] connections: the shared state below stays
/// free of sessions.
pub(crate) struct Hub {
    shared: Arc<Shared>,
    /// Client ids to session tasks; tracks the tasks for shutdown.
    pub(crate) registry: Registry,
}

impl Hub {
    pub(crate) fn new(shared: Arc<Shared>) -> Hub {
        Hub {
            shared,
            registry: Registry::default(),
        }
    }

    /// The shared state itself, for what outlives a borrow (a socket's
    /// slot, the HTTP handler).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl std::ops::Deref for Hub {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}
