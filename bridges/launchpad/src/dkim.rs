//! The optional DKIM check (`--dkim`): anyone who can mail the mailbox can
//! forge a "Launchpad" bug mail; Launchpad signs its mail (`d=launchpad.net`),
//! so a mail without a valid signature of that domain is dead-lettered
//! with the reason instead of published.
//!
//! The signer's public key comes from DNS (`<selector>._domainkey.<domain>`,
//! through the system's resolver) or, with `--dkim-keys FILE`, only from
//! that file: one `<selector> <TXT record>` per line (pinned keys, and the
//! tests). With a key file nothing is asked of DNS (the resolver points at
//! an unused loopback port, so a selector the file does not have fails at
//! once, locally).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};

/// Why the DKIM check could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("cannot read the DKIM key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}; expected `<selector> v=DKIM1; k=rsa; p=<base64 key>`")]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("cannot use the system's DNS resolver for DKIM keys; or give the keys with --dkim-keys FILE")]
    Resolver(#[source] mail_auth::hickory_resolver::proto::ProtoError),
}

/// Why a mail fails the DKIM check: the dead letter's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DkimRefusal {
    #[error("DKIM: not a mail message")]
    NotMail,
    #[error("DKIM: the signature of {domain} does not verify ({result})")]
    Invalid { domain: String, result: String },
    #[error("DKIM: no signature of {domain} (the mail may be forged)")]
    Unsigned { domain: String },
}

/// Pinned keys, by `<selector>._domainkey.<domain>.`; never expire.
struct Keys(Mutex<HashMap<String, Txt>>);

impl ResolverCache<String, Txt> for Keys {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
    }

    fn insert(&self, key: String, value: Txt, _: std::time::Instant) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, value);
    }
}

/// The check: which domain must have signed, and where its keys come from.
pub struct Dkim {
    domain: String,
    auth: MessageAuthenticator,
    keys: Option<Keys>,
}

impl Dkim {
    /// A check for signatures of `domain`, keys from `key_file` or DNS.
    pub fn new(domain: &str, key_file: Option<&Path>) -> Result<Dkim, DkimError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let (auth, keys) = match key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| DkimError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let mut map = HashMap::new();
                for (i, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let err = |reason: String| DkimError::Syntax {
                        path: path.to_owned(),
                        line: i + 1,
                        reason,
                    };
                    let (selector, record) = line
                        .split_once(char::is_whitespace)
                        .ok_or_else(|| err("no record after the selector".into()))?;
                    let key = DomainKey::parse(record.trim().as_bytes())
                        .map_err(|e| err(format!("not a DKIM key record ({e})")))?;
                    map.insert(format!("{selector}._domainkey.{domain}."), Txt::from(key));
                }
                // Nothing answers there: a lookup the file cannot answer
                // fails at once, and never leaves the machine.
                let unused = NameServerConfigGroup::from_ips_clear(
                    &[std::net::IpAddr::from([127, 0, 0, 1])],
                    9,
                    true,
                );
                let mut opts = ResolverOpts::default();
                opts.timeout = Duration::from_millis(200);
                opts.attempts = 1;
                let auth = MessageAuthenticator::new(
                    ResolverConfig::from_parts(None, vec![], unused),
                    opts,
                )
                .map_err(DkimError::Resolver)?;
                (auth, Some(Keys(Mutex::new(map))))
            }
            None => (
                MessageAuthenticator::new_system_conf().map_err(DkimError::Resolver)?,
                None,
            ),
        };
        Ok(Dkim { domain, auth, keys })
    }

    /// `Ok` when `raw` carries a valid signature of the domain; else why
    /// not (the dead letter's reason).
    pub async fn verify(&self, raw: &[u8]) -> Result<(), DkimRefusal> {
        let Some(msg) = AuthenticatedMessage::parse(raw) else {
            return Err(DkimRefusal::NotMail);
        };
        let outputs = match &self.keys {
            Some(keys) => {
                self.auth
                    .verify_dkim(Parameters::new(&msg).with_txt_cache(keys))
                    .await
            }
            None => self.auth.verify_dkim(&msg).await,
        };
        let ours = |o: &&mail_auth::DkimOutput<'_>| {
            o.signature()
                .is_some_and(|s| s.d.trim_end_matches('.').eq_ignore_ascii_case(&self.domain))
        };
        if outputs
            .iter()
            .filter(ours)
            .any(|o| *o.result() == DkimResult::Pass)
        {
            return Ok(());
        }
        match outputs.iter().find(ours) {
            Some(o) => Err(DkimRefusal::Invalid {
                domain: self.domain.clone(),
                result: describe(o.result()),
            }),
            None => Err(DkimRefusal::Unsigned {
                domain: self.domain.clone(),
            }),
        }
    }
}

