//! Broker-wide counters, shown three ways: `$SYS/broker/...` topics under
//! mosquitto's names, Prometheus text on `/metrics`, and the live web page.
//!
//! Every dropped message, refused connection and closed-for-cause socket is
//! counted here by reason, so an operator can tell what the edge threw away.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Why something was dropped or refused. One counter per variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Reason {
    /// A subscriber's outbound queue was full; the message was not queued for it.
    QueueFull,
    /// A QoS 0 message for an offline persistent session (not queued).
    OfflineQos0,
    /// A publish the ACL (or the anonymous policy) does not allow.
    AclPublish,
    /// A subscription the ACL does not allow.
    AclSubscribe,
    /// A message the ACL does not let this subscriber read.
    AclRead,
    /// A will the client may not write.
    AclWill,
    /// A packet that could not be parsed or broke the protocol.
    Malformed,
    /// A packet over the size limit.
    PacketTooLarge,
    /// No packet within 1.5x the keepalive.
    KeepaliveTimeout,
    /// TCP CONNECT, TLS or websocket handshake did not finish in time.
    HandshakeTimeout,
    /// TLS or websocket handshake failed.
    HandshakeFailed,
    /// Refused: too many connections.
    MaxConnections,
    /// Refused: wrong user name or password.
    BadCredentials,
    /// Refused: anonymous clients not allowed.
    NotAuthorized,
    /// Refused: client id not valid.
    BadClientId,
    /// Refused: unsupported protocol version.
    BadProtocol,
    /// A subscription over the per-client limit.
    TooManySubscriptions,
    /// A new filter when the router's filter table is full.
    FilterTableFull,
    /// A topic over the length or depth limit.
    TopicLimit,
    /// Session state discarded because it expired.
    SessionExpired,
    /// A retained publish over `max_retained_messages`/`max_retained_bytes`:
    /// delivered live, not retained.
    RetainedFull,
    /// Refused: the client id belongs to a session of another user.
    TakeoverOtherUser,
    /// Refused: the client id was taken over too often lately.
    TakeoverRate,
    /// Refused: too many anonymous connections from one address.
    MaxConnectionsPerIp,
    /// Dropped from an offline queue for the broker-wide queued-bytes budget.
    QueuedBytesTotal,
    /// An anonymous client asked for a persistent session over the cap and
    /// got a clean one.
    PersistentAnonymous,
    /// A message larger than the client's Maximum Packet Size (MQTT 5):
    /// not sent to it (it would have to disconnect), counted.
    TooLargeForClient,
    /// An MQTT 5 message whose expiry interval passed while it was queued
    /// (or retained): not sent.
    MessageExpired,
    /// A packet of ours that could not be encoded (a bug: logged at error).
    EncodeFailed,
    /// A `$SYS` update not written to a client whose unread output is
    /// already at the pending-write cap (it does not read).
    SysBacklog,
    /// A socket closed at once: too many sockets are in a handshake (TLS,
    /// websocket upgrade, or no CONNECT yet).
    Handshakes,
    /// A socket closed at once: too many sockets from its address are in a
    /// handshake.
    HandshakesPerIp,
    /// A subscription to a `$share` group another user holds.
    ShareOtherUser,
    /// An anonymous member removed from a `$share` group a logged-in user
    /// joined (the group is the user's).
    ShareTakenBack,
    /// An anonymous client's session ended because a logged-in user took
    /// its client id back.
    IdTakenBack,
    /// A websocket upgrade refused for its Origin (`ws_allowed_origins`).
    WsOrigin,
    /// The persistent store ended in a torn or damaged record at start: cut
    /// at the last good one (once per start; the log says how many bytes).
    StoreDamage,
}

impl Reason {
    /// Every reason, in counter order.
    pub const ALL: [Reason; 37] = [
        Reason::QueueFull,
        Reason::OfflineQos0,
        Reason::AclPublish,
        Reason::AclSubscribe,
        Reason::AclRead,
        Reason::AclWill,
        Reason::Malformed,
        Reason::PacketTooLarge,
        Reason::KeepaliveTimeout,
        Reason::HandshakeTimeout,
        Reason::HandshakeFailed,
        Reason::MaxConnections,
        Reason::BadCredentials,
        Reason::NotAuthorized,
        Reason::BadClientId,
        Reason::BadProtocol,
        Reason::TooManySubscriptions,
        Reason::FilterTableFull,
        Reason::TopicLimit,
        Reason::SessionExpired,
        Reason::RetainedFull,
        Reason::TakeoverOtherUser,
        Reason::TakeoverRate,
        Reason::MaxConnectionsPerIp,
        Reason::QueuedBytesTotal,
        Reason::PersistentAnonymous,
        Reason::TooLargeForClient,
        Reason::MessageExpired,
        Reason::EncodeFailed,
        Reason::SysBacklog,
        Reason::Handshakes,
        Reason::HandshakesPerIp,
        Reason::ShareOtherUser,
        Reason::ShareTakenBack,
        Reason::IdTakenBack,
        Reason::WsOrigin,
        Reason::StoreDamage,
    ];

