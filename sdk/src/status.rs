//! The liveness message: every bridge keeps one retained message on
//! `firehose/status/<bridge>/<instance>` saying whether it is up, degraded
//! (connected to the broker but not to its source) or down (its last will,
//! or a clean shutdown), with enough detail to tell why.

use serde::{Deserialize, Serialize};

/// The state a bridge reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Connected to the broker and to its source.
    Up,
    /// Connected to the broker; the source is unreachable.
    Degraded,
    /// Not running (the last will, or a clean shutdown).
    Down,
}

/// Counters a bridge reports with its status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Events read from the source.
    pub read: u64,
    /// Events the broker acknowledged.
    pub published: u64,
    /// Events waiting in the spool.
    pub pending: u64,
    /// Source input that could not be turned into an event.
    pub malformed: u64,
    /// Events lost (spool full).
    pub dropped: u64,
    /// Events the broker refused (not authorized, ...), dead-lettered.
    #[serde(default)]
    pub rejected: u64,
    /// Reconnections, to the broker and to the source.
    pub reconnects: u64,
}

/// The JSON payload of `firehose/status/<bridge>/<instance>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// up, degraded or down.
    pub state: State,
    /// `<bridge> <version>`.
    pub version: String,
    /// Host name the bridge runs on.
    pub host: String,
    /// When the bridge started (RFC 3339).
    pub started: String,
    /// Whether the bridge is connected to its source.
    pub upstream_connected: bool,
    /// Why the source is not connected, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_error: Option<String>,
    /// Time of the last event read (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<String>,
    #[serde(default)]
    /// What the bridge has done since it started.
    pub counters: Counters,
}

/// This machine's host name (for a status message's `host` and a default
/// instance name); `localhost` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
