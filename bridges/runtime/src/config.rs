//! The publishing options every bridge shares: flags ([`PublishArgs`]),
//! the `[publish]` table of the bridge's TOML file ([`PublishConfig`]),
//! and their checked, ready-to-use form ([`Publish`]).
//!
//! Precedence is the usual one: defaults, then the config file, then flags.
//! A bridge's file has two tables, `[publish]` (this module) and `[source]`
//! (the bridge's own), read by [`load_file`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use firehose::PayloadMode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::mqtt::{BrokerUrl, MqttError};

/// Flags shared by every bridge (flattened into each bridge's CLI).
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Publishing")]
pub struct PublishArgs {
    /// Broker URL: mqtt://HOST[:1883], mqtts://HOST[:8883], ws://HOST[:80]/mqtt or
    /// wss://HOST[:443]/mqtt. USER:PASSWORD@ may come before HOST.
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// User name to log in with (overrides the URL's).
    #[arg(long, value_name = "USER")]
    pub username: Option<String>,
    /// File holding the password (first line; must not be readable by group or others).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) to check the broker's TLS certificate; default: the system's.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// MQTT client id (default: firehose-<bridge>-<instance>-<random>, so
    /// nobody can guess it from the public status topic).
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// Prefix for every event topic, e.g. "site1" gives site1/gerrit/...
    #[arg(long, value_name = "TOPIC")]
    pub base_topic: Option<String>,
    /// QoS for events: 1 (at least once, the default) or 0.
    #[arg(long, value_name = "0|1")]
    pub qos: Option<u8>,
    /// Payload: "cloudevents" (default) or "raw" (what the original publisher sent).
    #[arg(long, value_name = "MODE")]
    pub payload: Option<PayloadMode>,
    /// Keep undelivered events on disk here, across broker outages and restarts.
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Most bytes the spool holds before dropping the oldest events.
    #[arg(long, value_name = "BYTES")]
    pub spool_max_bytes: Option<usize>,
    /// Milliseconds between fsyncs of the spool (a machine crash loses at
    /// most this much of what the broker had not acknowledged); 0: only at
    /// exit [default: 1000].
    #[arg(long, value_name = "MS")]
    pub spool_fsync: Option<u64>,
    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Name of this instance in the status topic (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
    /// Append input that is not an event to this JSON-lines file
    /// [default: dead-letter.jsonl in the --spool directory; without a
    /// spool, firehose-<bridge>.dead-letter.jsonl in the working directory].
    #[arg(long, value_name = "FILE")]
    pub dead_letter: Option<PathBuf>,
    /// On SIGTERM, how long to keep trying to deliver what is spooled.
    #[arg(long, value_name = "SECONDS")]
    pub flush_timeout: Option<u64>,
    /// Keep retrying when the broker refuses our credentials (by default
    /// the bridge exits with an error saying what to fix).
    #[arg(long)]
    pub retry_auth: bool,
}

/// The `[publish]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishConfig {
    pub broker: String,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub client_id: Option<String>,
    pub base_topic: String,
    pub qos: u8,
    pub payload: PayloadMode,
    pub spool: Option<PathBuf>,
    pub spool_max_bytes: usize,
    /// Milliseconds between spool fsyncs; 0: only at exit.
    pub spool_fsync_ms: u64,
    pub metrics: Option<SocketAddr>,
    pub instance: Option<String>,
    pub dead_letter: Option<PathBuf>,
    /// Seconds between PINGREQs to the broker.
    pub keep_alive_secs: u64,
    /// Publishes in flight (sent, not yet acknowledged) at once.
    pub max_inflight: usize,
    /// On SIGTERM, seconds to keep trying to deliver what is spooled.
    pub flush_timeout: u64,
    /// Keep retrying when the broker refuses our credentials.
    pub retry_auth: bool,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            broker: "mqtt://127.0.0.1:1883".to_owned(),
            username: None,
            password_file: None,
            ca: None,
            client_id: None,
            base_topic: String::new(),
            qos: 1,
            payload: PayloadMode::Cloudevents,
            spool: None,
            spool_max_bytes: 64 * 1024 * 1024,
            spool_fsync_ms: 1000,
            metrics: None,
            instance: None,
            dead_letter: None,
            keep_alive_secs: 30,
            max_inflight: 100,
            flush_timeout: 10,
            retry_auth: false,
        }
    }
}

