//! `firehose-launchpad`'s own options: where the mail comes from (`--imap`,
//! `--maildir`, `--mbox`) and what happens to it once published (`--after`),
//! as flags or the `[source]` table of the config file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Flags for the launchpad source.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Launchpad mail")]
pub struct LaunchpadArgs {
    /// IMAP folder to watch: imaps://USER@HOST[:993]/FOLDER (TLS), or
    /// imap://USER@HOST[:143]/FOLDER (STARTTLS; plain text only with
    /// --imap-insecure). FOLDER defaults to INBOX.
    #[arg(long, value_name = "URL")]
    pub imap: Option<String>,
    /// File holding the IMAP password (first line; mode 0600).
    #[arg(long, value_name = "FILE")]
    pub imap_password_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) to check the IMAP server's certificate;
    /// default: the system's.
    #[arg(long, value_name = "FILE")]
    pub imap_ca: Option<PathBuf>,
    /// Allow imap:// without TLS (password and mail in clear text). For
    /// development only.
    #[arg(long)]
    pub imap_insecure: bool,
    /// Seconds between checks when the server has no IDLE [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub poll_interval: Option<u64>,
    /// Seconds an IMAP command may take before the connection counts as
    /// lost (a half-open server is also found by TCP keepalive)
    /// [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub imap_timeout: Option<u64>,
    /// What to do with a mail once the broker has its event: seen (mark it
    /// \Seen), move:FOLDER, or delete [default: seen].
    #[arg(long, value_name = "ACTION")]
    pub after: Option<After>,
    /// Publish the mail of a maildir (its new/ and cur/), then exit.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["imap", "mbox"])]
    pub maildir: Option<PathBuf>,
    /// Publish the mail of an mbox file (- for stdin), then exit.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["imap", "maildir"])]
    pub mbox: Option<String>,
    /// Largest mail accepted; larger ones are dead-lettered [default: 16 MiB].
    #[arg(long, value_name = "BYTES")]
    pub max_mail_bytes: Option<usize>,
    /// Publish only Launchpad mail with a valid DKIM signature of
    /// --dkim-domain; the rest is dead-lettered with the reason (anyone who
    /// can mail the mailbox could forge bug mail otherwise).
    #[arg(long)]
    pub dkim: bool,
    /// The domain that must have signed [default: launchpad.net].
    #[arg(long, value_name = "DOMAIN")]
    pub dkim_domain: Option<String>,
    /// DKIM keys from this file instead of DNS: `<selector> <TXT record>`
    /// per line (pinned keys; tests).
    #[arg(long, value_name = "FILE")]
    pub dkim_keys: Option<PathBuf>,
}

/// What happens to a mail on the server once its event is delivered.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum After {
    /// Mark it `\Seen` (lpmqtt's default).
    #[default]
    Seen,
    /// Move it to this folder.
    Move(String),
    /// Delete (and expunge) it.
    Delete,
}

impl std::str::FromStr for After {
    type Err = String;
    fn from_str(s: &str) -> Result<After, String> {
        match s {
            "seen" => Ok(After::Seen),
            "delete" => Ok(After::Delete),
            _ => match s.strip_prefix("move:") {
                Some(folder) if !folder.is_empty() => Ok(After::Move(folder.to_owned())),
                _ => Err(format!("--after {s:?}: use seen, move:FOLDER or delete")),
            },
        }
    }
}

impl TryFrom<String> for After {
    type Error = String;
    fn try_from(s: String) -> Result<After, String> {
        s.parse()
    }
}

impl From<After> for String {
    fn from(a: After) -> String {
        match a {
            After::Seen => "seen".into(),
            After::Move(f) => format!("move:{f}"),
            After::Delete => "delete".into(),
        }
    }
}

/// The `[source]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LaunchpadConfig {
    pub imap: Option<String>,
    pub imap_password_file: Option<PathBuf>,
    pub imap_ca: Option<PathBuf>,
    pub imap_insecure: bool,
    pub poll_interval: u64,
    pub imap_timeout: u64,
    pub after: After,
    pub maildir: Option<PathBuf>,
    pub mbox: Option<String>,
    pub max_mail_bytes: usize,
    pub dkim: bool,
    pub dkim_domain: String,
    pub dkim_keys: Option<PathBuf>,
}

impl Default for LaunchpadConfig {
    fn default() -> Self {
        LaunchpadConfig {
            imap: None,
            imap_password_file: None,
            imap_ca: None,
            imap_insecure: false,
            poll_interval: 60,
            imap_timeout: 60,
            after: After::Seen,
            maildir: None,
            mbox: None,
            max_mail_bytes: 16 * 1024 * 1024,
            dkim: false,
            dkim_domain: "launchpad.net".into(),
            dkim_keys: None,
        }
    }
}

