//! `firehose-nova`'s options: one deployment from flags, or several
//! (cells, regions) from the `[source]` table's `[[source.deployments]]`.

use std::path::{Path, PathBuf};

use lapin::tcp::OwnedTLSConfig;
use lapin::uri::{AMQPScheme, AMQPUri};
use serde::{Deserialize, Serialize};

/// Flags for one deployment (and the source-wide limits).
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Nova")]
pub struct NovaArgs {
    /// RabbitMQ: amqp://USER[:PASS]@HOST[:5672]/VHOST, or amqps:// (TLS, port
    /// 5671). Vhost "/" is %2f; percent-escape other reserved characters.
    #[arg(long, value_name = "URL")]
    pub amqp: Option<String>,
    /// CA certificate(s) (PEM) to check RabbitMQ's TLS certificate (amqps://);
    /// default: the system's.
    #[arg(long, value_name = "FILE")]
    pub amqp_ca: Option<PathBuf>,
    /// Name of the deployment (cell, region): the second topic level.
    #[arg(long, value_name = "NAME")]
    pub deployment: Option<String>,
    /// File with the AMQP password (first line; mode 0600).
    #[arg(long, value_name = "FILE")]
    pub amqp_password_file: Option<PathBuf>,
    /// ostro-style hosts file: lines of `HOST PASSWORD`; the URL's host is looked up.
    #[arg(long, value_name = "FILE")]
    pub hosts_file: Option<PathBuf>,
    /// Exchange nova publishes to [default: nova].
    #[arg(long, value_name = "NAME")]
    pub exchange: Option<String>,
    /// Its type [default: topic].
    #[arg(long, value_name = "TYPE")]
    pub exchange_type: Option<String>,
    /// Routing keys to bind (repeatable) [default: notifications.* and versioned_notifications.*].
    #[arg(long = "routing-key", value_name = "KEY")]
    pub routing_keys: Vec<String>,
    /// Our own queue [default: firehose.<deployment>].
    #[arg(long, value_name = "NAME")]
    pub queue: Option<String>,
    /// Declare the queue durable (true/false) [default: true].
    #[arg(long, value_name = "BOOL")]
    pub durable: Option<bool>,
    /// Declare the queue auto-delete (true/false) [default: false].
    #[arg(long, value_name = "BOOL")]
    pub auto_delete: Option<bool>,
    /// Declare the exchange if it does not exist (normally nova does).
    #[arg(long)]
    pub declare_exchange: bool,
    /// Unacknowledged messages RabbitMQ may hand us at once [default: 200].
    #[arg(long, value_name = "N")]
    pub prefetch: Option<u16>,
    /// Send bad bodies to this exchange (as well as the dead-letter file).
    #[arg(long, value_name = "NAME")]
    pub dead_letter_exchange: Option<String>,
    /// Largest body accepted; larger ones are dead-lettered [default: 8 MiB].
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
}

/// One `[[source.deployments]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    pub name: String,
    pub amqp: String,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub hosts_file: Option<PathBuf>,
    /// CA certificate(s) for amqps:// (default: the system's).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default = "default_exchange")]
    pub exchange: String,
    #[serde(default = "default_exchange_type")]
    pub exchange_type: String,
    #[serde(default = "default_routing_keys")]
    pub routing_keys: Vec<String>,
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    pub declare_exchange: bool,
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    #[serde(default)]
    pub dead_letter_exchange: Option<String>,
}

fn default_exchange() -> String {
    "nova".to_owned()
}
fn default_exchange_type() -> String {
    "topic".to_owned()
}
fn default_routing_keys() -> Vec<String> {
    vec![
        "notifications.*".to_owned(),
        "versioned_notifications.*".to_owned(),
    ]
}
fn yes() -> bool {
    true
}
fn default_prefetch() -> u16 {
    200
}

/// The `[source]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NovaConfig {
    pub deployments: Vec<DeploymentConfig>,
    pub max_body_bytes: usize,
}

impl Default for NovaConfig {
    fn default() -> Self {
        NovaConfig {
            deployments: Vec::new(),
            max_body_bytes: 8 * 1024 * 1024,
        }
    }
}

