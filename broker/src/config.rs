//! Configuration: a TOML file, then environment, then flags, in that order
//! of increasing precedence. Everything the broker does at run time is
//! decided from one [`Config`] value, which `--print-config` shows.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::topic::TopicLimits;

/// Errors found while building the effective configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Listener addresses by kind. In the file as on the command line, an
/// address is `IP:PORT`, `[IPv6]:PORT`, `HOST:PORT` (resolved once, at
/// start) or `PORT`/`:PORT`, which means loopback (`127.0.0.1:PORT`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    /// Plain MQTT over TCP.
    #[serde(deserialize_with = "listen_addrs")]
    pub mqtt: Vec<SocketAddr>,
    /// MQTT over TLS.
    #[serde(deserialize_with = "listen_addrs")]
    pub mqtts: Vec<SocketAddr>,
    /// HTTP + MQTT over websockets (also serves /healthz and /metrics).
    #[serde(deserialize_with = "listen_addrs")]
    pub ws: Vec<SocketAddr>,
    /// The same over TLS.
    #[serde(deserialize_with = "listen_addrs")]
    pub wss: Vec<SocketAddr>,
    /// Origins (`scheme://host[:port]`, or `*` for any) whose web pages may
    /// open MQTT over websockets here. Empty (the default): any Origin on a
    /// connection that arrived at a public address; on a loopback or
    /// private address, only pages from loopback or private IP literals or
    /// `localhost`, so a page a visitor opens elsewhere cannot read an
    /// internal bus through the visitor's browser. Clients that send no
    /// Origin (everything but browsers) are never refused.
    pub ws_allowed_origins: Vec<String>,
}

/// What a listen address looks like, for errors.
const LISTEN_FORM: &str = "expected IP:PORT, [IPv6]:PORT, HOST:PORT or PORT (loopback), e.g. 127.0.0.1:1883 or 0.0.0.0:1883 for every interface";

/// Why a listen address cannot be used. (A flag's value parser: clap
/// prints the message alone, so the resolver's reason is part of it.)
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenError {
    #[error("invalid listen address {0:?}: no port; {LISTEN_FORM}")]
    NoPort(String),
    #[error("listen address {0:?} resolves to nothing; {LISTEN_FORM}")]
    Nothing(String),
    #[error("invalid listen address {addr:?} ({reason}); {LISTEN_FORM}")]
    Invalid { addr: String, reason: String },
}

/// Parses a listen address (see [`Listeners`]).
pub fn parse_listen(s: &str) -> Result<SocketAddr, ListenError> {
    let t = s.trim();
    let port_only = t.strip_prefix(':').unwrap_or(t);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !t.contains(':') {
        return Err(ListenError::NoPort(s.to_owned()));
    }
    use std::net::ToSocketAddrs;
    match t.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| ListenError::Nothing(s.to_owned())),
        Err(e) => Err(ListenError::Invalid {
            addr: s.to_owned(),
            reason: e.to_string(),
        }),
    }
}

fn listen_addrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let v: Vec<String> = Vec::deserialize(d)?;
    v.iter()
        .map(|s| parse_listen(s).map_err(serde::de::Error::custom))
        .collect()
}

impl Listeners {
    fn is_empty(&self) -> bool {
        self.mqtt.is_empty() && self.mqtts.is_empty() && self.ws.is_empty() && self.wss.is_empty()
    }
}

/// `[upstream]`: mirror a core broker (a read-only edge, see
/// `upstream.rs`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Upstream {
    /// `mqtt://` or `mqtts://[USER@]HOST[:PORT]`; unset: not an edge.
    pub url: Option<String>,
    /// CA certificate(s) (PEM) for an mqtts:// core with a private CA.
    pub ca: Option<PathBuf>,
    /// The password for the URL's user (first line).
    pub password_file: Option<PathBuf>,
}

/// TLS material, PEM files.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// Who may connect and what they may do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// mosquitto_passwd file.
    pub password_file: Option<PathBuf>,
    /// mosquitto acl_file.
    pub acl_file: Option<PathBuf>,
    /// Allow clients without credentials (read-only unless the ACL says otherwise).
    pub allow_anonymous: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            password_file: None,
            acl_file: None,
            allow_anonymous: true,
        }
    }
}

