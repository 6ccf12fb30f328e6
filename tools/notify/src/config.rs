//! The TOML file: `[broker]`, named `[[target]]`s and `[[rule]]`s. Read,
//! checked (every template and jq expression compiles, every rule names
//! known targets) and turned into plain settings; nothing here connects.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a configuration cannot be used; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// (`error` is in the message, so it is not also a `source`: anyhow
    /// would print it twice.)
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Toml { path: PathBuf, reason: String },
    #[error(
        "{path} holds a password and is open to others (mode {mode:o}); fix it with: chmod 0600 {path} (a service that runs as its own user may read a root-owned file through its group: chown root:<service group> {path} && chmod 0640 {path})"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{0}")]
    Invalid(String),
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub broker: BrokerConfig,
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetConfig>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
}

/// `[broker]`: where the events come from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `mqtt://`, `mqtts://`, `ws://`, `wss://`.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// A file holding the password (first line), instead of `password`.
    pub password_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) for mqtts:// and wss://.
    pub ca: Option<PathBuf>,
    pub client_id: Option<String>,
    /// A persistent session: what arrives while notify is away (a restart,
    /// an upgrade) is delivered when it returns.
    #[serde(default)]
    pub session: bool,
    /// On start, replay what firehose-history stored since then (`2h`, an
    /// RFC 3339 time, or a cursor) through the rules before going live: no
    /// gap, no duplicate. Needs `history`.
    pub since: Option<String>,
    /// firehose-history's API (`http://HOST:PORT`), for `since`.
    pub history: Option<String>,
    /// The topic levels Zuul's MQTT reporter publishes under: its reports
    /// there are typed `zuul.buildset.<action>` for rules' `types`.
    #[serde(default = "zuul_root")]
    pub zuul_root: String,
}

fn zuul_root() -> String {
    firehose::zuul::ROOT.to_owned()
}

/// Settings every target shares.
#[derive(Debug, Clone, Deserialize)]
pub struct TargetConfig {
    pub name: String,
    #[serde(flatten)]
    pub kind: TargetKind,
    /// Notifications waiting for this target at most; beyond, the oldest
    /// is dropped and counted.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Attempts per notification (with backoff 1 s, 2 s, 4 s ... 60 s).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// How long one attempt may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_queue() -> usize {
    1000
}
fn default_attempts() -> u32 {
    5
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// What a target does.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum TargetKind {
    /// Runs a program: the event as one JSON document on stdin, the common
    /// fields as `FIREHOSE_*` variables; each argument is a template.
    Exec { argv: Vec<String> },
    /// An HTTP POST or PUT.
    Webhook {
        url: String,
        #[serde(default = "default_method")]
        method: String,
        /// Template of the body; default: the rule's message for a preset,
        /// else the event as JSON.
        body: Option<String>,
        #[serde(default)]
        headers: std::collections::BTreeMap<String, String>,
        /// `slack`, `mattermost` (`{"text": message}`) or `matrix`
        /// (`{"msgtype": "m.text", "body": message}`).
        preset: Option<String>,
        /// CA certificate(s) (PEM) for an https:// URL.
        ca: Option<PathBuf>,
    },
    /// Mail through an SMTP server.
    Smtp {
        host: String,
        port: Option<u16>,
        /// `starttls` (default), `tls` or `none` (loopback relays only).
        #[serde(default = "default_security")]
        security: String,
        username: Option<String>,
        password: Option<String>,
        password_file: Option<PathBuf>,
        from: String,
        to: Vec<String>,
        #[serde(default = "default_subject")]
        subject: String,
        /// Template of the body; default: the rule's message.
        body: Option<String>,
        /// CA certificate(s) (PEM) for TLS.
        ca: Option<PathBuf>,
    },
    /// Appends one line per notification.
    File {
        path: PathBuf,
        /// Template of the line; default: the rule's message.
        line: Option<String>,
    },
    /// Publishes to an MQTT broker (the firehose's own by default: the
    /// user needs write access there).
    Mqtt {
        /// Template of the topic.
        topic: String,
        /// Another broker; default: `[broker]`'s URL and credentials.
        url: Option<String>,
        username: Option<String>,
        password: Option<String>,
        password_file: Option<PathBuf>,
        #[serde(default)]
        retain: bool,
        #[serde(default = "default_qos")]
        qos: u8,
        /// Template of the payload; default: the rule's message.
        payload: Option<String>,
    },
    /// A log line (notify's own log, at info).
    Log,
}

fn default_method() -> String {
    "POST".into()
}
fn default_security() -> String {
    "starttls".into()
}
fn default_subject() -> String {
    "[firehose] {{ type }} {{ subject }}".into()
}
fn default_qos() -> u8 {
    1
}

