//! mosquitto-compatible password files.
//!
//! One `user:hash` line per user, as written by Debian's `mosquitto_passwd`:
//! `$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>` (mosquitto 2.x)
//! or `$6$<base64 salt>$<base64 SHA-512(password || salt)>` (mosquitto 1.x).
//! Operators keep using the tools they know; the broker reads the same file.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Iterations mosquitto 2.x uses for new `$7$` hashes.
pub const PBKDF2_ITERATIONS: u32 = 101;
const SALT_LEN: usize = 12;
const HASH_LEN: usize = 64;

/// Errors reading or writing a password file; each names the file and line.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    #[error("cannot read password file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write password file {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("password file {path} is open to others (mode {mode:o}, owner uid {uid} gid {gid}); fix it with: chmod 0600 {path} (a service that runs as its own user may read a root-owned file through its group: chown root:<service group> {path} && chmod 0640 {path})")]
    UnsafePermissions {
        path: PathBuf,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    #[error("{path}:{line}: {reason}")]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("invalid user name: {0}")]
    BadUser(String),
}

/// A stored password hash.
#[derive(Clone, PartialEq, Eq)]
pub enum Hash {
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// `$6$`: SHA-512 over password then salt.
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
}

impl fmt::Debug for Hash {
    // Never print hash material, not even in debug logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hash::Pbkdf2 { iterations, .. } => write!(f, "$7$ (pbkdf2, {iterations} iterations)"),
            Hash::Sha512 { .. } => write!(f, "$6$ (sha512)"),
        }
    }
}

/// Why the hash of a password-file line cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashError {
    #[error("bad iteration count {0:?}")]
    Iterations(String),
    #[error("{what} is not valid base64 ({reason})")]
    Base64 { what: &'static str, reason: String },
    #[error("unknown hash format (expected $7$ or $6$ as written by mosquitto_passwd; plain-text passwords must be hashed with `firehose-broker passwd`)")]
    Format,
}

impl Hash {
    /// Hashes a new password the way mosquitto 2.x does.
    pub fn new(password: &str) -> Hash {
        let salt: [u8; SALT_LEN] = rand::random();
        let mut hash = vec![0u8; HASH_LEN];
        pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), &salt, PBKDF2_ITERATIONS, &mut hash);
        Hash::Pbkdf2 {
            iterations: PBKDF2_ITERATIONS,
            salt: salt.to_vec(),
            hash,
        }
    }

    /// Parses the part after `user:`.
    pub fn parse(s: &str) -> Result<Hash, HashError> {
        let parts: Vec<&str> = s.split('$').collect();
        let b64 = |what: &'static str, v: &str| {
            B64.decode(v).map_err(|e| HashError::Base64 {
                what,
                reason: e.to_string(),
            })
        };
        match parts.as_slice() {
            ["", "7", iterations, salt, hash] => {
                let iterations: u32 = iterations
                    .parse()
                    .map_err(|_| HashError::Iterations((*iterations).to_owned()))?;
                if iterations == 0 {
                    return Err(HashError::Iterations("0".into()));
                }
                Ok(Hash::Pbkdf2 {
                    iterations,
                    salt: b64("salt", salt)?,
                    hash: b64("hash", hash)?,
                })
            }
            ["", "6", salt, hash] => Ok(Hash::Sha512 {
                salt: b64("salt", salt)?,
                hash: b64("hash", hash)?,
            }),
            _ => Err(HashError::Format),
        }
    }

    /// Checks a password in constant time with respect to the hash.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len().max(1)];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                out.ct_eq(hash).into()
            }
            Hash::Sha512 { salt, hash } => {
                let mut d = Sha512::new();
                d.update(password);
                d.update(salt);
                d.finalize().as_slice().ct_eq(hash).into()
            }
        }
    }

    fn encode(&self) -> String {
        match self {
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => format!("$7${iterations}${}${}", B64.encode(salt), B64.encode(hash)),
            Hash::Sha512 { salt, hash } => format!("$6${}${}", B64.encode(salt), B64.encode(hash)),
        }
    }
}

/// A hash like `like` (the same kind and cost) that no password matches.
fn decoy(like: Option<&Hash>) -> Hash {
    match like {
        Some(Hash::Pbkdf2 {
            iterations,
            salt,
            hash,
        }) => Hash::Pbkdf2 {
            iterations: *iterations,
            salt: vec![0; salt.len()],
            hash: vec![0; hash.len()],
        },
        Some(Hash::Sha512 { salt, hash }) => Hash::Sha512 {
            salt: vec![0; salt.len()],
            hash: vec![0; hash.len()],
        },
        None => Hash::Pbkdf2 {
            iterations: PBKDF2_ITERATIONS,
            salt: vec![0; SALT_LEN],
            hash: vec![0; HASH_LEN],
        },
    }
}

/// The users of a password file, by exact (case-sensitive) name.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    users: HashMap<String, Hash>,
    /// Lines in file order, so that rewriting keeps the operator's order.
    order: Vec<String>,
}

