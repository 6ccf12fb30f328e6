//! A private Dovecot IMAP server on free loopback ports (IMAP with
//! STARTTLS, and IMAPS), one user, a maildir seeded by the test, as
//! `docs/test-services.md` describes. Needs Debian's `dovecot-imapd`
//! (`./scripts/test` installs it).

use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::process::*;
use crate::sshd::free_port;

const DOVECOT: &str = "/usr/sbin/dovecot";
/// Debian's `mail` user, which owns the maildir (Dovecot refuses uid 0).
const MAIL_UID: u32 = 8;
const MAIL_GID: u32 = 8;

/// A running Dovecot; stopped on drop.
pub struct Dovecot {
    proc_: Option<Proc>,
    dir: PathBuf,
    /// IMAP (STARTTLS offered) port.
    pub port: u16,
    /// IMAPS port.
    pub tls_port: u16,
    pub user: String,
    pub password: String,
    seq: AtomicU32,
}

impl Dovecot {
    /// Starts Dovecot with its state, config and maildir under `dir`, TLS
    /// from `certs` (`server.pem`/`server.key`, see [`crate::certs::make_certs`]).
    pub fn start(dir: &Path, certs: &Path) -> Dovecot {
        Dovecot::start_with(dir, certs, "")
    }

    /// As [`Dovecot::start`], but the server does not offer IDLE (clients
    /// must poll).
    pub fn start_without_idle(dir: &Path, certs: &Path) -> Dovecot {
        Dovecot::start_with(
            dir,
            certs,
            "imap_capability = IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE LITERAL+ UIDPLUS MOVE\n",
        )
    }

    fn start_with(dir: &Path, certs: &Path, extra: &str) -> Dovecot {
        assert!(
            Path::new(DOVECOT).exists(),
            "{DOVECOT} is missing: install Debian's dovecot-imapd (./scripts/test does)"
        );
        std::fs::create_dir_all(dir).expect("dovecot dir");
        // The mail user must reach the maildir: open the path to it.
        let mut p = Some(dir);
        while let Some(d) = p {
            if d == Path::new("/") || d == Path::new("/tmp") {
                break;
            }
            let mode = std::fs::metadata(d).expect("stat").permissions().mode();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o755)).ok();
            p = d.parent();
        }
        let mail = dir.join("mail");
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(mail.join(sub)).expect("maildir");
        }
        for d in [
            &mail,
            &mail.join("new"),
            &mail.join("cur"),
            &mail.join("tmp"),
        ] {
            chown(d, Some(MAIL_UID), Some(MAIL_GID)).expect("chown maildir");
        }
        let d = Dovecot {
            proc_: None,
            dir: dir.to_owned(),
            port: free_port(),
            tls_port: free_port(),
            user: "lp".into(),
            password: "imap-s3cret".into(),
            seq: AtomicU32::new(0),
        };
        let users = dir.join("users");
        std::fs::write(
            &users,
            format!(
                "{}:{{PLAIN}}{}:{MAIL_UID}:{MAIL_GID}::{}::userdb_mail=maildir:{}\n",
                d.user,
                d.password,
                dir.display(),
                mail.display()
            ),
        )
        .expect("users file");
        let c = |f: &str| certs.join(f).display().to_string();
        let conf = format!(
            "base_dir = {base}/run\n\
             state_dir = {base}/state\n\
             log_path = {base}/dovecot.log\n\
             info_log_path = {base}/dovecot.log\n\
             listen = 127.0.0.1\n\
             protocols = imap\n\
             first_valid_uid = {MAIL_UID}\n\
             disable_plaintext_auth = no\n\
             auth_mechanisms = plain login\n\
             mail_location = maildir:{mail}\n\
             ssl = yes\n\
             ssl_cert = <{cert}\n\
             ssl_key = <{key}\n\
             ssl_dh = </usr/share/dovecot/dh.pem\n\
             passdb {{\n  driver = passwd-file\n  args = {users}\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = {users}\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n  \
             inet_listener imaps {{\n    address = 127.0.0.1\n    port = {tls}\n    ssl = yes\n  }}\n}}\n\
             service anvil {{\n  chroot =\n}}\n{extra}",
            base = dir.display(),
            mail = mail.display(),
            cert = c("server.pem"),
            key = c("server.key"),
            users = users.display(),
            port = d.port,
            tls = d.tls_port,
        );
        std::fs::write(dir.join("dovecot.conf"), conf).expect("dovecot.conf");
        let mut d = d;
        d.boot();
        d
    }

    fn boot(&mut self) {
        let mut cmd = Command::new(DOVECOT);
        cmd.arg("-F").arg("-c").arg(self.dir.join("dovecot.conf"));
        self.proc_ = Some(Proc::spawn("dovecot", &mut cmd));
        let port = self.port;
        let log = self.dir.join("dovecot.log");
        poll(
            WAIT,
            || {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
                s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                    .ok()?;
                let mut buf = [0u8; 64];
                let n = std::io::Read::read(&mut s, &mut buf).ok()?;
                buf[..n].starts_with(b"* OK").then_some(())
            },
            || {
                format!(
                    "Dovecot to greet on port {port}; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            },
        );
    }

    /// Stops Dovecot, dropping every client connection (the maildir stays).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc_.take() {
            // The imap processes serving connections are the master's
            // children; they could outlive it for a while.
            let _ = Command::new("pkill")
                .args(["-KILL", "-P", &p.pid().to_string()])
                .status();
            p.signal("TERM");
            p.wait_exit();
        }
    }

    /// Stops and starts it again on the same ports with the same mail.
    pub fn restart(&mut self) {
        self.stop();
        self.boot();
    }

    /// The maildir.
    pub fn maildir(&self) -> PathBuf {
        self.dir.join("mail")
    }

    /// Delivers a mail as an MTA would (tmp/, then renamed into new/): it
    /// shows as unseen.
    pub fn deliver(&self, raw: &[u8]) {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("1700000000.M{n}P{}.test", std::process::id());
        let tmp = self.maildir().join("tmp").join(&name);
        std::fs::write(&tmp, raw).expect("write mail");
        chown(&tmp, Some(MAIL_UID), Some(MAIL_GID)).expect("chown mail");
        std::fs::rename(&tmp, self.maildir().join("new").join(&name)).expect("deliver mail");
    }

    /// How many mails carry the `\Seen` flag, and how many are in the
    /// folder at all (maildir file names: `...:2,<flags>`, seen = `S`).
    pub fn seen_and_total(&self) -> (usize, usize) {
        let mut seen = 0;
        let mut total = 0;
        for sub in ["new", "cur"] {
            let Ok(rd) = std::fs::read_dir(self.maildir().join(sub)) else {
                continue;
            };
            for e in rd.flatten() {
                total += 1;
                let name = e.file_name().to_string_lossy().into_owned();
                if name
                    .rsplit_once(":2,")
                    .is_some_and(|(_, flags)| flags.contains('S'))
                {
                    seen += 1;
                }
            }
        }
        (seen, total)
    }

    /// Dovecot's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- last lines of dovecot.log ---");
            for l in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{l}");
            }
        }
        self.stop();
    }
}
