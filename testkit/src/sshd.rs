//! A private OpenSSH `sshd` on a free loopback port, as a stand-in for
//! Gerrit's SSH port: host and user keys generated here, and a forced
//! command (whatever the client asks to run, the server runs that).
//! Needs Debian's `openssh-server` (`./scripts/test` installs it).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::*;

/// A running sshd; stopped on drop.
pub struct Sshd {
    proc_: Proc,
    pub addr: SocketAddr,
    /// Private key the client logs in with (mode 0600).
    pub user_key: PathBuf,
    /// known_hosts with the server's key under `[127.0.0.1]:<port>`.
    pub known_hosts: PathBuf,
    /// The server key's `SHA256:...` fingerprint.
    pub fingerprint: String,
    /// The user to log in as (the one running the tests).
    pub user: String,
}

/// A free loopback port (bound, then released for the service to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn keygen(path: &Path) {
    let out = run(Command::new(require("ssh-keygen", "openssh-client"))
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path));
    assert!(out.status.success(), "ssh-keygen: {out:?}");
}

impl Sshd {
    /// Starts sshd in `dir`; every login runs `force_command` (a shell
    /// command line) instead of what the client asked for. End it with
    /// `exec cat >/dev/null` to hold the stream open until the client goes.
    pub fn start(dir: &Path, force_command: &str) -> Sshd {
        let sshd = require("sshd", "openssh-server");
        std::fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd (privilege separation dir)");
        let host_key = dir.join("host_key");
        let user_key = dir.join("user_key");
        keygen(&host_key);
        keygen(&user_key);
        let user_pub = std::fs::read_to_string(dir.join("user_key.pub")).expect("user_key.pub");
        let host_pub = std::fs::read_to_string(dir.join("host_key.pub")).expect("host_key.pub");
        let authorized = dir.join("authorized_keys");
        let escaped = force_command.replace('\\', "\\\\").replace('"', "\\\"");
        std::fs::write(
            &authorized,
            format!("command=\"{escaped}\",no-pty,no-port-forwarding {user_pub}"),
        )
        .expect("write authorized_keys");
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
                 UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nLogLevel VERBOSE\n",
                host_key.display(),
                authorized.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .expect("write sshd_config");
        let proc_ = Proc::spawn(
            "sshd",
            Command::new(sshd)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        wait_until(
            WAIT,
            || TcpStream::connect(addr).is_ok(),
            || format!("sshd to listen; logs:\n{}", proc_.logs()),
        );
        let known_hosts = dir.join("known_hosts");
        let mut parts = host_pub.split_whitespace();
        let (kind, key) = (parts.next().expect("key type"), parts.next().expect("key"));
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {kind} {key}\n"))
            .expect("known_hosts");
        let fp = run(Command::new(require("ssh-keygen", "openssh-client"))
            .arg("-lf")
            .arg(dir.join("host_key.pub")));
        let fingerprint = String::from_utf8_lossy(&fp.stdout)
            .split_whitespace()
            .nth(1)
            .expect("fingerprint")
            .to_owned();
        let user = std::env::var("USER")
            .ok()
            .or_else(|| {
                let o = Command::new("id").arg("-un").output().ok()?;
                Some(String::from_utf8_lossy(&o.stdout).trim().to_owned())
            })
            .unwrap_or_else(|| "root".to_owned());
        Sshd {
            proc_,
            addr,
            user_key,
            known_hosts,
            fingerprint,
            user,
        }
    }

    /// `ssh://USER@127.0.0.1:PORT`, for `--gerrit`.
    pub fn url(&self) -> String {
        format!("ssh://{}@127.0.0.1:{}", self.user, self.addr.port())
    }

    /// sshd's log.
    pub fn logs(&self) -> String {
        self.proc_.logs()
    }

    /// Stops sshd and every session it serves (each runs in its own sshd
    /// child), so clients see their connections end and new ones refused.
    pub fn stop(&mut self) {
        let pid = self.proc_.pid();
        for child in children(pid) {
            let _ = Command::new("kill")
                .args(["-TERM", &child.to_string()])
                .status();
        }
        self.proc_.signal("TERM");
        self.proc_.wait_exit();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        for child in children(self.proc_.pid()) {
            let _ = Command::new("kill")
                .args(["-KILL", &child.to_string()])
                .status();
        }
    }
}

/// Processes whose parent is `pid` (from /proc).
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // pid (comm) state ppid ...: comm may hold spaces, so
                    // read after the last ')'.
                    let rest = &s[s.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}