/// What an AMQP URL looks like, for errors.
const AMQP_FORM: &str = "amqp[s]://USER[:PASS]@HOST[:PORT]/VHOST";

/// Why an AMQP URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AmqpUrlError {
    /// Not a URL, or not amqp:// or amqps:// (the reason names the form).
    #[error(transparent)]
    Url(#[from] firehose_bridge::url::UrlError),
    #[error("{0}: no user; expected {AMQP_FORM}")]
    NoUser(String),
    /// lapin's own parser refused the vhost or the query options.
    #[error("{0}; expected {AMQP_FORM}")]
    Lapin(String),
}

/// Configuration errors, each naming the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no deployment: pass --amqp URL --deployment NAME, or [[source.deployments]] in --config"
    )]
    NoDeployment,
    #[error("--amqp needs --deployment NAME (the topic level that tells deployments apart)")]
    NoName,
    #[error(transparent)]
    Name(firehose::topic::TopicSettingError),
    #[error("deployment {0:?} appears twice")]
    Duplicate(String),
    #[error("deployment {name:?}: AMQP URL")]
    Url {
        name: String,
        #[source]
        source: AmqpUrlError,
    },
    #[error("deployment {name:?}: {path}: {reason}")]
    File {
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error("deployment {name:?}: {path} is open to others (mode {mode:o}); run: chmod 0600 {path} (or, for a service user: chown root:<service group> {path} && chmod 0640 {path})")]
    Mode {
        name: String,
        path: PathBuf,
        mode: u32,
    },
    #[error("deployment {name:?}: host {host} is not in the hosts file {path}")]
    NotInHosts {
        name: String,
        host: String,
        path: PathBuf,
    },
    #[error("deployment {name:?}: exchange type {kind:?}: use topic, direct, fanout or headers")]
    ExchangeType { name: String, kind: String },
    #[error("deployment {name:?}: a CA file ({path}) is set but the URL is not amqps://, so it would be ignored: use amqps:// or drop it")]
    UnusedCa { name: String, path: PathBuf },
}