/// Limits that keep one client from hurting the others.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections: usize,
    /// Connections kept for authenticated users (bridges): anonymous
    /// clients are refused once `max_connections - reserved_connections`
    /// are connected. Default: 10% of max_connections, at least 1.
    pub reserved_connections: Option<usize>,
    /// Anonymous connections from one IP address (0: no limit).
    pub max_connections_per_ip: usize,
    /// Largest packet accepted from a client, in bytes.
    pub max_packet_size: usize,
    pub max_subscriptions_per_client: usize,
    /// Distinct filters one SUBSCRIBE may add or change (a repeated filter
    /// in one packet counts once: the last one wins, MQTT-3.8.4-3); the
    /// rest are refused (0x97 for v5, 0x80 for v3) and counted.
    pub max_subscriptions_per_packet: usize,
    pub max_topic_length: usize,
    pub max_topic_levels: usize,
    /// Largest keepalive a client may ask for (mosquitto's `max_keepalive`).
    pub max_keepalive: u16,
    /// Seconds allowed for TCP CONNECT, TLS and websocket handshakes.
    pub handshake_timeout_secs: u64,
    /// Sockets that may be in a handshake (TLS, websocket upgrade, no
    /// CONNECT yet) at once, all listeners together; beyond it a new socket
    /// is closed at once (`handshakes`). The last tenth is kept for clients
    /// that log in: an anonymous CONNECT on one of those is refused.
    pub max_handshakes: usize,
    /// Sockets from one address that may be in a handshake at once
    /// (`handshakes_per_ip`); 0: no limit.
    pub max_handshakes_per_ip: usize,
    /// Logged-in users whose readers may hold a publisher back when their
    /// queue fills (a mirror edge's user on its core, say), for at most
    /// `pushback_budget_ms` of each second of a publisher. Anonymous
    /// readers and every other user never do: a slow reader only fills and
    /// drops its own queue (ARCHITECTURE.md, "Who may hold a publisher").
    pub pushback_users: Vec<String>,
    /// Milliseconds per second a publisher may be held for `pushback_users`.
    pub pushback_budget_ms: u64,
    /// Messages kept per client while it is slow or offline (then what
    /// arrives is dropped, counted).
    pub max_queued_messages: usize,
    /// Bytes kept per client while it is slow or offline (then what arrives
    /// is dropped, counted).
    pub max_queued_bytes: usize,
    /// Bytes queued for all sessions together; over it the oldest messages
    /// of the largest offline queue are dropped (counted).
    pub max_queued_bytes_total: usize,
    /// Persistent sessions anonymous clients may hold at once; beyond it an
    /// anonymous client asking for one gets a clean session (counted).
    pub max_anonymous_persistent_sessions: usize,
    /// QoS 1 and 2 messages sent to a client and not yet acknowledged
    /// (an MQTT 5 client's own Receive Maximum may lower it).
    pub max_inflight_messages: u16,
    /// Topic aliases an MQTT 5 client may set towards the broker, per
    /// connection (mosquitto's `max_topic_alias`; 0: none). Aliases towards
    /// the client follow the client's own Topic Alias Maximum.
    pub max_topic_alias: u16,
    /// Distinct subscription filters held at once (a filter is freed when
    /// its last subscriber leaves).
    pub max_filters: usize,
    /// Retained messages held at once; a retained publish over it is
    /// delivered but not retained, and counted (`retained_full`).
    pub max_retained_messages: usize,
    /// Bytes (topic + payload) of retained messages held at once.
    pub max_retained_bytes: usize,
    /// Seconds a v3 persistent session is kept after its client left; also
    /// the longest session expiry an anonymous v5 client gets (mosquitto's
    /// `persistent_client_expiration`).
    pub persistent_client_expiration_secs: u64,
    /// Logged-in users whose sessions get other in-flight and queue limits
    /// than everyone's (`[limits.users.<name>]`): a history ingester that
    /// acknowledges after each commit needs a wide window and a deep queue,
    /// which anonymous readers must not get.
    pub users: std::collections::BTreeMap<String, UserLimits>,
}

