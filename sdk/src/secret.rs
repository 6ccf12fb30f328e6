//! The one rule for every file that holds a secret (a password file, a
//! private key, a broker password), in every Firehose program: others may
//! not read it, its group may not write it, and its group may read it only
//! when root or this process owns it — `root:<service group> 0640` is how a
//! service running as its own user (`User=firehose`) reads a file its
//! operator keeps. Anything more open is refused, naming the fix.

use std::path::{Path, PathBuf};

/// A secret file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file could not be looked at.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is more open than a secret may be.
    #[error("{path} holds a secret and is open to others (mode {mode:o}, owner uid {uid} gid {gid}); fix it with: chmod 0600 {path} (a service that runs as its own user may read a root-owned file through its group: chown root:<service group> {path} && chmod 0640 {path})")]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        uid: u32,
        /// Its group.
        gid: u32,
    },
}

/// The file's mode when it is too open for a secret, `None` when it is fine.
pub fn too_open(path: &Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok(mode_too_open(meta.mode() & 0o777, meta.uid()).then_some(meta.mode() & 0o777))
}

/// The rule itself, on a mode and its owner.
fn mode_too_open(mode: u32, owner: u32) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let group_read_ok = mode & 0o040 == 0 || owner == 0 || owner == me;
    mode & 0o027 != 0 || !group_read_ok
}

/// Checks `path` by the rule (see the module documentation).
pub fn check(path: &Path) -> Result<(), SecretFileError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|source| SecretFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.mode() & 0o777;
    if mode_too_open(mode, meta.uid()) {
        return Err(SecretFileError::TooOpen {
            path: path.to_owned(),
            mode,
            uid: meta.uid(),
            gid: meta.gid(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_modes_a_secret_may_have() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, "").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, true),
            (0o620, false),
            (0o660, false),
            (0o644, false),
            (0o604, false),
            (0o602, false),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = check(&p);
            assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
            assert_eq!(too_open(&p).unwrap().is_none(), ok);
            if let Err(e) = r {
                let e = e.to_string();
                assert!(e.contains("chmod 0600") && e.contains("chmod 0640"), "{e}");
            }
        }
        // Group-readable is for a file root or this process owns, only.
        assert!(mode_too_open(0o640, 4242) || unsafe { libc::geteuid() } == 4242);
    }
}
