//! Settings: a TOML file (`--config`, see `deploy/history.toml`), then
//! environment variables and flags over it (the binary merges them), read
//! and checked here into one [`Settings`]; nothing here connects.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ingest::IngestConfig;
use crate::retention::{parse_size, Retention};

/// Why the settings cannot be used; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid firehose-history config")]
    Toml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error(transparent)]
    Secret(#[from] firehose::secret::SecretFileError),
    #[error("--broker")]
    Broker(#[source] firehose::url::UrlError),
    #[error(transparent)]
    Filter(crate::ingest::IngestError),
    #[error(transparent)]
    Db(crate::store::StoreError),
    #[error("--max-bytes")]
    MaxBytes(#[source] crate::retention::SizeError),
    #[error("{0}")]
    Invalid(String),
}

/// The file, as written (every key optional; flags win).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub broker: BrokerFile,
    #[serde(default)]
    pub store: StoreFile,
    #[serde(default)]
    pub http: HttpFile,
}

/// `[broker]`: where the events come from.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BrokerFile {
    /// `mqtt://`, `mqtts://`, `ws://`, `wss://`.
    pub url: Option<String>,
    pub username: Option<String>,
    /// A file holding the password (first line; mode 0600 or 0640).
    pub password_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) for mqtts:// and wss://.
    pub ca: Option<PathBuf>,
    /// The persistent session's client id (default `firehose-history`).
    pub session: Option<String>,
    /// Topic filters (default `["#"]`).
    pub filters: Option<Vec<String>>,
    /// A `$share` group, for several ingesters into one PostgreSQL.
    pub share: Option<String>,
    /// Events per committed batch at most (default 1000).
    pub batch: Option<usize>,
    /// The topic levels Zuul's MQTT reporter publishes under (default
    /// `zuul`): its reports there are stored typed `zuul.buildset.<action>`.
    pub zuul_root: Option<String>,
}

/// `[store]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// `sqlite:PATH` or `postgres://USER@HOST/DB`.
    pub db: Option<String>,
    /// Events received longer ago are purged (`30d`; default: kept).
    pub keep: Option<String>,
    /// Past this size the oldest events are purged (`20GiB`; default: no cap).
    pub max_bytes: Option<String>,
    /// How often retention runs (default `60s`).
    pub purge_every: Option<String>,
}

/// `[http]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    /// Where the API listens (default 127.0.0.1:8090); `none` for no API.
    pub listen: Option<String>,
}

/// Everything resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub ingest: IngestConfig,
    pub db: String,
    pub http: Option<SocketAddr>,
    pub retention: Retention,
}

/// The default API address.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8090";