/// One user's own limits; what is not set is the `[limits]` value.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_inflight_messages: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued_messages: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued_bytes: Option<usize>,
}

/// The limits one session lives under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    pub max_inflight_messages: u16,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
}

impl Limits {
    /// The limits of a session of `user` (anonymous: `None`).
    pub fn for_user(&self, user: Option<&str>) -> SessionLimits {
        let own = user.and_then(|u| self.users.get(u));
        SessionLimits {
            max_inflight_messages: own
                .and_then(|o| o.max_inflight_messages)
                .unwrap_or(self.max_inflight_messages),
            max_queued_messages: own
                .and_then(|o| o.max_queued_messages)
                .unwrap_or(self.max_queued_messages),
            max_queued_bytes: own
                .and_then(|o| o.max_queued_bytes)
                .unwrap_or(self.max_queued_bytes),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            reserved_connections: None,
            max_connections_per_ip: 0,
            max_packet_size: 256 * 1024,
            max_subscriptions_per_client: 100,
            max_subscriptions_per_packet: 100,
            max_topic_length: 1024,
            max_topic_levels: 32,
            max_keepalive: 65535,
            handshake_timeout_secs: 10,
            max_handshakes: 1024,
            max_handshakes_per_ip: 256,
            pushback_users: Vec::new(),
            pushback_budget_ms: 100,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            max_queued_bytes_total: 1024 * 1024 * 1024,
            max_anonymous_persistent_sessions: 1000,
            max_inflight_messages: 20,
            max_topic_alias: 10,
            max_filters: 100_000,
            max_retained_messages: 100_000,
            max_retained_bytes: 256 * 1024 * 1024,
            persistent_client_expiration_secs: 86_400,
            users: Default::default(),
        }
    }
}

/// What survives a restart (`[persistence]`, `--persistence`, `--fsync`).
/// See `docs/persistence.md`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Persistence {
    /// Directory of the store (created 0700 if missing; one broker at a
    /// time). None: retained messages and persistent sessions live in
    /// memory only.
    pub dir: Option<PathBuf>,
    /// When the store reaches the disk: "always" (before each PUBACK that
    /// depends on it), a period such as "100ms" (the default: PUBACK after
    /// the write; a power loss loses at most the period), or "never".
    pub fsync: crate::store::Fsync,
    /// Bytes of each offline persistent session's queue kept in memory;
    /// what arrives beyond them is on disk only, read back when the client
    /// returns (the queue is still bounded by `max_queued_messages` and
    /// `max_queued_bytes`; `max_queued_bytes_total` counts memory only).
    pub queue_memory: usize,
}

impl Default for Persistence {
    fn default() -> Self {
        Persistence {
            dir: None,
            fsync: crate::store::Fsync::default(),
            queue_memory: 64 * 1024,
        }
    }
}