impl PasswordFile {
    /// Parses the text of a password file; `path` only names errors.
    pub fn parse(text: &str, path: &Path) -> Result<PasswordFile, PasswdError> {
        let mut file = PasswordFile::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: String| PasswdError::Syntax {
                path: path.to_owned(),
                line: i + 1,
                reason,
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| err("expected user:hash".into()))?;
            if user.is_empty() {
                return Err(err("empty user name".into()));
            }
            let hash = Hash::parse(hash).map_err(|e| err(e.to_string()))?;
            if file.users.insert(user.to_owned(), hash).is_none() {
                file.order.push(user.to_owned());
            }
        }
        Ok(file)
    }

    /// Reads a password file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<PasswordFile, PasswdError> {
        check_private(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| PasswdError::Read {
            path: path.to_owned(),
            source,
        })?;
        PasswordFile::parse(&text, path)
    }

    /// True when `user` exists and `password` is theirs. An unknown user
    /// costs as much time as a wrong password (a hash of the same kind and
    /// cost as the file's first user is checked and fails), so the answer's
    /// timing does not tell which user names exist.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(h) => h.verify(password),
            None => {
                let first = self.order.first().and_then(|u| self.users.get(u));
                let _ = decoy(first).verify(password);
                false
            }
        }
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Adds a user or changes their password.
    pub fn set(&mut self, user: &str, password: &str) -> Result<(), PasswdError> {
        if user.is_empty() || user.contains(':') || user.contains(['\n', '\r']) {
            return Err(PasswdError::BadUser(user.to_owned()));
        }
        if self
            .users
            .insert(user.to_owned(), Hash::new(password))
            .is_none()
        {
            self.order.push(user.to_owned());
        }
        Ok(())
    }

    /// The file's text, one `user:hash` line per user.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for user in &self.order {
            if let Some(h) = self.users.get(user) {
                out.push_str(user);
                out.push(':');
                out.push_str(&h.encode());
                out.push('\n');
            }
        }
        out
    }

    /// Writes the file atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), PasswdError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let werr = |source| PasswdError::Write {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension("tmp-firehose");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(werr)?;
        f.write_all(self.render().as_bytes()).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        std::fs::rename(&tmp, path).map_err(werr)
    }
}

/// Refuses a secrets file that others may read, or that its group may
/// write. Group-readable (0640) is accepted when root or this process owns
/// the file: that is how a service user (`User=firehose` under systemd)
/// reads a file an operator keeps as `root:firehose 0640`.
pub fn check_private(path: &Path) -> Result<(), PasswdError> {
    firehose::secret::check(path).map_err(|e| match e {
        firehose::secret::SecretFileError::Read { path, source } => {
            PasswdError::Read { path, source }
        }
        firehose::secret::SecretFileError::TooOpen {
            path,
            mode,
            uid,
            gid,
        } => PasswdError::UnsafePermissions {
            path,
            mode,
            uid,
            gid,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_file_follows_the_secret_file_rule() {
        // The rule itself is tested in `firehose::secret`; here, that the
        // broker applies it and names the fix in its own error.
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("passwd");
        std::fs::write(&p, "").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o660)).unwrap();
        let e = check_private(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 0600") && e.contains("uid"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(check_private(&p).is_ok());
    }

    #[test]
    fn an_unknown_user_is_checked_against_a_hash_of_the_same_cost() {
        let known = Hash::new("pw");
        match (decoy(Some(&known)), &known) {
            (
                Hash::Pbkdf2 {
                    iterations,
                    salt,
                    hash,
                },
                Hash::Pbkdf2 {
                    iterations: i2,
                    salt: s2,
                    hash: h2,
                },
            ) => {
                assert_eq!(
                    (iterations, salt.len(), hash.len()),
                    (*i2, s2.len(), h2.len())
                );
            }
            _ => panic!("the decoy is a PBKDF2 hash like the file's"),
        }
        let mut f = PasswordFile::default();
        f.set("bridge", "pw").unwrap();
        assert!(f.verify("bridge", b"pw"));
        assert!(!f.verify("nobody", b"pw"));
        assert!(!f.verify("nobody", b""), "no password matches the decoy");
    }

    #[test]
    fn mosquitto_7_hash() {
        // Written by Debian's mosquitto_passwd 2.0.11 for password "secret".
        let line = "bridge:$7$101$hIFUSucCwI3GBIZC$PjaLXjHpmo/2jQuokZGLG41hi9sNGUZ3Mqh/I5EP3zMdLOsElfXLQe0WtNvPV78C5KoAzfyCbk4LX9jM/H8WPQ==";
        let f = PasswordFile::parse(line, Path::new("t")).unwrap();
        assert_eq!(f.len(), 1);
        assert!(f.verify("bridge", b"secret"));
        assert!(!f.verify("bridge", b"Secret"));
        // Our own hashing round-trips through the same format.
        let mut g = PasswordFile::default();
        g.set("Gerrit_Bridge", "pw").unwrap();
        let g2 = PasswordFile::parse(&g.render(), Path::new("t")).unwrap();
        assert!(g2.verify("Gerrit_Bridge", b"pw"));
        assert!(
            !g2.verify("gerrit_bridge", b"pw"),
            "user names are case-sensitive"
        );
        assert!(!g2.verify("Gerrit_Bridge", b"pW"));
    }

    #[test]
    fn mosquitto_6_hash() {
        let salt = b"0123456789ab";
        let mut d = Sha512::new();
        d.update(b"hunter2");
        d.update(salt);
        let line = format!("old:$6${}${}", B64.encode(salt), B64.encode(d.finalize()));
        let f = PasswordFile::parse(&line, Path::new("t")).unwrap();
        assert!(f.verify("old", b"hunter2"));
        assert!(!f.verify("old", b"hunter3"));
    }

    #[test]
    fn bad_lines_name_the_line() {
        let e = PasswordFile::parse("a:$7$101$x$y\nnocolon\n", Path::new("pw")).unwrap_err();
        assert!(e.to_string().starts_with("pw:"), "{e}");
        let e = PasswordFile::parse("u:plain\n", Path::new("pw")).unwrap_err();
        assert!(e.to_string().contains("pw:1"), "{e}");
    }
}