    /// Stable snake_case name used in metrics and `$SYS` topics.
    pub fn name(self) -> &'static str {
        match self {
            Reason::QueueFull => "queue_full",
            Reason::OfflineQos0 => "offline_qos0",
            Reason::AclPublish => "acl_publish",
            Reason::AclSubscribe => "acl_subscribe",
            Reason::AclRead => "acl_read",
            Reason::AclWill => "acl_will",
            Reason::Malformed => "malformed",
            Reason::PacketTooLarge => "packet_too_large",
            Reason::KeepaliveTimeout => "keepalive_timeout",
            Reason::HandshakeTimeout => "handshake_timeout",
            Reason::HandshakeFailed => "handshake_failed",
            Reason::MaxConnections => "max_connections",
            Reason::BadCredentials => "bad_credentials",
            Reason::NotAuthorized => "not_authorized",
            Reason::BadClientId => "bad_client_id",
            Reason::BadProtocol => "bad_protocol",
            Reason::TooManySubscriptions => "too_many_subscriptions",
            Reason::FilterTableFull => "filter_table_full",
            Reason::TopicLimit => "topic_limit",
            Reason::SessionExpired => "session_expired",
            Reason::RetainedFull => "retained_full",
            Reason::TakeoverOtherUser => "takeover_other_user",
            Reason::TakeoverRate => "takeover_rate",
            Reason::MaxConnectionsPerIp => "max_connections_per_ip",
            Reason::QueuedBytesTotal => "queued_bytes_total",
            Reason::PersistentAnonymous => "persistent_anonymous",
            Reason::TooLargeForClient => "too_large_for_client",
            Reason::MessageExpired => "message_expired",
            Reason::EncodeFailed => "encode_failed",
            Reason::SysBacklog => "sys_backlog",
            Reason::Handshakes => "handshakes",
            Reason::HandshakesPerIp => "handshakes_per_ip",
            Reason::ShareOtherUser => "share_other_user",
            Reason::ShareTakenBack => "share_taken_back",
            Reason::IdTakenBack => "id_taken_back",
            Reason::WsOrigin => "ws_origin",
            Reason::StoreDamage => "store_damage",
        }
    }
}

/// The counters. One instance per broker, shared by every connection.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    pub clients_connected: AtomicI64,
    pub sessions: AtomicI64,
    pub connections_total: AtomicU64,
    /// Clients that completed CONNECT, and that left (for the log summary).
    pub client_connects: AtomicU64,
    pub client_disconnects: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub publish_received: AtomicU64,
    pub publish_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub subscriptions: AtomicI64,
    /// Distinct filters in the router (freed with their last subscriber).
    pub filters: AtomicI64,
    /// Bytes (topic + payload) queued for all sessions, each queue counted.
    pub queued_bytes: AtomicI64,
    /// Persistent sessions of anonymous clients.
    pub anonymous_persistent: AtomicI64,
    pub retained: AtomicI64,
    /// 1 while a mirror edge is connected to its upstream.
    pub upstream_connected: AtomicI64,
    /// Messages a mirror edge received from its upstream.
    pub upstream_messages: AtomicU64,
    /// Times a publisher was held for a reader allowed to push back
    /// (`pushback_users`), and milliseconds it was held in all.
    pub pushback_waits: AtomicU64,
    pub pushback_wait_ms: AtomicU64,
    /// The persistent store's writer (all zero without `--persistence`).
    pub store: StoreStats,
    dropped: [AtomicU64; Reason::ALL.len()],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            clients_connected: AtomicI64::new(0),
            sessions: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            client_connects: AtomicU64::new(0),
            client_disconnects: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            publish_received: AtomicU64::new(0),
            publish_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            subscriptions: AtomicI64::new(0),
            filters: AtomicI64::new(0),
            queued_bytes: AtomicI64::new(0),
            anonymous_persistent: AtomicI64::new(0),
            upstream_connected: AtomicI64::new(0),
            upstream_messages: AtomicU64::new(0),
            pushback_waits: AtomicU64::new(0),
            pushback_wait_ms: AtomicU64::new(0),
            retained: AtomicI64::new(0),
            store: StoreStats::default(),
            dropped: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Counters of the persistent store's writer.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Records appended, bytes appended, fsyncs, rewrites.
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub syncs: AtomicU64,
    pub compactions: AtomicU64,
    /// Failed writes and syncs (each retried; see the log).
    pub write_errors: AtomicU64,
    /// Messages held, queue entries held, size of the file.
    pub messages: AtomicI64,
    pub queued: AtomicI64,
    pub file_bytes: AtomicI64,
    /// Queue entries whose message is on disk only (offline queues past
    /// their `queue_memory`).
    pub paged: AtomicI64,
}