/// The effective broker configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listeners: Listeners,
    pub tls: Tls,
    pub auth: AuthConfig,
    pub limits: Limits,
    /// Seconds between `$SYS` updates.
    pub sys_interval_secs: u64,
    /// Publish bundled sample events from all four sources (see
    /// `demo.rs`), so a new user sees traffic at once.
    pub demo: bool,
    /// Mirror a core broker (read-only edge).
    pub upstream: Upstream,
    /// The persistent store.
    pub persistence: Persistence,
    /// Worker threads; 0: one per CPU. One thread has the lowest latency
    /// and CPU per message on a small machine (no cross-thread wake-ups);
    /// more carry more fan-out on a large one (BENCHMARKS.md).
    pub threads: usize,
    /// Where readers find firehose-history's page (`http(s)://host:port`):
    /// the live page links each event's subject to its timeline there.
    pub history_url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: Listeners::default(),
            tls: Tls::default(),
            auth: AuthConfig::default(),
            limits: Limits::default(),
            sys_interval_secs: 10,
            threads: 0,
            demo: false,
            upstream: Upstream::default(),
            persistence: Persistence::default(),
            history_url: None,
        }
    }
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// The defaults for a machine with nothing configured: loopback only.
    pub fn apply_default_listeners(&mut self) {
        if self.listeners.is_empty() {
            self.listeners.mqtt = vec![SocketAddr::from(([127, 0, 0, 1], 1883))];
            self.listeners.ws = vec![SocketAddr::from(([127, 0, 0, 1], 8080))];
        }
    }

    /// Checks what can be checked without binding sockets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let tls_needed = !self.listeners.mqtts.is_empty() || !self.listeners.wss.is_empty();
        if tls_needed && (self.tls.cert.is_none() || self.tls.key.is_none()) {
            return Err(ConfigError::Invalid(
                "TLS listeners (--mqtts/--wss) need --cert FILE and --key FILE (PEM)".into(),
            ));
        }
        if self.limits.max_packet_size < 64 {
            return Err(ConfigError::Invalid(
                "max_packet_size must be at least 64 bytes".into(),
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "max_connections must be at least 1".into(),
            ));
        }
        if self
            .limits
            .reserved_connections
            .is_some_and(|r| r >= self.limits.max_connections)
        {
            return Err(ConfigError::Invalid(format!(
                "reserved_connections must be below max_connections ({}), or anonymous clients can never connect",
                self.limits.max_connections
            )));
        }
        if self.limits.max_inflight_messages == 0 {
            return Err(ConfigError::Invalid(
                "max_inflight_messages must be at least 1".into(),
            ));
        }
        for (user, l) in &self.limits.users {
            if l.max_inflight_messages == Some(0) {
                return Err(ConfigError::Invalid(format!(
                    "[limits.users.{user}] max_inflight_messages must be at least 1"
                )));
            }
        }
        if let Some(u) = &self.history_url {
            let rest = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(['"', '<', '>', ' '])) {
                return Err(ConfigError::Invalid(format!(
                    "history_url {u:?} is not an http:// or https:// address (firehose-history's --http, e.g. http://127.0.0.1:8090)"
                )));
            }
        }
        if self.sys_interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "sys_interval_secs must be at least 1".into(),
            ));
        }
        if self.limits.max_subscriptions_per_packet == 0 {
            return Err(ConfigError::Invalid(
                "max_subscriptions_per_packet must be at least 1".into(),
            ));
        }
        if self.limits.max_handshakes < 10 {
            return Err(ConfigError::Invalid(
                "max_handshakes must be at least 10".into(),
            ));
        }
        if self.limits.pushback_budget_ms > 1000 {
            return Err(ConfigError::Invalid(
                "pushback_budget_ms is per second: at most 1000".into(),
            ));
        }
        for o in &self.listeners.ws_allowed_origins {
            if o != "*" && crate::origin::host(o).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "ws_allowed_origins: {o:?} is not an origin; expected scheme://host[:port] (e.g. https://status.example.org) or *"
                )));
            }
        }
        if self.limits.handshake_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "handshake_timeout_secs must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Topic limits as the validators want them.
    pub fn topic_limits(&self) -> TopicLimits {
        TopicLimits {
            max_len: self.limits.max_topic_length,
            max_levels: self.limits.max_topic_levels,
        }
    }

    /// Connections reserved for authenticated users.
    pub fn reserved_connections(&self) -> usize {
        let l = &self.limits;
        l.reserved_connections
            .unwrap_or((l.max_connections / 10).max(1))
            .min(l.max_connections)
    }

    /// Handshake slots only clients that log in may finish (the last tenth).
    pub fn reserved_handshakes(&self) -> usize {
        (self.limits.max_handshakes / 10).max(1)
    }

    /// Whether `user`'s readers may hold publishers back (`pushback_users`).
    pub fn may_push_back(&self, user: Option<&str>) -> bool {
        user.is_some_and(|u| self.limits.pushback_users.iter().any(|p| p == u))
    }

    /// Handshake timeout as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.handshake_timeout_secs)
    }

    /// TOML text of the effective config, without secrets: passwords live
    /// in files, which are named, never read out; a password written into
    /// the upstream URL is shown as `***`.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.upstream.url = shown.upstream.url.as_deref().map(firehose::url::redact);
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Command line of `firehose-broker`.
#[derive(Debug, Parser)]
#[command(
    name = "firehose-broker",
    version,
    about = "The Firehose MQTT broker: anyone may subscribe, only authenticated publishers may write.",
    long_about = "The Firehose MQTT broker. Serves MQTT 3.1, 3.1.1 and 5 on every listener: \
plain TCP (--mqtt), TLS (--mqtts), websockets (--ws, also /healthz and /metrics) and websockets \
over TLS (--wss). Anonymous clients may read everything and publish nothing unless an ACL file \
says otherwise. Settings come from a TOML file (--config or FIREHOSE_BROKER_CONFIG), then flags. \
With no listener configured it serves --mqtt 127.0.0.1:1883 --ws 127.0.0.1:8080.\n\n\
SIGHUP reloads the password and ACL files; SIGTERM/SIGINT shut down cleanly."
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add a user to a mosquitto-format password file or change their password
    /// (the password is read from stdin, or prompted for on a terminal).
    Passwd {
        /// Password file (created with mode 0600 if missing).
        file: PathBuf,
        /// User name (case-sensitive).
        user: String,
    },
}