/// Configuration errors, each naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(transparent)]
    Broker(#[from] MqttError),
    #[error("--qos {0}: use 0 or 1")]
    Qos(u8),
    #[error("password file {path}: {reason}")]
    Password { path: PathBuf, reason: String },
    #[error("password file {path} is open to others (mode {mode:o}); run: chmod 0600 {path} (or, for a service user: chown root:<service group> {path} && chmod 0640 {path})")]
    PasswordMode { path: PathBuf, mode: u32 },
    #[error("a password was given but no user name: add --username or USER@ to the broker URL")]
    PasswordWithoutUser,
    #[error("a user name ({0}) but no password: add --password-file FILE (mode 0600), or USER:PASS@ in the broker URL")]
    UserWithoutPassword(String),
    #[error(transparent)]
    BaseTopic(firehose::topic::TopicSettingError),
    #[error("--ca {0} is set but the broker URL is not mqtts:// or wss://, so it would be ignored: use a TLS URL or drop --ca")]
    UnusedCa(PathBuf),
}

/// A bridge's config file: `[publish]` and the bridge's `[source]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig<S> {
    #[serde(default)]
    pub publish: PublishConfig,
    #[serde(default)]
    pub source: S,
}

/// Reads a bridge's TOML config file.
pub fn load_file<S: DeserializeOwned + Default>(path: &Path) -> Result<FileConfig<S>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

impl PublishConfig {
    /// Lets flags override the file.
    pub fn apply(&mut self, a: &PublishArgs) {
        fn set<T: Clone>(dst: &mut T, src: &Option<T>) {
            if let Some(v) = src {
                *dst = v.clone();
            }
        }
        fn set_opt<T: Clone>(dst: &mut Option<T>, src: &Option<T>) {
            if src.is_some() {
                dst.clone_from(src);
            }
        }
        set(&mut self.broker, &a.broker);
        set_opt(&mut self.username, &a.username);
        set_opt(&mut self.password_file, &a.password_file);
        set_opt(&mut self.ca, &a.ca);
        set_opt(&mut self.client_id, &a.client_id);
        set(&mut self.base_topic, &a.base_topic);
        set(&mut self.qos, &a.qos);
        set(&mut self.payload, &a.payload);
        set_opt(&mut self.spool, &a.spool);
        set(&mut self.spool_max_bytes, &a.spool_max_bytes);
        set(&mut self.spool_fsync_ms, &a.spool_fsync);
        set_opt(&mut self.metrics, &a.metrics);
        set_opt(&mut self.instance, &a.instance);
        set_opt(&mut self.dead_letter, &a.dead_letter);
        set(&mut self.flush_timeout, &a.flush_timeout);
        if a.retry_auth {
            self.retry_auth = true;
        }
    }

