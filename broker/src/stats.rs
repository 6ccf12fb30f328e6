//! Broker-wide counters, shown three ways: `$SYS/broker/...` topics under
//! mosquitto's names, Prometheus text on `/metrics`, and the live web page.
//!
//! Every dropped message, refused connection and closed-for-cause socket is
//! counted here by reason, so an operator can tell what the edge threw away.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Why something was dropped or refused. One counter per variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Reason {
    /// A subscriber's outbound queue was full; the oldest message went.
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
    /// rumqttd's read cursor for a filter fell off its log and jumped ahead:
    /// a subscriber lost messages inside the router (see [`RouterAlerts`]).
    RouterCursorJump,
}

impl Reason {
    /// Every reason, in counter order.
    pub const ALL: [Reason; 21] = [
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
        Reason::RouterCursorJump,
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
            Reason::RouterCursorJump => "router_cursor_jump",
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
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub publish_received: AtomicU64,
    pub publish_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub subscriptions: AtomicI64,
    pub retained: AtomicI64,
    dropped: [AtomicU64; Reason::ALL.len()],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            clients_connected: AtomicI64::new(0),
            sessions: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            publish_received: AtomicU64::new(0),
            publish_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            subscriptions: AtomicI64::new(0),
            retained: AtomicI64::new(0),
            dropped: Default::default(),
        }
    }
}

/// Version string reported in `$SYS/broker/version` and on `/healthz`.
pub const VERSION: &str = concat!("firehose-broker ", env!("CARGO_PKG_VERSION"));

impl Stats {
    /// Counts one drop or refusal.
    pub fn count(&self, r: Reason) {
        self.dropped[r as usize].fetch_add(1, Relaxed);
    }

    /// Current count for one reason.
    pub fn dropped(&self, r: Reason) -> u64 {
        match r {
            Reason::RouterCursorJump => ROUTER_CURSOR_JUMPS.load(Relaxed),
            _ => self.dropped[r as usize].load(Relaxed),
        }
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
                "$SYS/broker/retained messages/count".to_owned(),
                self.retained.load(Relaxed).to_string(),
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
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(s, "# HELP firehose_broker_{name} {help}");
            let _ = writeln!(s, "# TYPE firehose_broker_{name} {kind}");
            let _ = writeln!(s, "firehose_broker_{name} {value}");
        };
        metric(
            "uptime_seconds",
            "gauge",
            "Seconds since start.",
            self.uptime().to_string(),
        );
        metric(
            "clients_connected",
            "gauge",
            "Connected clients.",
            self.clients_connected.load(Relaxed).to_string(),
        );
        metric(
            "sessions",
            "gauge",
            "Sessions, connected or kept for a persistent client.",
            self.sessions.load(Relaxed).to_string(),
        );
        metric(
            "connections_total",
            "counter",
            "Accepted network connections.",
            self.connections_total.load(Relaxed).to_string(),
        );
        metric(
            "messages_received_total",
            "counter",
            "MQTT packets received.",
            self.messages_received.load(Relaxed).to_string(),
        );
        metric(
            "messages_sent_total",
            "counter",
            "MQTT packets sent.",
            self.messages_sent.load(Relaxed).to_string(),
        );
        metric(
            "publish_received_total",
            "counter",
            "PUBLISH packets received.",
            self.publish_received.load(Relaxed).to_string(),
        );
        metric(
            "publish_sent_total",
            "counter",
            "PUBLISH packets sent.",
            self.publish_sent.load(Relaxed).to_string(),
        );
        metric(
            "bytes_received_total",
            "counter",
            "Bytes received.",
            self.bytes_received.load(Relaxed).to_string(),
        );
        metric(
            "bytes_sent_total",
            "counter",
            "Bytes sent.",
            self.bytes_sent.load(Relaxed).to_string(),
        );
        metric(
            "subscriptions",
            "gauge",
            "Active subscriptions.",
            self.subscriptions.load(Relaxed).to_string(),
        );
        metric(
            "retained_messages",
            "gauge",
            "Retained messages.",
            self.retained.load(Relaxed).to_string(),
        );
        let _ = writeln!(s, "# HELP firehose_broker_dropped_total Messages dropped and connections refused, by reason.");
        let _ = writeln!(s, "# TYPE firehose_broker_dropped_total counter");
        for r in Reason::ALL {
            let _ = writeln!(
                s,
                "firehose_broker_dropped_total{{reason=\"{}\"}} {}",
                r.name(),
                self.dropped(r)
            );
        }
        s
    }
}

/// Cursor jumps rumqttd reported in this process.
///
/// rumqttd tells about a jump only in a log event (its alert link needs a
/// router event this crate cannot name), and log events are process-wide,
/// so this counter is too.
static ROUTER_CURSOR_JUMPS: AtomicU64 = AtomicU64::new(0);

/// A `tracing` layer that counts rumqttd's "Read cursor start jumped"
/// warnings into the `router_cursor_jump` drop counter. Install it beside
/// the log formatter with its own filter, so the count does not depend on
/// what the operator chose to log.
#[derive(Debug, Default, Clone, Copy)]
pub struct RouterAlerts;

impl RouterAlerts {
    /// The filter this layer needs: rumqttd's warnings and nothing else.
    pub fn filter() -> tracing_subscriber::filter::Targets {
        tracing_subscriber::filter::Targets::new().with_target("rumqttd", tracing::Level::WARN)
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RouterAlerts {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Find(bool);
        impl tracing::field::Visit for Find {
            fn record_str(&mut self, _f: &tracing::field::Field, value: &str) {
                self.0 |= value.contains("cursor start jumped");
            }
            fn record_debug(&mut self, _f: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0 |= format!("{value:?}").contains("cursor start jumped");
            }
        }
        let mut find = Find(false);
        event.record(&mut find);
        if find.0 {
            ROUTER_CURSOR_JUMPS.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::Layer as _;

    #[test]
    fn cursor_jump_warnings_are_counted() {
        let subscriber =
            tracing_subscriber::registry().with(RouterAlerts.with_filter(RouterAlerts::filter()));
        let before = Stats::default().dropped(Reason::RouterCursorJump);
        tracing::subscriber::with_default(subscriber, || {
            // The event exactly as rumqttd 0.20's router/routing.rs emits it.
            let error = format!(
                "Read cursor start jumped from {:?} to {:?} on {}",
                (0u64, 10u64),
                (1u64, 300u64),
                "burst/#"
            );
            tracing::warn!(target: "rumqttd::router::routing", request_cursor = ?(0, 10), start_cursor = ?(1, 300), error);
            // Other rumqttd warnings and our own are not jumps.
            tracing::warn!(target: "rumqttd::router::routing", "Unexpected packet received, ignoring the packet.");
            tracing::warn!(target: "firehose_broker::session", error = "Read cursor start jumped");
        });
        assert_eq!(
            Stats::default().dropped(Reason::RouterCursorJump),
            before + 1
        );
    }
}