/// Configuration errors, each naming the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no mail to read: pass --imap imaps://USER@HOST/FOLDER (with --imap-password-file), --maildir DIR or --mbox FILE")]
    NoSource,
    #[error("give one of --imap, --maildir and --mbox")]
    Several,
    #[error(transparent)]
    Dkim(#[from] crate::dkim::DkimError),
    #[error("--dkim-keys is set but --dkim is not: add --dkim, or drop the key file")]
    DkimKeysUnused,
    #[error("--imap {0}")]
    Url(String),
    #[error("--imap {0}: plain imap:// upgrades with STARTTLS; to send the password in clear text anyway, add --imap-insecure (development only)")]
    Insecure(String),
    #[error("--imap needs --imap-password-file FILE (mode 0600)")]
    NoPassword,
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path} is open to others (mode {mode:o}); run: chmod 0600 {path} (or, for a service user: chown root:<service group> {path} && chmod 0640 {path})")]
    Mode { path: PathBuf, mode: u32 },
    #[error("--imap-ca {0} is set but no TLS is used (imap:// with --imap-insecure, or no --imap): drop it")]
    UnusedCa(PathBuf),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("--{0} is set but mail comes from {1}: drop it")]
    Unused(&'static str, &'static str),
}

/// How the IMAP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// imaps://: TLS from the first byte.
    Tls,
    /// imap://: STARTTLS before logging in.
    StartTls,
    /// imap:// with --imap-insecure.
    Plain,
}

/// A checked IMAP account.
#[derive(Clone)]
pub struct Imap {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Never logged.
    pub password: String,
    pub folder: String,
    pub security: Security,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The URL without secrets, for logs and CloudEvents `source`.
    pub display: String,
    pub poll_interval: Duration,
    /// Longest an IMAP command may take.
    pub timeout: Duration,
    pub after: After,
    /// Size limit and DKIM check.
    pub screen: crate::mail::Screen,
}

/// Where the mail comes from.
pub enum Input {
    Imap(Box<Imap>),
    Maildir(PathBuf),
    Mbox(String),
}

impl LaunchpadConfig {
    /// Lets flags override the file.
    pub fn apply(&mut self, a: &LaunchpadArgs) {
        fn set_opt<T: Clone>(dst: &mut Option<T>, src: &Option<T>) {
            if src.is_some() {
                dst.clone_from(src);
            }
        }
        set_opt(&mut self.imap, &a.imap);
        set_opt(&mut self.imap_password_file, &a.imap_password_file);
        set_opt(&mut self.imap_ca, &a.imap_ca);
        set_opt(&mut self.maildir, &a.maildir);
        set_opt(&mut self.mbox, &a.mbox);
        self.imap_insecure |= a.imap_insecure;
        if let Some(p) = a.poll_interval {
            self.poll_interval = p;
        }
        if let Some(t) = a.imap_timeout {
            self.imap_timeout = t;
        }
        if let Some(after) = &a.after {
            self.after = after.clone();
        }
        if let Some(n) = a.max_mail_bytes {
            self.max_mail_bytes = n;
        }
        self.dkim |= a.dkim;
        set_opt(&mut self.dkim_keys, &a.dkim_keys);
        if let Some(d) = &a.dkim_domain {
            self.dkim_domain = d.clone();
        }
    }

    /// Checks everything and reads the files it names.
    pub fn resolve(&self) -> Result<Input, ConfigError> {
        let given = [
            self.imap.is_some(),
            self.maildir.is_some(),
            self.mbox.is_some(),
        ];
        match given.iter().filter(|g| **g).count() {
            0 => return Err(ConfigError::NoSource),
            1 => {}
            _ => return Err(ConfigError::Several),
        }
        if let Some(dir) = &self.maildir {
            self.no_imap_options("a maildir")?;
            return Ok(Input::Maildir(dir.clone()));
        }
        if let Some(f) = &self.mbox {
            self.no_imap_options("an mbox")?;
            return Ok(Input::Mbox(f.clone()));
        }
        let url = self.imap.as_deref().unwrap_or_default();
        let imap = self.imap_account(url)?;
        Ok(Input::Imap(Box::new(imap)))
    }

    /// The checks every mail passes (the size limit; DKIM with `--dkim`).
    pub fn screen(&self) -> Result<crate::mail::Screen, ConfigError> {
        if self.dkim_keys.is_some() && !self.dkim {
            return Err(ConfigError::DkimKeysUnused);
        }
        let dkim = if self.dkim {
            let d = crate::dkim::Dkim::new(&self.dkim_domain, self.dkim_keys.as_deref())?;
            Some(std::sync::Arc::new(d))
        } else {
            None
        };
        Ok(crate::mail::Screen {
            max_mail_bytes: self.max_mail_bytes,
            dkim,
        })
    }