/// Flags for running the broker.
#[derive(Debug, Default, ClapArgs)]
pub struct RunArgs {
    /// TOML config file; flags override it.
    #[arg(long, env = "FIREHOSE_BROKER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Plain MQTT listener (repeatable); replaces the config file's. ADDR: IP:PORT, HOST:PORT, or PORT for loopback.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub mqtt: Vec<SocketAddr>,
    /// MQTT over TLS listener (repeatable; needs --cert and --key); replaces the config file's. ADDR: IP:PORT, HOST:PORT, or PORT for loopback.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub mqtts: Vec<SocketAddr>,
    /// HTTP/websocket listener (repeatable): MQTT on /mqtt and /, plus /healthz and /metrics; replaces the config file's. ADDR: IP:PORT, HOST:PORT, or PORT for loopback.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub ws: Vec<SocketAddr>,
    /// HTTP/websocket listener over TLS (repeatable); replaces the config file's. ADDR: IP:PORT, HOST:PORT, or PORT for loopback.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub wss: Vec<SocketAddr>,
    /// Origins whose web pages may use the websocket listeners
    /// (scheme://host[:port], comma-separated or repeated; * for any).
    /// Default: any on a public address; on loopback or private addresses
    /// only pages from loopback/private IPs or localhost.
    #[arg(long, value_name = "ORIGIN", value_delimiter = ',')]
    pub ws_allowed_origins: Vec<String>,
    /// Server certificate chain, PEM.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Server private key, PEM.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM).
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// mosquitto_passwd password file: 0600, or root:<service group> 0640; never readable by others.
    #[arg(long, value_name = "FILE")]
    pub passwd: Option<PathBuf>,
    /// mosquitto acl_file.
    #[arg(long, value_name = "FILE")]
    pub acl: Option<PathBuf>,
    /// Refuse clients that do not log in.
    #[arg(long)]
    pub no_anonymous: bool,
    /// Maximum simultaneous connections [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections only authenticated users (bridges) may use, so anonymous
    /// readers can never lock publishers out [default: 10% of --max-connections, at least 1].
    #[arg(long, value_name = "N")]
    pub reserved_connections: Option<usize>,
    /// Anonymous connections allowed from one IP address; 0 means no limit [default: 0].
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// Sockets in a handshake (no CONNECT yet) at once, all listeners; the
    /// last tenth only for clients that log in [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_handshakes: Option<usize>,
    /// Sockets in a handshake from one address; 0: no limit [default: 256].
    #[arg(long, value_name = "N")]
    pub max_handshakes_per_ip: Option<usize>,
    /// A logged-in user whose readers may hold publishers back when their
    /// queue fills, within --pushback-budget-ms (repeatable; e.g. a mirror
    /// edge's user). Nobody else ever slows a publisher [default: none].
    #[arg(long = "pushback-user", value_name = "USER")]
    pub pushback_users: Vec<String>,
    /// Milliseconds of each second a publisher may be held for
    /// --pushback-user readers [default: 100].
    #[arg(long, value_name = "MS")]
    pub pushback_budget_ms: Option<u64>,
    /// Distinct filters one SUBSCRIBE may add or change; a repeated filter
    /// counts once [default: 100].
    #[arg(long, value_name = "N")]
    pub max_subscriptions_per_packet: Option<usize>,
    /// Largest packet accepted, in bytes [default: 262144].
    #[arg(long, value_name = "BYTES")]
    pub max_packet_size: Option<usize>,
    /// Largest keepalive a client may use; v5 clients asking for more are told this one,
    /// v3 clients asking for more are refused, v3 clients asking for none are held to it
    /// [default: 65535].
    #[arg(long, value_name = "SECONDS")]
    pub max_keepalive: Option<u16>,
    /// Messages queued per slow or offline client; beyond, what arrives for
    /// it is dropped (each drop counted as queue_full) [default: 1000].
    #[arg(long, value_name = "N")]
    pub max_queued_messages: Option<usize>,
    /// Bytes (topic + payload) queued per slow or offline client; beyond,
    /// what arrives for it is dropped [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    pub max_queued_bytes: Option<usize>,
    /// Bytes queued for all sessions together; over it the oldest messages of
    /// the largest offline queue go first [default: 1073741824].
    #[arg(long, value_name = "BYTES")]
    pub max_queued_bytes_total: Option<usize>,
    /// Seconds a persistent session is kept after its client left (v3), and
    /// the longest any anonymous client's session lasts [default: 86400].
    #[arg(long, value_name = "SECONDS")]
    pub persistent_client_expiration: Option<u64>,
    /// Persistent sessions anonymous clients may hold at once [default: 1000].
    #[arg(long, value_name = "N")]
    pub max_anonymous_persistent_sessions: Option<usize>,
    /// Retained messages kept; a retained publish over it is delivered but
    /// not retained, and counted as retained_full [default: 100000].
    #[arg(long, value_name = "N")]
    pub max_retained_messages: Option<usize>,
    /// Bytes (topic + payload) of retained messages kept [default: 268435456].
    #[arg(long, value_name = "BYTES")]
    pub max_retained_bytes: Option<usize>,
    /// Seconds between $SYS updates [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub sys_interval: Option<u64>,
    /// Publish sample events from gerrit, nova, launchpad and ansible (two
    /// a second, round and round) as an internal publisher, so
    /// `mosquitto_sub -t '#' -v` and the live page show traffic at once.
    #[arg(long)]
    pub demo: bool,
    /// firehose-history's page (http://HOST:PORT): the live page links each
    /// event's instance, change, bug or playbook to its timeline there.
    #[arg(long, value_name = "URL")]
    pub history_url: Option<String>,
    /// Keep retained messages, persistent sessions and what is queued for
    /// them in DIR, so they survive a restart and a crash (created 0700;
    /// systemd: StateDirectory=). Off by default.
    #[arg(long, value_name = "DIR")]
    pub persistence: Option<PathBuf>,
    /// When the store reaches the disk: always (each PUBACK that depends on
    /// it waits for an fsync, shared by many publishes), a period like
    /// 100ms (PUBACK waits for the write only: a crash of the broker loses
    /// nothing acknowledged, a power loss at most the period), or never
    /// [default: 100ms].
    #[arg(long, value_name = "POLICY")]
    pub fsync: Option<crate::store::Fsync>,
    /// Make this broker a read-only edge that mirrors a core broker:
    /// mqtt:// or mqtts://[USER@]HOST[:PORT] (everything but $SYS, retained
    /// state included; its own clients may only read).
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// CA certificate(s) (PEM) for an mqtts:// upstream with a private CA.
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,
    /// The upstream user's password, first line of FILE.
    #[arg(long, value_name = "FILE")]
    pub upstream_password_file: Option<PathBuf>,
    /// Worker threads [default: 0, one per CPU]. 1 gives the lowest latency
    /// and CPU per message on a small machine.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Log every client connect and disconnect at info (by default only a
    /// summary per minute). FIREHOSE_LOG (an EnvFilter, e.g. "debug" or
    /// "info,firehose_broker::session=debug") overrides all log settings.
    #[arg(short, long)]
    pub verbose: bool,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Check the configuration (and the files it names) and exit; non-zero on error.
    #[arg(long)]
    pub check_config: bool,
}

