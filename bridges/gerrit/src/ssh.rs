//! The SSH side: connect to Gerrit's SSH port, check its host key, log in
//! with a key, and run `gerrit stream-events`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};

/// `ssh://USER@HOST[:PORT]` from `--gerrit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub user: String,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ssh://{}@{}:{}", self.user, self.host, self.port)
    }
}

impl Target {
    /// The CloudEvents `source`: the server, without the user.
    pub fn source_uri(&self) -> String {
        format!("ssh://{}:{}", self.host, self.port)
    }
}

/// SSH errors, each naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("--gerrit {0}")]
    Target(String),
    #[error("SSH key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error(
        "SSH key {path} is open to others (mode {mode:o}); run: chmod 0600 {path} (or, for a service user: chown root:<service group> {path} && chmod 0640 {path})"
    )]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("cannot reach {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("{0}")]
    HostKey(String),
    #[error("{target}: public key login refused for user {user:?}; is the key in Gerrit (Settings > SSH Keys)?")]
    Auth { target: String, user: String },
    #[error("{target}: {reason}")]
    Session { target: String, reason: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl std::str::FromStr for Target {
    type Err = SshError;
    fn from_str(s: &str) -> Result<Target, SshError> {
        let e = firehose_bridge::url::parse(s, &[("ssh", 29418)], "ssh://USER@HOST[:PORT]")
            .map_err(|e| SshError::Target(e.to_string()))?;
        let user = e.user.ok_or_else(|| {
            SshError::Target(format!("{s}: no user; expected ssh://USER@HOST[:PORT]"))
        })?;
        Ok(Target {
            user,
            host: e.host,
            port: e.port,
        })
    }
}

/// How the server's host key is checked.
#[derive(Debug, Clone)]
pub enum HostKeyCheck {
    /// Against an OpenSSH known_hosts file (`[host]:port` entries for
    /// ports other than 22).
    KnownHosts(PathBuf),
    /// Against one `SHA256:...` fingerprint.
    Fingerprint(String),
    /// Accept anything (development only; logged as a warning).
    Insecure,
}

struct Handler {
    check: HostKeyCheck,
    host: String,
    port: u16,
    /// Why the key was refused, for the error message.
    refusal: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => {
                *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                    "{}:{} offered a host certificate; only plain host keys are supported",
                    self.host, self.port
                ));
                return Ok(false);
            }
        };
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        let (ok, why) = match &self.check {
            HostKeyCheck::Insecure => {
                tracing::warn!(host = %self.host, fingerprint = %fp, "host key NOT checked (--insecure-accept-host-key)");
                (true, None)
            }
            HostKeyCheck::Fingerprint(want) => (
                *want == fp,
                Some(format!(
                    "host key of {}:{} is {fp}, not the expected {want}",
                    self.host, self.port
                )),
            ),
            HostKeyCheck::KnownHosts(path) => {
                match russh::keys::check_known_hosts_path(&self.host, self.port, key, path) {
                    Ok(true) => (true, None),
                    Ok(false) => (
                        false,
                        Some(format!(
                            "host key {fp} of [{}]:{} is not in {}; add it with `ssh-keyscan -p {} {} >> {}` after checking it, or pass --host-key-fingerprint {fp}",
                            self.host,
                            self.port,
                            path.display(),
                            self.port,
                            self.host,
                            path.display()
                        )),
                    ),
                    Err(russh::keys::Error::KeyChanged { line }) => (
                        false,
                        Some(format!(
                            "HOST KEY CHANGED for [{}]:{}: now {fp}, line {line} of {} says otherwise. Someone may be intercepting the connection; if the key really changed, fix that line",
                            self.host,
                            self.port,
                            path.display()
                        )),
                    ),
                    Err(e) => (
                        false,
                        Some(format!("cannot read known_hosts {}: {e}", path.display())),
                    ),
                }
            }
        };
        if !ok {
            *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = why;
        }
        Ok(ok)
    }
}

/// Loads a private key, refusing one that others may read (as ssh does).
pub fn load_key(path: &Path) -> Result<Arc<PrivateKey>, SshError> {
    let open = firehose_bridge::config::too_open(path).map_err(|e| SshError::Key {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if let Some(mode) = open {
        return Err(SshError::KeyMode {
            path: path.to_owned(),
            mode,
        });
    }
    russh::keys::load_secret_key(path, None)
        .map(Arc::new)
        .map_err(|e| SshError::Key {
            path: path.to_owned(),
            reason: format!("{e} (keys with a passphrase are not supported: use a dedicated key)"),
        })
}

/// An open `gerrit stream-events` channel.
pub struct Stream {
    /// Keeps the SSH connection alive while the channel is read.
    _session: client::Handle<Handler>,
    pub channel: russh::Channel<client::Msg>,
}

/// Connects, checks the host key, logs in and starts `command`.
pub async fn open(
    target: &Target,
    key: Arc<PrivateKey>,
    check: &HostKeyCheck,
    command: &str,
    timeout: Duration,
) -> Result<Stream, SshError> {
    tokio::time::timeout(timeout, open_inner(target, key, check, command))
        .await
        .map_err(|_| SshError::Timeout(timeout))?
}

async fn open_inner(
    target: &Target,
    key: Arc<PrivateKey>,
    check: &HostKeyCheck,
    command: &str,
) -> Result<Stream, SshError> {
    let config = Arc::new(client::Config {
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        inactivity_timeout: None,
        ..Default::default()
    });
    let refusal = Arc::new(Mutex::new(None));
    let handler = Handler {
        check: check.clone(),
        host: target.host.clone(),
        port: target.port,
        refusal: refusal.clone(),
    };
    let session_err = |reason: String| SshError::Session {
        target: target.to_string(),
        reason,
    };
    let mut session =
        match client::connect(config, (target.host.as_str(), target.port), handler).await {
            Ok(s) => s,
            Err(e) => {
                if let Some(why) = refusal.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    return Err(SshError::HostKey(why));
                }
                return Err(SshError::Connect {
                    target: target.to_string(),
                    reason: e.to_string(),
                });
            }
        };
    let hash = session
        .best_supported_rsa_hash()
        .await
        .map_err(|e| session_err(e.to_string()))?
        .flatten();
    let auth = session
        .authenticate_publickey(target.user.clone(), PrivateKeyWithHashAlg::new(key, hash))
        .await
        .map_err(|e| session_err(e.to_string()))?;
    if !auth.success() {
        return Err(SshError::Auth {
            target: target.to_string(),
            user: target.user.clone(),
        });
    }
    let channel = session
        .channel_open_session()
        .await
        .map_err(|e| session_err(format!("opening a channel: {e}")))?;
    channel
        .exec(true, command)
        .await
        .map_err(|e| session_err(format!("running {command:?}: {e}")))?;
    Ok(Stream {
        _session: session,
        channel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t: Target = "ssh://bot@review.example.org".parse().unwrap();
        assert_eq!(
            (t.user.as_str(), t.host.as_str(), t.port),
            ("bot", "review.example.org", 29418)
        );
        let t: Target = "ssh://bot@127.0.0.1:2222".parse().unwrap();
        assert_eq!(t.port, 2222);
        assert_eq!(t.source_uri(), "ssh://127.0.0.1:2222");
        let t: Target = "ssh://bot@[::1]:2222".parse().unwrap();
        assert_eq!(t.host, "::1");
        assert!("review.example.org".parse::<Target>().is_err());
        assert!("ssh://review.example.org".parse::<Target>().is_err());
    }
}