/// One string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `[[rule]]`: which events, what message, to whom.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: Option<String>,
    /// MQTT topic filters.
    pub topics: Vec<String>,
    /// Event types (`gerrit.comment-added`); any when absent.
    #[serde(rename = "type")]
    pub types: Option<OneOrMany>,
    /// A jq expression over the event: only events where it is true.
    #[serde(rename = "where")]
    pub filter: Option<String>,
    /// The message (a template); default: `{{ topic }} {{ payload }}`.
    pub template: Option<String>,
    pub targets: Vec<String>,
    /// At most `max` per `per` window for each key; the rest are counted
    /// and summarized in one message when the window ends.
    pub throttle: Option<Throttle>,
    /// Drop an event whose id was seen within this window (redundant
    /// bridges publish the same event twice).
    #[serde(default, with = "humantime_serde")]
    pub dedup: Option<Duration>,
    /// Skip retained messages (state, not news).
    #[serde(default = "yes")]
    pub skip_retained: bool,
}

fn yes() -> bool {
    true
}

/// `throttle = { max = 5, per = "10m", key = "{{ data.change.project }}" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Throttle {
    pub max: u32,
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// A template; one budget per distinct value (default: one for all).
    pub key: Option<String>,
}

/// Durations as `"10m"`, `"30s"`, `"1h 30m"`.
mod humantime_serde {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub trait FromHuman: Sized {
        fn from_human(s: Option<String>) -> Result<Self, String>;
    }
    impl FromHuman for Duration {
        fn from_human(s: Option<String>) -> Result<Self, String> {
            let s = s.ok_or("a duration is required")?;
            humantime::parse_duration(&s).map_err(|e| format!("{s:?}: {e} (e.g. \"30s\", \"10m\")"))
        }
    }
    impl FromHuman for Option<Duration> {
        fn from_human(s: Option<String>) -> Result<Self, String> {
            s.map(|s| Duration::from_human(Some(s))).transpose()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: FromHuman>(d: D) -> Result<T, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        T::from_human(s).map_err(serde::de::Error::custom)
    }
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let cfg = Config::parse(&text).map_err(|e| match e {
            ConfigError::Toml { reason, .. } => ConfigError::Toml {
                path: path.to_owned(),
                reason,
            },
            other => other,
        })?;
        if cfg.holds_password() {
            check_private(path)?;
        }
        Ok(cfg)
    }