impl File {
    /// Reads a file.
    pub fn read(path: &Path) -> Result<File, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Toml {
            path: path.to_owned(),
            source,
        })
    }

    /// Checks and resolves the merged settings.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let b = &self.broker;
        let broker = b.url.clone().ok_or_else(|| {
            ConfigError::Invalid(
                "no broker: give --broker mqtt://HOST (or [broker] url in --config)".into(),
            )
        })?;
        firehose::url::parse(
            &broker,
            firehose::url::MQTT_SCHEMES,
            firehose::url::MQTT_FORM,
        )
        .map_err(ConfigError::Broker)?;
        let password = match &b.password_file {
            Some(p) => {
                firehose::secret::check(p)?;
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                Some(text.lines().next().unwrap_or_default().to_owned())
            }
            None => None,
        };
        let filters = b.filters.clone().unwrap_or_else(|| vec!["#".into()]);
        if filters.is_empty() {
            return Err(ConfigError::Invalid(
                "[broker] filters is empty: give at least one topic filter (\"#\" for everything)"
                    .into(),
            ));
        }
        let batch = b.batch.unwrap_or(1000);
        if batch == 0 {
            return Err(ConfigError::Invalid(
                "[broker] batch must be at least 1".into(),
            ));
        }
        let ingest = IngestConfig {
            broker,
            username: b.username.clone(),
            password,
            ca: b.ca.clone(),
            session: b
                .session
                .clone()
                .unwrap_or_else(|| "firehose-history".into()),
            filters,
            share: b.share.clone(),
            batch,
            zuul_root: b
                .zuul_root
                .clone()
                .unwrap_or_else(|| firehose::zuul::ROOT.to_owned()),
        };
        ingest.subscriptions().map_err(ConfigError::Filter)?;
        let db = match &self.store.db {
            Some(db) => db.clone(),
            None => format!("sqlite:{}", default_db().display()),
        };
        crate::store::Dialect::of(&db).map_err(ConfigError::Db)?;
        let http = match self.http.listen.as_deref().unwrap_or(DEFAULT_HTTP) {
            "none" => None,
            a => Some(a.parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "--http {a:?}: give ADDRESS:PORT (e.g. {DEFAULT_HTTP}) or none"
                ))
            })?),
        };
        let duration = |key: &str, v: &Option<String>| {
            v.as_deref()
                .map(|d| {
                    humantime::parse_duration(d).map_err(|_| {
                        ConfigError::Invalid(format!(
                            "{key} {d:?}: give a duration like 30d, 12h, 60s"
                        ))
                    })
                })
                .transpose()
        };
        let retention = Retention {
            keep: duration("--keep", &self.store.keep)?,
            max_bytes: self
                .store
                .max_bytes
                .as_deref()
                .map(|v| parse_size(v).map_err(ConfigError::MaxBytes))
                .transpose()?,
            every: duration("[store] purge_every", &self.store.purge_every)?
                .unwrap_or(std::time::Duration::from_secs(60)),
        };
        if retention.every.is_zero() {
            return Err(ConfigError::Invalid(
                "[store] purge_every must be more than 0".into(),
            ));
        }
        Ok(Settings {
            ingest,
            db,
            http,
            retention,
        })
    }
}

/// Where the database goes when `--db` is not given: systemd's
/// `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/firehose`, else
/// `~/.local/state/firehose`.
pub fn default_db() -> PathBuf {
    let dir = std::env::var_os("STATE_DIRECTORY")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_STATE_HOME").map(|d| PathBuf::from(d).join("firehose")))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/firehose"))
        })
        .unwrap_or_else(|| PathBuf::from("."));
    dir.join("history.db")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_alone_is_enough_and_the_rest_has_defaults() {
        let f = File {
            broker: BrokerFile {
                url: Some("mqtt://127.0.0.1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let s = f.settings().unwrap();
        assert_eq!(s.ingest.filters, vec!["#"]);
        assert_eq!(s.ingest.session, "firehose-history");
        assert!(s.db.starts_with("sqlite:") && s.db.ends_with("history.db"));
        assert_eq!(s.http, Some(DEFAULT_HTTP.parse().unwrap()));
    }

    #[test]
    fn what_cannot_work_is_refused_with_the_fix() {
        let mut f = File::default();
        assert!(f.settings().unwrap_err().to_string().contains("--broker"));
        f.broker.url = Some("http://x".into());
        assert!(f.settings().is_err());
        f.broker.url = Some("mqtt://127.0.0.1".into());
        f.broker.filters = Some(vec!["$SYS/#".into()]);
        assert!(f.settings().unwrap_err().to_string().contains("$SYS"));
        f.broker.filters = None;
        f.store.db = Some("mysql://x".into());
        assert!(f
            .settings()
            .unwrap_err()
            .to_string()
            .contains("sqlite:PATH"));
        f.store.db = None;
        f.http.listen = Some("localhost".into());
        assert!(f
            .settings()
            .unwrap_err()
            .to_string()
            .contains("ADDRESS:PORT"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "secret\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        f.http.listen = None;
        f.store.keep = Some("a month".into());
        assert!(f.settings().unwrap_err().to_string().contains("30d"));
        f.store.keep = Some("30d".into());
        f.store.max_bytes = Some("20 GiB".into());
        assert_eq!(f.settings().unwrap().retention.max_bytes, Some(20 << 30));
        f.broker.password_file = Some(p);
        assert!(f.settings().unwrap_err().to_string().contains("chmod 0600"));
    }
}