fn describe(r: &DkimResult) -> String {
    match r {
        DkimResult::Pass => "pass".into(),
        DkimResult::Neutral(e) => format!("neutral: {e}"),
        DkimResult::Fail(e) => format!("fail: {e}"),
        DkimResult::PermError(e) => format!("permanent error: {e}"),
        DkimResult::TempError(e) => format!("temporary error: {e}"),
        DkimResult::None => "none".into(),
    }
}

/// Test helpers: a signing key and its pinned record (used by this
/// module's tests and the bridge's integration tests).
#[doc(hidden)]
pub mod testing {
    use base64::Engine as _;
    use mail_auth::common::crypto::Ed25519Key;
    use mail_auth::common::headers::HeaderWriter;
    use mail_auth::dkim::DkimSigner;

    /// A fresh Ed25519 key.
    pub struct Signer {
        pkcs8: Vec<u8>,
    }

    impl Signer {
        pub fn new() -> Signer {
            Signer {
                pkcs8: Ed25519Key::generate_pkcs8().expect("an Ed25519 key"),
            }
        }

        fn key(&self) -> Ed25519Key {
            Ed25519Key::from_pkcs8_der(&self.pkcs8).expect("the key just made")
        }

        /// `<selector> <record>`: a line of a `--dkim-keys` file.
        pub fn key_line(&self, selector: &str) -> String {
            let public = base64::engine::general_purpose::STANDARD.encode(self.key().public_key());
            format!("{selector} v=DKIM1; k=ed25519; p={public}\n")
        }

        /// `raw` with a DKIM-Signature of `domain`/`selector` in front.
        pub fn sign(&self, raw: &[u8], domain: &str, selector: &str) -> Vec<u8> {
            let sig = DkimSigner::from_key(self.key())
                .domain(domain)
                .selector(selector)
                .headers([
                    "From",
                    "Subject",
                    "Message-Id",
                    "X-Launchpad-Bug",
                    "X-Generated-By",
                ])
                .sign(raw)
                .expect("signed");
            let mut out = sig.to_header().into_bytes();
            out.extend_from_slice(raw);
            out
        }
    }

    impl Default for Signer {
        fn default() -> Self {
            Signer::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Signer;
    use super::*;

    const MAIL: &[u8] = b"From: Launchpad Bug Tracker <1@bugs.launchpad.net>\r\n\
Subject: [Bug 42] crashes\r\n\
Message-Id: <x@launchpad.net>\r\n\
X-Generated-By: Launchpad (canonical.com)\r\n\
X-Launchpad-Notification-Type: bug\r\n\
X-Launchpad-Bug: product=nova; status=New; importance=Undecided; assignee=None;\r\n\
\r\n\
body\r\n";

    #[tokio::test]
    async fn only_mail_signed_by_the_domain_passes() {
        let dir = tempfile::tempdir().unwrap();
        let lp = Signer::new();
        let keys = dir.path().join("keys");
        std::fs::write(&keys, format!("# pinned\n{}", lp.key_line("lp1"))).unwrap();
        let check = Dkim::new("launchpad.net", Some(&keys)).unwrap();
        assert_eq!(
            check.verify(&lp.sign(MAIL, "launchpad.net", "lp1")).await,
            Ok(())
        );

        let forged = String::from_utf8_lossy(&lp.sign(MAIL, "launchpad.net", "lp1"))
            .replace("status=New", "status=Fix Released")
            .into_bytes();
        let e = check.verify(&forged).await.unwrap_err().to_string();
        assert!(e.contains("does not verify"), "{e}");

        let e = check.verify(MAIL).await.unwrap_err().to_string();
        assert!(e.contains("no signature of launchpad.net"), "{e}");

        // Signed, but by someone else's domain (and key).
        let other = Signer::new().sign(MAIL, "evil.example", "x");
        let e = check.verify(&other).await.unwrap_err().to_string();
        assert!(e.contains("no signature of launchpad.net"), "{e}");

        // A selector the file does not have: fails locally, with the reason.
        let unknown = Signer::new().sign(MAIL, "launchpad.net", "nope");
        let e = check.verify(&unknown).await.unwrap_err().to_string();
        assert!(e.contains("does not verify"), "{e}");
    }

    #[test]
    fn a_bad_key_file_is_named_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::write(&keys, "lp1 v=DKIM1; k=rsa; p=not base64!!\n").unwrap();
        let e = Dkim::new("launchpad.net", Some(&keys))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("keys:1") && e.contains("<selector>"), "{e}");
    }
}