/// A checked deployment, ready to connect.
#[derive(Clone)]
pub struct Deployment {
    pub name: String,
    /// The parsed URI, password included: never log it (use `display`).
    pub uri: AMQPUri,
    /// TLS settings for amqps:// (the CA, when one is named).
    pub tls: OwnedTLSConfig,
    /// The URI without the password, for logs and CloudEvents `source`.
    pub display: String,
    pub exchange: String,
    pub exchange_kind: lapin::ExchangeKind,
    pub routing_keys: Vec<String>,
    pub queue: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub declare_exchange: bool,
    pub prefetch: u16,
    pub dead_letter_exchange: Option<String>,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("name", &self.name)
            .field("amqp", &self.display)
            .field("exchange", &self.exchange)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl NovaConfig {
    /// Adds the deployment the flags describe, if any.
    pub fn apply(&mut self, a: &NovaArgs) -> Result<(), ConfigError> {
        if let Some(n) = a.max_body_bytes {
            self.max_body_bytes = n;
        }
        let Some(amqp) = &a.amqp else {
            return Ok(());
        };
        let name = a.deployment.clone().ok_or(ConfigError::NoName)?;
        let mut d = DeploymentConfig {
            name,
            amqp: amqp.clone(),
            password_file: a.amqp_password_file.clone(),
            hosts_file: a.hosts_file.clone(),
            ca: a.amqp_ca.clone(),
            exchange: a.exchange.clone().unwrap_or_else(default_exchange),
            exchange_type: a
                .exchange_type
                .clone()
                .unwrap_or_else(default_exchange_type),
            routing_keys: a.routing_keys.clone(),
            queue: a.queue.clone(),
            durable: a.durable.unwrap_or(true),
            auto_delete: a.auto_delete.unwrap_or(false),
            declare_exchange: a.declare_exchange,
            prefetch: a.prefetch.unwrap_or_else(default_prefetch),
            dead_letter_exchange: a.dead_letter_exchange.clone(),
        };
        if d.routing_keys.is_empty() {
            d.routing_keys = default_routing_keys();
        }
        self.deployments.push(d);
        Ok(())
    }

    /// Checks every deployment and reads the files they name.
    pub fn resolve(&self) -> Result<Vec<Deployment>, ConfigError> {
        if self.deployments.is_empty() {
            return Err(ConfigError::NoDeployment);
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for d in &self.deployments {
            firehose::topic::check_configured("deployment", &d.name, true)
                .map_err(ConfigError::Name)?;
            if !seen.insert(d.name.clone()) {
                return Err(ConfigError::Duplicate(d.name.clone()));
            }
            out.push(d.resolve()?);
        }
        Ok(out)
    }
}

impl DeploymentConfig {
    fn resolve(&self) -> Result<Deployment, ConfigError> {
        let name = self.name.clone();
        let (mut uri, display, host) =
            parse_amqp(&self.amqp).map_err(|source| ConfigError::Url {
                name: name.clone(),
                source,
            })?;
        if let Some(p) = &self.password_file {
            uri.authority.userinfo.password = first_line(&name, p)?;
        } else if let Some(hosts) = &self.hosts_file {
            let text = read_private(&name, hosts)?;
            uri.authority.userinfo.password = text
                .lines()
                .filter_map(|l| {
                    let mut it = l.split_whitespace();
                    Some((it.next()?, it.next()?))
                })
                .find(|(h, _)| *h == host)
                .map(|(_, p)| p.to_owned())
                .ok_or_else(|| ConfigError::NotInHosts {
                    name: name.clone(),
                    host: host.clone(),
                    path: hosts.clone(),
                })?;
        }
        let tls = match (&self.ca, &uri.scheme) {
            (None, _) => OwnedTLSConfig::default(),
            (Some(ca), AMQPScheme::AMQPS) => OwnedTLSConfig {
                identity: None,
                cert_chain: Some(std::fs::read_to_string(ca).map_err(|e| ConfigError::File {
                    name: name.clone(),
                    path: ca.clone(),
                    reason: e.to_string(),
                })?),
            },
            (Some(ca), AMQPScheme::AMQP) => {
                return Err(ConfigError::UnusedCa {
                    name,
                    path: ca.clone(),
                })
            }
        };
        let kind = match self.exchange_type.as_str() {
            "topic" => lapin::ExchangeKind::Topic,
            "direct" => lapin::ExchangeKind::Direct,
            "fanout" => lapin::ExchangeKind::Fanout,
            "headers" => lapin::ExchangeKind::Headers,
            other => {
                return Err(ConfigError::ExchangeType {
                    name,
                    kind: other.to_owned(),
                })
            }
        };
        Ok(Deployment {
            uri,
            tls,
            display,
            queue: self
                .queue
                .clone()
                .unwrap_or_else(|| format!("firehose.{name}")),
            name,
            exchange: self.exchange.clone(),
            exchange_kind: kind,
            routing_keys: self.routing_keys.clone(),
            durable: self.durable,
            auto_delete: self.auto_delete,
            declare_exchange: self.declare_exchange,
            prefetch: self.prefetch.max(1),
            dead_letter_exchange: self.dead_letter_exchange.clone(),
        })
    }
}

/// Parses an AMQP URL with the `url` crate: the URI to connect with
/// (userinfo percent-decoded, as RFC 3986 says), the URL to show (no
/// password), and the host (to look up in a hosts file).
///
/// lapin's own parser is used for the scheme, vhost and query options, but
/// not for the host: it reads only domain names, so an IP address would
/// silently become "localhost".
pub fn parse_amqp(text: &str) -> Result<(AMQPUri, String, String), AmqpUrlError> {
    let e = firehose_bridge::url::parse(text, &[("amqp", 5672), ("amqps", 5671)], AMQP_FORM)?;
    let Some(user) = e.user else {
        return Err(AmqpUrlError::NoUser(e.shown));
    };
    let mut uri: AMQPUri = text.parse().map_err(AmqpUrlError::Lapin)?;
    uri.authority.host = e.host.clone();
    uri.authority.port = e.port;
    uri.authority.userinfo.username = user;
    // Not lapin's hidden default ("guest"): a password file, a hosts file,
    // or none.
    uri.authority.userinfo.password = e.password.unwrap_or_default();
    Ok((uri, e.shown, e.host))
}

fn read_private(name: &str, path: &Path) -> Result<String, ConfigError> {
    let file_err = |reason: String| ConfigError::File {
        name: name.to_owned(),
        path: path.to_owned(),
        reason,
    };
    if let Some(mode) =
        firehose_bridge::config::too_open(path).map_err(|e| file_err(e.to_string()))?
    {
        return Err(ConfigError::Mode {
            name: name.to_owned(),
            path: path.to_owned(),
            mode,
        });
    }
    std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))
}

