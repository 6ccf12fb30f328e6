//! Who a client is (password file) and what it may do (ACL file or the
//! default policy: anonymous clients read everything and write nothing,
//! authenticated users read and write everything).
//!
//! The files are loaded into an immutable [`Policy`]; SIGHUP builds a new one
//! and swaps it in, so a bad file never replaces a good one.

pub mod acl;
pub mod passwd;

use std::sync::{Arc, RwLock};

use rumqttd::protocol::Login;

pub use acl::{Access, AclFile, Who};
pub use passwd::PasswordFile;

use crate::config::AuthConfig;

/// Errors loading the auth files.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Passwd(#[from] passwd::PasswdError),
    #[error(transparent)]
    Acl(#[from] acl::AclError),
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Wrong user name or password (CONNACK 4 / 0x86).
    BadCredentials,
    /// No credentials and anonymous clients are refused (CONNACK 5 / 0x87).
    NotAuthorized,
}

/// One immutable snapshot of the auth files.
#[derive(Debug, Default)]
pub struct Policy {
    passwd: Option<PasswordFile>,
    acl: Option<AclFile>,
    allow_anonymous: bool,
    /// Which load this is (1, 2, ... per [`Auth`]): what was decided under
    /// one policy (a reader's "reads everything") is decided again when it
    /// changes.
    generation: u64,
}

impl Policy {
    /// Loads the files named in the config.
    pub fn load(cfg: &AuthConfig) -> Result<Policy, AuthError> {
        let passwd = cfg
            .password_file
            .as_deref()
            .map(PasswordFile::load)
            .transpose()?;
        let acl = cfg.acl_file.as_deref().map(AclFile::load).transpose()?;
        Ok(Policy {
            passwd,
            acl,
            allow_anonymous: cfg.allow_anonymous,
            generation: 0,
        })
    }

    /// Which load of the files this is (see [`Policy`]'s field).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of users in the password file.
    pub fn users(&self) -> usize {
        self.passwd.as_ref().map_or(0, PasswordFile::len)
    }

    /// Authenticates a CONNECT's credentials: `Ok(None)` is anonymous,
    /// `Ok(Some(user))` a verified user.
    pub fn login(&self, login: Option<&Login>) -> Result<Option<String>, Refusal> {
        match login {
            None if self.allow_anonymous => Ok(None),
            None => Err(Refusal::NotAuthorized),
            Some(l) => match &self.passwd {
                Some(p) if p.verify(&l.username, l.password.as_bytes()) => {
                    Ok(Some(l.username.clone()))
                }
                _ => Err(Refusal::BadCredentials),
            },
        }
    }

    /// May this client publish to `topic` (or leave a will there)?
    pub fn may_write(&self, who: Who<'_>, topic: &str) -> bool {
        if topic.starts_with('$') {
            return false;
        }
        match &self.acl {
            Some(acl) => acl.check_topic(who, topic, Access::Write),
            None => who.user.is_some(),
        }
    }

    /// May this client subscribe to `filter`?
    pub fn may_subscribe(&self, who: Who<'_>, filter: &str) -> bool {
        let filter = shared_inner(filter);
        match &self.acl {
            Some(acl) => acl.check_subscribe(who, filter),
            None => true,
        }
    }

    /// May this client receive a message published on `topic`?
    pub fn may_read(&self, who: Who<'_>, topic: &str) -> bool {
        match &self.acl {
            Some(acl) => acl.check_topic(who, topic, Access::Read),
            None => true,
        }
    }

    /// True when no per-message read check is needed for this client.
    pub fn reads_everything(&self, who: Who<'_>) -> bool {
        match &self.acl {
            Some(acl) => acl.reads_everything(who),
            None => true,
        }
    }
}

/// `$share/group/filter` -> `filter`; anything else unchanged.
pub fn shared_inner(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|r| r.split_once('/'))
        .map_or(filter, |(_, f)| f)
}

/// The current policy, swapped whole on reload.
#[derive(Debug)]
pub struct Auth {
    cfg: AuthConfig,
    current: RwLock<Arc<Policy>>,
    loads: std::sync::atomic::AtomicU64,
}

impl Auth {
    /// Loads the policy; an error here stops the broker from starting.
    pub fn new(cfg: AuthConfig) -> Result<Auth, AuthError> {
        let mut p = Policy::load(&cfg)?;
        p.generation = 1;
        Ok(Auth {
            cfg,
            current: RwLock::new(Arc::new(p)),
            loads: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the files. On error the old policy stays and the error is returned.
    pub fn reload(&self) -> Result<Arc<Policy>, AuthError> {
        let mut p = Policy::load(&self.cfg)?;
        p.generation = self
            .loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let p = Arc::new(p);
        match self.current.write() {
            Ok(mut g) => *g = p.clone(),
            Err(poisoned) => *poisoned.into_inner() = p.clone(),
        }
        Ok(p)
    }
}
