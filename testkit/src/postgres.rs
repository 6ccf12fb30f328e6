//! A private PostgreSQL cluster on a free loopback port, with its data in
//! a temporary directory, as `docs/test-services.md` describes. Needs
//! Debian's `postgresql` (`./scripts/test` installs it); the package's own
//! `main` cluster is left alone.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::*;
use crate::sshd::free_port;

/// A running cluster; stopped on drop.
pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    /// `postgres://firehose@127.0.0.1:<port>/postgres`.
    pub url: String,
    pub port: u16,
}

/// The newest installed server's `bin` directory.
fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.pop().unwrap_or_else(|| {
        panic!("no PostgreSQL server in /usr/lib/postgresql: install Debian's postgresql (./scripts/test does)")
    })
}

/// initdb and the server refuse to run as root: as root, run them as the
/// package's `postgres` user.
fn as_postgres(bin: &Path, tool: &str) -> Command {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

impl Postgres {
    /// Creates and starts a cluster under `dir` (trust authentication on
    /// loopback, user `firehose`, `fsync=off`: a test's data need not
    /// survive a power loss).
    pub fn start(dir: &Path) -> Postgres {
        let bin = bin_dir();
        let home = dir.join("pg");
        std::fs::create_dir_all(&home).expect("postgres dir");
        // The postgres user must reach the directory.
        let mut p = home.clone();
        while let Some(parent) = p.parent() {
            if let Ok(m) = std::fs::metadata(&p) {
                let mode = m.permissions().mode();
                if mode & 0o001 == 0 {
                    let _ =
                        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o711));
                }
            }
            if parent == Path::new("/tmp") || parent == Path::new("/") {
                break;
            }
            p = parent.to_owned();
        }
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let data = home.join("data");
        let out = run(as_postgres(&bin, "initdb").arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "firehose",
            "--no-sync",
        ]));
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            home.display()
        );
        let out = run(as_postgres(&bin, "pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-w", "-t", "60", "-l"])
            .arg(home.join("log"))
            .args(["-o", &opts, "start"]));
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(home.join("log")).unwrap_or_default()
        );
        Postgres {
            bin,
            data,
            url: format!("postgres://firehose@127.0.0.1:{port}/postgres"),
            port,
        }
    }

    /// Creates a database and returns its URL.
    pub fn database(&self, name: &str) -> String {
        let out = run(Command::new(self.bin.join("createdb")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "firehose",
            name,
        ]));
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://firehose@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