    /// Checks everything and reads the files it names.
    pub fn resolve(&self, bridge: &str) -> Result<Publish, ConfigError> {
        let mut url: BrokerUrl = self.broker.parse()?;
        if self.qos > 1 {
            return Err(ConfigError::Qos(self.qos));
        }
        if let Some(u) = &self.username {
            url.username = Some(u.clone());
        }
        if let Some(p) = &self.password_file {
            url.password = Some(read_password(p)?);
        }
        if url.password.is_some() && url.username.is_none() {
            return Err(ConfigError::PasswordWithoutUser);
        }
        if let (Some(u), None) = (&url.username, &url.password) {
            return Err(ConfigError::UserWithoutPassword(u.clone()));
        }
        if !self.base_topic.is_empty() {
            firehose::topic::check_configured("--base-topic", &self.base_topic, false)
                .map_err(ConfigError::BaseTopic)?;
        }
        let tls = match url.scheme {
            crate::mqtt::Scheme::Mqtts | crate::mqtt::Scheme::Wss => {
                Some(crate::mqtt::tls_config(self.ca.as_deref())?)
            }
            _ => {
                if let Some(ca) = &self.ca {
                    return Err(ConfigError::UnusedCa(ca.clone()));
                }
                None
            }
        };
        let instance = self.instance.clone().unwrap_or_else(hostname);
        let client_id = self.client_id.clone().unwrap_or_else(|| {
            // The bridge's session is clean (the spool is its state), so
            // a fresh random suffix per start costs nothing.
            format!("firehose-{bridge}-{instance}-{:08x}", rand::random::<u32>())
        });
        let dead_letter = self
            .dead_letter
            .clone()
            .unwrap_or_else(|| match &self.spool {
                Some(dir) => dir.join("dead-letter.jsonl"),
                None => PathBuf::from(format!("firehose-{bridge}.dead-letter.jsonl")),
            });
        Ok(Publish {
            url,
            tls,
            client_id,
            instance,
            base_topic: self.base_topic.clone(),
            qos: self.qos,
            payload: self.payload,
            spool: self.spool.clone(),
            spool_max_bytes: self.spool_max_bytes.max(1024),
            spool_fsync: (self.spool_fsync_ms > 0)
                .then(|| std::time::Duration::from_millis(self.spool_fsync_ms)),
            metrics: self.metrics,
            dead_letter,
            keep_alive: std::time::Duration::from_secs(self.keep_alive_secs.clamp(5, 3600)),
            max_inflight: self.max_inflight.clamp(1, 65_000),
            flush_timeout: std::time::Duration::from_secs(self.flush_timeout),
            retry_auth: self.retry_auth,
        })
    }
}

/// The checked publishing configuration.
#[derive(Clone)]
pub struct Publish {
    /// The broker, with credentials (shown without the password).
    pub url: BrokerUrl,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub client_id: String,
    pub instance: String,
    pub base_topic: String,
    pub qos: u8,
    pub payload: PayloadMode,
    pub spool: Option<PathBuf>,
    pub spool_max_bytes: usize,
    /// How often the spool is fsynced (`None`: only at exit).
    pub spool_fsync: Option<std::time::Duration>,
    pub metrics: Option<SocketAddr>,
    pub dead_letter: PathBuf,
    pub keep_alive: std::time::Duration,
    pub max_inflight: usize,
    pub flush_timeout: std::time::Duration,
    pub retry_auth: bool,
}

/// The mode of a secret file when it is too open, `None` when it is fine:
/// the one rule every Firehose program applies ([`firehose::secret`]).
pub use firehose::secret::too_open;

/// The first line of a password file that only its owner may read.
fn read_password(path: &Path) -> Result<String, ConfigError> {
    let open = too_open(path).map_err(|e| ConfigError::Password {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if let Some(mode) = open {
        return Err(ConfigError::PasswordMode {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Password {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// This machine's host name, for status messages and default ids.
pub fn hostname() -> String {
    firehose::status::hostname()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_password_file_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        let mut c: FileConfig<toml::Table> =
            toml::from_str("[publish]\nbroker = \"mqtt://b:1\"\nqos = 0\n[source]\nx = 1\n")
                .unwrap();
        c.publish.apply(&PublishArgs {
            qos: Some(1),
            username: Some("u".into()),
            password_file: Some(pw.clone()),
            ..Default::default()
        });
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = c.publish.resolve("gerrit").err().unwrap().to_string();
        assert!(e.contains("chmod 0600"), "{e}");
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let p = c.publish.resolve("gerrit").unwrap();
        assert_eq!(p.qos, 1);
        assert_eq!(p.url.password.as_deref(), Some("secret"));
        assert_eq!(p.url.to_string(), "mqtt://u@b:1");
        assert!(p.client_id.starts_with("firehose-gerrit-"));
    }
}