/// Version string reported in `$SYS/broker/version` and on `/healthz`.
pub const VERSION: &str = concat!("firehose-broker ", env!("CARGO_PKG_VERSION"));

impl Stats {
    /// Counts one drop or refusal.
    pub fn count(&self, r: Reason) {
        self.count_n(r, 1);
    }

    /// Counts `n` at once (nothing when 0).
    pub fn count_n(&self, r: Reason, n: u64) {
        if n > 0 {
            self.dropped[r as usize].fetch_add(n, Relaxed);
        }
    }

    /// Current count for one reason.
    pub fn dropped(&self, r: Reason) -> u64 {
        self.dropped[r as usize].load(Relaxed)
    }

    /// Seconds since the broker started.
    pub fn uptime(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// `$SYS` topics and values, mosquitto's names first, then ours.
    pub fn sys_topics(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("$SYS/broker/version".to_owned(), VERSION.to_owned()),
            (
                "$SYS/broker/uptime".to_owned(),
                format!("{} seconds", self.uptime()),
            ),
            (
                "$SYS/broker/clients/connected".to_owned(),
                self.clients_connected.load(Relaxed).to_string(),
            ),
            (
                "$SYS/broker/clients/total".to_owned(),
                self.sessions.load(Relaxed).to_string(),
            ),
            (
                "$SYS/broker/messages/received".to_owned(),
                self.messages_received.load(Relaxed).to_string(),
            ),
            (
                "$SYS/broker/messages/sent".to_owned(),
                self.messages_sent.load(Relaxed).to_string(),
            ),
            (
                "$SYS/broker/publish/messages/received".to_owned(),
                self.publish_received.load(Relaxed).to_string(),
            ),
            (
                "$SYS/broker/publish/messages/sent".to_owned(),
                self.publish_sent.load(Relaxed).to_string(),
            ),
            (
                "$SYS/broker/bytes/received".to_owned(),
                self.bytes_received.load(Relaxed).to_string(),
            ),
            (
                "$SYS/broker/bytes/sent".to_owned(),
                self.bytes_sent.load(Relaxed).to_string(),
            ),
            (
                "$SYS/broker/subscriptions/count".to_owned(),
                self.subscriptions.load(Relaxed).to_string(),
            ),
            (
                "$SYS/broker/filters/count".to_owned(),
                self.filters.load(Relaxed).to_string(),
            ),
            (
                "$SYS/broker/retained messages/count".to_owned(),
                self.retained.load(Relaxed).to_string(),
            ),
            (
                "$SYS/broker/pushback/waits".to_owned(),
                self.pushback_waits.load(Relaxed).to_string(),
            ),
            (
                "$SYS/broker/store/messages".to_owned(),
                self.store.messages.load(Relaxed).to_string(),
            ),
            (
                "$SYS/broker/store/bytes".to_owned(),
                self.store.file_bytes.load(Relaxed).to_string(),
            ),
            (
                "$SYS/broker/store/paged".to_owned(),
                self.store.paged.load(Relaxed).to_string(),
            ),
        ];
        for r in Reason::ALL {
            v.push((
                format!("$SYS/broker/dropped/{}", r.name()),
                self.dropped(r).to_string(),
            ));
        }
        v
    }