fn first_line(name: &str, path: &Path) -> Result<String, ConfigError> {
    Ok(read_private(name, path)?
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_urls_are_decoded_and_hosts_kept() {
        let (u, shown, host) = parse_amqp("amqp://u:p%40ss%2Fw@10.0.0.7/%2f").unwrap();
        assert_eq!(u.authority.userinfo.username, "u");
        assert_eq!(u.authority.userinfo.password, "p@ss/w");
        assert_eq!(
            (host.as_str(), u.authority.host.as_str()),
            ("10.0.0.7", "10.0.0.7")
        );
        assert_eq!((u.authority.port, u.vhost.as_str()), (5672, "/"));
        assert_eq!(shown, "amqp://u@10.0.0.7/%2f");
        let (u, _, _) = parse_amqp("amqps://n%C3%B6va@[::1]:5999/cells?heartbeat=10").unwrap();
        assert_eq!(u.scheme, AMQPScheme::AMQPS);
        assert_eq!(u.authority.userinfo.username, "növa");
        assert_eq!((u.authority.host.as_str(), u.authority.port), ("::1", 5999));
        assert_eq!(u.query.heartbeat, Some(10));
        let (u, _, _) = parse_amqp("amqps://u@rabbit").unwrap();
        assert_eq!(u.authority.port, 5671);
        for bad in ["http://u@h/", "amqp://h/", "amqp://u@/x", "not a url"] {
            let e = parse_amqp(bad).unwrap_err().to_string();
            assert!(e.contains("expected amqp[s]://USER"), "{bad}: {e}");
        }
    }

    #[test]
    fn deployment_names_are_single_plain_levels() {
        for bad in ["cell/1", "cell+", "$cell", ""] {
            let mut c = NovaConfig::default();
            c.apply(&NovaArgs {
                amqp: Some("amqp://nova:pw@rabbit1/nova".into()),
                deployment: Some(bad.into()),
                ..Default::default()
            })
            .unwrap();
            let e = c.resolve().unwrap_err().to_string();
            assert!(
                e.contains("deployment") && e.contains("e.g."),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn flags_file_hosts_file_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "rabbit1 s3cr:t\nrabbit2 other\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        // Readable by others: refused. (Group-readable 0640 is fine when root
        // or this process owns the file: a service reading root:<group> 0640.)
        std::fs::set_permissions(&hosts, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut c = NovaConfig::default();
        c.apply(&NovaArgs {
            amqp: Some("amqp://nova@rabbit1:5673/nova".into()),
            deployment: Some("cell1".into()),
            hosts_file: Some(hosts.clone()),
            ..Default::default()
        })
        .unwrap();
        let e = c.resolve().unwrap_err().to_string();
        assert!(e.contains("chmod 0600"), "{e}");
        std::fs::set_permissions(&hosts, std::fs::Permissions::from_mode(0o600)).unwrap();
        let d = &c.resolve().unwrap()[0];
        assert_eq!(d.uri.authority.userinfo.password, "s3cr:t");
        assert_eq!(d.uri.authority.host, "rabbit1");
        assert_eq!(d.uri.authority.port, 5673);
        assert_eq!(d.uri.vhost, "nova");
        assert_eq!(d.display, "amqp://nova@rabbit1:5673/nova");
        assert_eq!(d.queue, "firehose.cell1");
        assert_eq!(
            d.routing_keys,
            vec!["notifications.*", "versioned_notifications.*"]
        );
        assert!(!format!("{d:?}").contains("s3cr"));
        let mut c2 = NovaConfig::default();
        assert!(matches!(
            c2.apply(&NovaArgs {
                amqp: Some("amqp://a@b/".into()),
                ..Default::default()
            }),
            Err(ConfigError::NoName)
        ));
        assert!(matches!(c2.resolve(), Err(ConfigError::NoDeployment)));
    }
}
