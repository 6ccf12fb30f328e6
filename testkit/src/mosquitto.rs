//! Debian's mosquitto as an external broker for the bridges: password
//! file, ACL (anonymous read-only, each bridge writes its own topics),
//! a plain and a TLS listener on free loopback ports, and persistence, so
//! a restart keeps persistent sessions and their queued messages.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::{require, run, wait_until, Proc, WAIT};
use crate::sshd::free_port;

pub struct Mosquitto {
    /// Plain MQTT (the test's own subscribers).
    pub port: u16,
    /// MQTT over TLS (the bridges), with `dir/server.pem` from `make_certs`.
    pub tls_port: u16,
    conf: PathBuf,
    proc_: Option<Proc>,
}

impl Mosquitto {
    /// Starts mosquitto in `dir` (which must hold `make_certs`' files).
    /// `users` may log in; `acl` is a mosquitto acl_file body.
    pub fn start(dir: &Path, users: &[(&str, &str)], acl: &str) -> Mosquitto {
        let passwd = dir.join("mosquitto.passwd");
        std::fs::write(&passwd, "").unwrap();
        for (u, p) in users {
            let out = run(Command::new(require("mosquitto_passwd", "mosquitto"))
                .arg("-b")
                .arg(&passwd)
                .args([u, p]));
            assert!(out.status.success(), "mosquitto_passwd: {out:?}");
        }
        std::fs::write(dir.join("mosquitto.acl"), acl).unwrap();
        let data = dir.join("mosquitto-data");
        std::fs::create_dir_all(&data).unwrap();
        let (port, tls_port) = (free_port(), free_port());
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\nper_listener_settings false\nallow_anonymous true\n\
                 password_file {pw}\nacl_file {acl}\n\
                 persistence true\npersistence_location {data}/\n\
                 max_queued_messages 100000\nset_tcp_nodelay true\nlog_dest stderr\n\
                 listener {port} 127.0.0.1\n\
                 listener {tls_port} 127.0.0.1\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n",
                pw = passwd.display(),
                acl = dir.join("mosquitto.acl").display(),
                data = data.display(),
                d = dir.display(),
            ),
        )
        .unwrap();
        let mut m = Mosquitto {
            port,
            tls_port,
            conf,
            proc_: None,
        };
        m.run();
        m
    }

    /// Starts it (again, after [`Mosquitto::stop`]) on the same ports.
    pub fn run(&mut self) {
        let p = Proc::spawn(
            "mosquitto",
            Command::new(require("mosquitto", "mosquitto"))
                .arg("-c")
                .arg(&self.conf),
        );
        let (port, tls) = (self.port, self.tls_port);
        wait_until(
            WAIT,
            || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && std::net::TcpStream::connect(("127.0.0.1", tls)).is_ok()
            },
            || format!("mosquitto to listen: {}", p.logs()),
        );
        self.proc_ = Some(p);
    }

    /// Stops it cleanly: it saves its sessions and their queued messages.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc_.take() {
            p.signal("TERM");
            p.wait_exit();
        }
    }

    /// What it logged.
    pub fn logs(&self) -> String {
        self.proc_.as_ref().map(Proc::logs).unwrap_or_default()
    }
}