    /// Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        use firehose::metrics::{Exposition, Kind, Kind::*};
        let mut e = Exposition::new("firehose_broker");
        let mut metric =
            |name: &str, kind: Kind, help: &str, value: String| e.one(name, kind, help, value);
        metric(
            "uptime_seconds",
            Gauge,
            "Seconds since start.",
            self.uptime().to_string(),
        );
        metric(
            "clients_connected",
            Gauge,
            "Connected clients.",
            self.clients_connected.load(Relaxed).to_string(),
        );
        metric(
            "sessions",
            Gauge,
            "Sessions, connected or kept for a persistent client.",
            self.sessions.load(Relaxed).to_string(),
        );
        metric(
            "connections_total",
            Counter,
            "Accepted network connections.",
            self.connections_total.load(Relaxed).to_string(),
        );
        metric(
            "messages_received_total",
            Counter,
            "MQTT packets received.",
            self.messages_received.load(Relaxed).to_string(),
        );
        metric(
            "messages_sent_total",
            Counter,
            "MQTT packets sent.",
            self.messages_sent.load(Relaxed).to_string(),
        );
        metric(
            "publish_received_total",
            Counter,
            "PUBLISH packets received.",
            self.publish_received.load(Relaxed).to_string(),
        );
        metric(
            "publish_sent_total",
            Counter,
            "PUBLISH packets sent.",
            self.publish_sent.load(Relaxed).to_string(),
        );
        metric(
            "bytes_received_total",
            Counter,
            "Bytes received.",
            self.bytes_received.load(Relaxed).to_string(),
        );
        metric(
            "bytes_sent_total",
            Counter,
            "Bytes sent.",
            self.bytes_sent.load(Relaxed).to_string(),
        );
        metric(
            "subscriptions",
            Gauge,
            "Active subscriptions.",
            self.subscriptions.load(Relaxed).to_string(),
        );
        metric(
            "filters",
            Gauge,
            "Distinct subscription filters held by the router.",
            self.filters.load(Relaxed).to_string(),
        );
        metric(
            "queued_bytes",
            Gauge,
            "Bytes queued in memory for all sessions (each queue counted; payloads are shared; what offline persistent sessions keep on disk only is in store_paged).",
            self.queued_bytes.load(Relaxed).to_string(),
        );
        metric(
            "anonymous_persistent_sessions",
            Gauge,
            "Persistent sessions of anonymous clients.",
            self.anonymous_persistent.load(Relaxed).to_string(),
        );
        metric(
            "retained_messages",
            Gauge,
            "Retained messages.",
            self.retained.load(Relaxed).to_string(),
        );
        metric(
            "upstream_connected",
            Gauge,
            "1 while a mirror edge (--upstream) is connected to its core.",
            self.upstream_connected.load(Relaxed).to_string(),
        );
        metric(
            "upstream_messages_total",
            Counter,
            "Messages a mirror edge received from its core.",
            self.upstream_messages.load(Relaxed).to_string(),
        );
        metric(
            "pushback_waits_total",
            Counter,
            "Times a publisher was held for a reader allowed to push back (pushback_users).",
            self.pushback_waits.load(Relaxed).to_string(),
        );
        metric(
            "pushback_wait_seconds_total",
            Counter,
            "Seconds publishers were held for readers allowed to push back.",
            format!("{:.3}", self.pushback_wait_ms.load(Relaxed) as f64 / 1000.0),
        );
        let st = &self.store;
        for (name, kind, help, v) in [
            (
                "store_records_total",
                Counter,
                "Records appended to the persistent store.",
                st.records.load(Relaxed) as i64,
            ),
            (
                "store_written_bytes_total",
                Counter,
                "Bytes appended to the persistent store.",
                st.bytes.load(Relaxed) as i64,
            ),
            (
                "store_fsyncs_total",
                Counter,
                "fsyncs of the persistent store.",
                st.syncs.load(Relaxed) as i64,
            ),
            (
                "store_compactions_total",
                Counter,
                "Rewrites of the persistent store from memory.",
                st.compactions.load(Relaxed) as i64,
            ),
            (
                "store_write_errors_total",
                Counter,
                "Failed writes or fsyncs of the persistent store (retried).",
                st.write_errors.load(Relaxed) as i64,
            ),
            (
                "store_messages",
                Gauge,
                "Messages held by the persistent store.",
                st.messages.load(Relaxed),
            ),
            (
                "store_queued",
                Gauge,
                "Deliveries queued for persistent sessions in the store.",
                st.queued.load(Relaxed),
            ),
            (
                "store_file_bytes",
                Gauge,
                "Size of the persistent store's file.",
                st.file_bytes.load(Relaxed),
            ),
            (
                "store_paged",
                Gauge,
                "Queued deliveries whose message is on disk only (offline sessions past queue_memory).",
                st.paged.load(Relaxed),
            ),
        ] {
            metric(name, kind, help, v.to_string());
        }
        e.family(
            "dropped_total",
            Counter,
            "Messages dropped and connections refused, by reason.",
        );
        for r in Reason::ALL {
            e.sample("dropped_total", &[("reason", r.name())], self.dropped(r));
        }
        e.finish()
    }
}

/// Log target of the per-client "connected"/"disconnected" lines. The
/// binary shows it only with `--verbose` (mosquitto's habit); otherwise a
/// summary per minute says how many came and went.
pub const CLIENTS: &str = "firehose_broker::clients";

/// A user name for a log field: the name, or `-` for anonymous clients.
pub fn who(user: Option<&str>) -> &str {
    user.map_or("-", short)
}

/// `s` cut to at most 120 bytes (on a character boundary) for a log line:
/// topics and client ids come from clients and may be 64 KiB long.
pub fn short(s: &str) -> &str {
    if s.len() <= 120 {
        return s;
    }
    let mut end = 120;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_cuts_on_a_char_boundary() {
        assert_eq!(short("a/b"), "a/b");
        let long = "é".repeat(100);
        assert_eq!(short(&long).len(), 120);
        assert!(short(&"x".repeat(500)).len() <= 120);
    }
}