    /// Parses and checks a configuration's text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Toml {
            path: PathBuf::from("config"),
            reason: e.to_string(),
        })?;
        cfg.check()?;
        Ok(cfg)
    }

    fn holds_password(&self) -> bool {
        self.broker.password.is_some()
            || self.targets.iter().any(|t| {
                matches!(
                    &t.kind,
                    TargetKind::Smtp {
                        password: Some(_),
                        ..
                    } | TargetKind::Mqtt {
                        password: Some(_),
                        ..
                    }
                )
            })
    }

    /// Names are unique, rules name known targets, values are in range.
    /// Templates and jq expressions are compiled where they are used
    /// ([`crate::service::check`] builds everything without starting it).
    fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        broker_url(&self.broker.url)
            .map_err(|e| ConfigError::Invalid(format!("[broker] url: {e}")))?;
        if self.broker.since.is_some() && self.broker.history.is_none() {
            return bad(
                "[broker] since needs history = \"http://HOST:PORT\" (firehose-history's --http) to replay from"
                    .into(),
            );
        }
        let mut names = HashSet::new();
        for t in &self.targets {
            if !names.insert(t.name.as_str()) {
                return bad(format!("two targets are named {:?}", t.name));
            }
            if t.queue == 0 || t.attempts == 0 {
                return bad(format!(
                    "target {:?}: queue and attempts must be at least 1",
                    t.name
                ));
            }
            match &t.kind {
                TargetKind::Exec { argv } => {
                    if argv.is_empty() {
                        return bad(format!("target {:?}: argv is empty", t.name));
                    }
                }
                TargetKind::Webhook {
                    url,
                    method,
                    preset,
                    ..
                } => {
                    if !url.starts_with("http://") && !url.starts_with("https://") {
                        return bad(format!(
                            "target {:?}: url must start with http:// or https://",
                            t.name
                        ));
                    }
                    if !matches!(method.to_ascii_uppercase().as_str(), "POST" | "PUT") {
                        return bad(format!("target {:?}: method must be POST or PUT", t.name));
                    }
                    if let Some(p) = preset {
                        if !matches!(p.as_str(), "slack" | "mattermost" | "matrix") {
                            return bad(format!(
                                "target {:?}: preset {p:?} is not slack, mattermost or matrix",
                                t.name
                            ));
                        }
                    }
                }
                TargetKind::Smtp { security, to, .. } => {
                    if !matches!(security.as_str(), "starttls" | "tls" | "none") {
                        return bad(format!(
                            "target {:?}: security must be starttls, tls or none",
                            t.name
                        ));
                    }
                    if to.is_empty() {
                        return bad(format!("target {:?}: `to` is empty", t.name));
                    }
                }
                TargetKind::File { .. } | TargetKind::Log => {}
                TargetKind::Mqtt { qos, url, .. } => {
                    if *qos > 1 {
                        return bad(format!("target {:?}: qos must be 0 or 1", t.name));
                    }
                    if let Some(u) = url {
                        broker_url(u).map_err(|e| {
                            ConfigError::Invalid(format!("target {:?}: url: {e}", t.name))
                        })?;
                    }
                }
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            let name = r.name.clone().unwrap_or_else(|| format!("rule {}", i + 1));
            if r.topics.is_empty() {
                return bad(format!("{name}: `topics` is empty"));
            }
            for t in &r.topics {
                if let Err(e) = firehose::filter::check(t) {
                    return bad(format!("{name}: topics: {e}"));
                }
            }
            if r.targets.is_empty() {
                return bad(format!("{name}: `targets` is empty"));
            }
            for t in &r.targets {
                if !names.contains(t.as_str()) {
                    return bad(format!(
                        "{name}: no target is named {t:?} (targets: {})",
                        self.targets
                            .iter()
                            .map(|t| t.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            if let Some(t) = &r.throttle {
                if t.max == 0 || t.per.is_zero() {
                    return bad(format!(
                        "{name}: throttle needs max >= 1 and a window (per = \"10m\")"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn broker_url(u: &str) -> Result<firehose::url::Endpoint, firehose::url::UrlError> {
    firehose::url::parse(u, firehose::url::MQTT_SCHEMES, firehose::url::MQTT_FORM)
}

/// A file that holds a password: the rule every Firehose program applies
/// ([`firehose::secret`]: not readable by others, not writable by its group).
fn check_private(path: &Path) -> Result<(), ConfigError> {
    match firehose::secret::too_open(path) {
        Ok(None) => Ok(()),
        Ok(Some(mode)) => Err(ConfigError::Permissions {
            path: path.to_owned(),
            mode,
        }),
        Err(error) => Err(ConfigError::Read {
            path: path.to_owned(),
            error,
        }),
    }
}

/// A password given inline or in a file (inline wins); `None` when
/// neither is given.
pub fn password(
    inline: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Option<String>, ConfigError> {
    match (inline, file) {
        (Some(p), _) => Ok(Some(p.clone())),
        (None, Some(f)) => read_password(f).map(Some),
        (None, None) => Ok(None),
    }
}

/// The first line of a password file.
pub fn read_password(path: &Path) -> Result<String, ConfigError> {
    check_private(path)?;
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })?;
    Ok(text.lines().next().unwrap_or("").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's minimal configuration, exactly.
    pub const MINIMAL: &str = r#"
[broker]
url = "mqtt://127.0.0.1:1883"

[[target]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:9000/hook"
body = "{{ topic }}"

[[target]]
name = "script"
type = "exec"
argv = ["/usr/local/bin/on-review"]

[[rule]]
topics = ["gerrit/#"]
type = "gerrit.comment-added"
targets = ["hook", "script"]
dedup = "10m"
"#;

    #[test]
    fn the_minimal_config_reads() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.rules[0].dedup, Some(Duration::from_secs(600)));
        assert!(c.rules[0].skip_retained);
        assert_eq!(c.targets[0].queue, 1000);
    }

    #[test]
    fn mistakes_are_named() {
        let err = |text: &str| {
            Config::parse(text)
                .and_then(|c| crate::service::check(&c))
                .unwrap_err()
                .to_string()
        };
        let e = err(&MINIMAL.replace(r#"targets = ["hook", "script"]"#, r#"targets = ["hok"]"#));
        assert!(
            e.contains("no target is named \"hok\" (targets: hook, script)"),
            "{e}"
        );
        let e = err(&MINIMAL.replace("dedup = \"10m\"", "dedup = \"ten\""));
        assert!(e.contains("\"ten\""), "{e}");
        let e = err(&MINIMAL.replace("body = \"{{ topic }}\"", "body = \"{{ topic \""));
        assert!(e.contains("target \"hook\""), "{e}");
        let e = err(&MINIMAL.replace("dedup = \"10m\"", "where = \".type ==\""));
        assert!(e.contains("where"), "{e}");
        let e = err(&MINIMAL.replace("type = \"exec\"", "type = \"pager\""));
        assert!(e.contains("pager"), "{e}");
    }
}

#[cfg(test)]
mod typo_tests {
    use super::*;

    #[test]
    fn a_misspelt_target_key_is_an_error() {
        let text = "[broker]\nurl = \"mqtt://127.0.0.1\"\n[[target]]\nname = \"f\"\ntype = \"file\"\npath = \"/tmp/x\"\nlinee = \"{{ topic }}\"\n";
        let e = Config::parse(text).unwrap_err().to_string();
        assert!(e.contains("linee"), "{e}");
    }
}