impl RunArgs {
    /// Builds the effective config: file (if any), then flags, then defaults.
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        let mut c = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        // A listener flag replaces that kind of listener from the file.
        for (dst, src) in [
            (&mut c.listeners.mqtt, &self.mqtt),
            (&mut c.listeners.mqtts, &self.mqtts),
            (&mut c.listeners.ws, &self.ws),
            (&mut c.listeners.wss, &self.wss),
        ] {
            if !src.is_empty() {
                dst.clone_from(src);
            }
        }
        let set = |dst: &mut Option<PathBuf>, src: &Option<PathBuf>| {
            if src.is_some() {
                dst.clone_from(src);
            }
        };
        set(&mut c.tls.cert, &self.cert);
        set(&mut c.tls.key, &self.key);
        set(&mut c.tls.client_ca, &self.client_ca);
        set(&mut c.auth.password_file, &self.passwd);
        set(&mut c.auth.acl_file, &self.acl);
        if self.no_anonymous {
            c.auth.allow_anonymous = false;
        }
        if let Some(v) = self.max_connections {
            c.limits.max_connections = v;
        }
        if let Some(v) = self.reserved_connections {
            c.limits.reserved_connections = Some(v);
        }
        if let Some(v) = self.max_connections_per_ip {
            c.limits.max_connections_per_ip = v;
        }
        if let Some(v) = self.max_packet_size {
            c.limits.max_packet_size = v;
        }
        if let Some(v) = self.max_handshakes {
            c.limits.max_handshakes = v;
        }
        if let Some(v) = self.max_handshakes_per_ip {
            c.limits.max_handshakes_per_ip = v;
        }
        if !self.pushback_users.is_empty() {
            c.limits.pushback_users.clone_from(&self.pushback_users);
        }
        if let Some(v) = self.pushback_budget_ms {
            c.limits.pushback_budget_ms = v;
        }
        if let Some(v) = self.max_subscriptions_per_packet {
            c.limits.max_subscriptions_per_packet = v;
        }
        if !self.ws_allowed_origins.is_empty() {
            c.listeners
                .ws_allowed_origins
                .clone_from(&self.ws_allowed_origins);
        }
        if let Some(v) = self.max_keepalive {
            c.limits.max_keepalive = v;
        }
        if let Some(v) = self.max_queued_messages {
            c.limits.max_queued_messages = v;
        }
        if let Some(v) = self.max_queued_bytes {
            c.limits.max_queued_bytes = v;
        }
        if let Some(v) = self.max_queued_bytes_total {
            c.limits.max_queued_bytes_total = v;
        }
        if let Some(v) = self.persistent_client_expiration {
            c.limits.persistent_client_expiration_secs = v;
        }
        if let Some(v) = self.max_anonymous_persistent_sessions {
            c.limits.max_anonymous_persistent_sessions = v;
        }
        if let Some(v) = self.max_retained_messages {
            c.limits.max_retained_messages = v;
        }
        if let Some(v) = self.max_retained_bytes {
            c.limits.max_retained_bytes = v;
        }
        if let Some(v) = self.sys_interval {
            c.sys_interval_secs = v;
        }
        if let Some(v) = self.threads {
            c.threads = v;
        }
        if self.demo {
            c.demo = true;
        }
        if let Some(u) = &self.history_url {
            c.history_url = Some(u.clone());
        }
        if let Some(u) = &self.upstream {
            c.upstream.url = Some(u.clone());
        }
        set(&mut c.persistence.dir, &self.persistence);
        if let Some(f) = self.fsync {
            c.persistence.fsync = f;
        }
        if let Some(p) = &self.upstream_ca {
            c.upstream.ca = Some(p.clone());
        }
        if let Some(p) = &self.upstream_password_file {
            c.upstream.password_file = Some(p.clone());
        }
        c.apply_default_listeners();
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_loopback() {
        let c = RunArgs::default().to_config().unwrap();
        assert_eq!(c.listeners.mqtt, vec!["127.0.0.1:1883".parse().unwrap()]);
        assert_eq!(c.listeners.ws, vec!["127.0.0.1:8080".parse().unwrap()]);
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.toml");
        std::fs::write(&p, "sys_interval_secs = 3\n[limits]\nmax_connections = 5\n[listeners]\nmqtt = [\"127.0.0.1:1\"]\n").unwrap();
        let a = RunArgs {
            config: Some(p),
            max_connections: Some(7),
            ..Default::default()
        };
        let c = a.to_config().unwrap();
        assert_eq!(c.limits.max_connections, 7);
        assert_eq!(c.sys_interval_secs, 3);
        assert!(
            c.listeners.ws.is_empty(),
            "a configured listener replaces the defaults"
        );
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn listener_flags_replace_the_files_and_take_shorthands() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.toml");
        std::fs::write(
            &p,
            "[listeners]\nmqtt = [\"127.0.0.1:1\"]\nws = [\":8081\"]\n",
        )
        .unwrap();
        let a = RunArgs {
            config: Some(p),
            mqtt: vec![parse_listen("1884").unwrap()],
            ..Default::default()
        };
        let c = a.to_config().unwrap();
        assert_eq!(c.listeners.mqtt, vec!["127.0.0.1:1884".parse().unwrap()]);
        assert_eq!(c.listeners.ws, vec!["127.0.0.1:8081".parse().unwrap()]);
        assert_eq!(
            parse_listen("localhost:1883").unwrap().port(),
            1883,
            "host names resolve"
        );
        assert_eq!(
            parse_listen("[::1]:1883").unwrap(),
            "[::1]:1883".parse().unwrap()
        );
        for bad in ["localhost", "1.2.3.4:x", "99999"] {
            let e = parse_listen(bad).unwrap_err().to_string();
            assert!(e.contains("e.g. 127.0.0.1:1883"), "{bad}: {e}");
        }
    }