    fn no_imap_options(&self, from: &'static str) -> Result<(), ConfigError> {
        if self.imap_password_file.is_some() {
            return Err(ConfigError::Unused("imap-password-file", from));
        }
        if let Some(ca) = &self.imap_ca {
            return Err(ConfigError::UnusedCa(ca.clone()));
        }
        Ok(())
    }

    fn imap_account(&self, text: &str) -> Result<Imap, ConfigError> {
        const FORM: &str = "imaps://USER@HOST[:993]/FOLDER or imap://USER@HOST[:143]/FOLDER";
        let err = |reason: &str| ConfigError::Url(format!("{text:?}: {reason}; expected {FORM}"));
        let security = match text.split_once("://").map(|(s, _)| s) {
            Some("imap") if self.imap_insecure => Security::Plain,
            Some("imap") => Security::StartTls,
            _ => Security::Tls,
        };
        let e = firehose_bridge::url::parse(text, &[("imaps", 993), ("imap", 143)], FORM)
            .map_err(|e| ConfigError::Url(e.to_string()))?;
        if e.password.is_some() {
            return Err(err("no password in the URL: use --imap-password-file"));
        }
        let user = e.user.clone().ok_or_else(|| err("no user"))?;
        let folder = match firehose_bridge::url::decode(e.path.trim_start_matches('/')) {
            f if f.is_empty() => "INBOX".to_owned(),
            f => f,
        };
        let password = match &self.imap_password_file {
            Some(p) => first_line(p)?,
            None => return Err(ConfigError::NoPassword),
        };
        let tls = match security {
            Security::Plain => {
                if let Some(ca) = &self.imap_ca {
                    return Err(ConfigError::UnusedCa(ca.clone()));
                }
                tracing::warn!(imap = %text, "--imap-insecure: the IMAP password and mail travel in clear text");
                None
            }
            _ => Some(
                firehose_bridge::mqtt::tls_config(self.imap_ca.as_deref())
                    .map_err(|e| ConfigError::Tls(e.to_string()))?,
            ),
        };
        Ok(Imap {
            port: e.port,
            host: e.host,
            user,
            password,
            folder,
            security,
            tls,
            display: e.shown,
            poll_interval: Duration::from_secs(self.poll_interval.max(1)),
            timeout: Duration::from_secs(self.imap_timeout.max(1)),
            after: self.after.clone(),
            screen: self.screen()?,
        })
    }
}

/// The first line of a file only its owner may read.
fn first_line(path: &Path) -> Result<String, ConfigError> {
    let file_err = |reason: String| ConfigError::File {
        path: path.to_owned(),
        reason,
    };
    if let Some(mode) =
        firehose_bridge::config::too_open(path).map_err(|e| file_err(e.to_string()))?
    {
        return Err(ConfigError::Mode {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> LaunchpadConfig {
        LaunchpadConfig {
            imap: Some(url.into()),
            ..Default::default()
        }
    }

    #[test]
    fn imap_urls() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut c = cfg("imaps://lp%40example.org@mail.example:1993/Launchpad%20Mail");
        c.imap_password_file = Some(pw.clone());
        let Input::Imap(i) = c.resolve().unwrap() else {
            panic!("imap")
        };
        assert_eq!(
            (i.user.as_str(), i.host.as_str(), i.port),
            ("lp@example.org", "mail.example", 1993)
        );
        assert_eq!(i.folder, "Launchpad Mail");
        assert_eq!(i.security, Security::Tls);
        assert_eq!(i.password, "s3cret");

        let mut c = cfg("imap://lp@127.0.0.1");
        c.imap_password_file = Some(pw.clone());
        let Input::Imap(i) = c.resolve().unwrap() else {
            panic!("imap")
        };
        assert_eq!(
            (i.security, i.port, i.folder.as_str()),
            (Security::StartTls, 143, "INBOX")
        );

        let e = cfg("imap://lp@h/").resolve().err().unwrap().to_string();
        assert!(e.contains("--imap-password-file"), "{e}");
        let e = cfg("imap://lp:pw@h/").resolve().err().unwrap().to_string();
        assert!(e.contains("no password in the URL"), "{e}");
        let e = cfg("pop3://lp@h/").resolve().err().unwrap().to_string();
        assert!(e.contains("imaps://USER@HOST"), "{e}");
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut c = cfg("imaps://lp@h/");
        c.imap_password_file = Some(pw);
        let e = c.resolve().err().unwrap().to_string();
        assert!(e.contains("chmod 0600"), "{e}");
        assert!(matches!(
            LaunchpadConfig::default().resolve(),
            Err(ConfigError::NoSource)
        ));
        assert_eq!("move:Done".parse::<After>(), Ok(After::Move("Done".into())));
        assert!("move:".parse::<After>().is_err());
    }
}