    #[test]
    fn print_config_shows_no_password() {
        let a = RunArgs {
            upstream: Some("mqtt://edge:s3cr%40t@core.example:1883".into()),
            ..Default::default()
        };
        let text = a.to_config().unwrap().to_toml();
        assert!(!text.contains("s3cr"), "{text}");
        assert!(text.contains("mqtt://edge:***@core.example:1883"), "{text}");
    }

    #[test]
    fn history_url_is_an_http_address() {
        for bad in [
            "javascript:alert(1)",
            "http://",
            "http://h\"><script>",
            "h:8090",
        ] {
            let a = RunArgs {
                history_url: Some(bad.into()),
                ..Default::default()
            };
            let e = a.to_config().and_then(|c| c.validate().map(|_| c));
            assert!(
                e.as_ref()
                    .is_err_and(|e| e.to_string().contains("e.g. http://127.0.0.1:8090")),
                "{bad}: {e:?}"
            );
        }
        let ok = RunArgs {
            history_url: Some("https://history.example.org".into()),
            ..Default::default()
        };
        assert!(ok.to_config().and_then(|c| c.validate()).is_ok());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = toml::from_str::<Config>("[limits]\nmax_conections = 5\n").unwrap_err();
        assert!(e.to_string().contains("max_conections"), "{e}");
    }

    #[test]
    fn tls_listener_needs_cert() {
        let a = RunArgs {
            mqtts: vec!["127.0.0.1:8883".parse().unwrap()],
            ..Default::default()
        };
        assert!(a.to_config().unwrap_err().to_string().contains("--cert"));
    }
}
