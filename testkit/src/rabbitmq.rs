//! A private RabbitMQ node on a free loopback port, with its own node name
//! and data directory, as `docs/test-services.md` describes.
//! Needs Debian's `rabbitmq-server` (`./scripts/test` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::*;
use crate::sshd::free_port;

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// A running RabbitMQ node; stopped on drop.
pub struct RabbitMq {
    proc_: Option<Proc>,
    dir: PathBuf,
    pub node: String,
    pub port: u16,
    /// The amqps:// port, when started with [`RabbitMq::start_tls`].
    pub tls_port: Option<u16>,
    dist_port: u16,
}

impl RabbitMq {
    /// Starts a node with its data under `dir`.
    pub fn start(dir: &Path) -> RabbitMq {
        RabbitMq::start_with(dir, None)
    }

    /// Starts a node that also listens for amqps:// on [`Self::tls_port`],
    /// with `certs`' `server.pem`/`server.key` (see [`crate::certs::make_certs`]).
    pub fn start_tls(dir: &Path, certs: &Path) -> RabbitMq {
        RabbitMq::start_with(dir, Some(certs))
    }

    fn start_with(dir: &Path, certs: Option<&Path>) -> RabbitMq {
        assert!(
            Path::new(SERVER).exists(),
            "{SERVER} is missing: install Debian's rabbitmq-server (./scripts/test does)"
        );
        std::fs::create_dir_all(dir).expect("rabbitmq dir");
        std::fs::write(dir.join("plugins"), "[].\n").expect("plugins file");
        let mut r = RabbitMq {
            proc_: None,
            dir: dir.to_owned(),
            node: format!("firehose-{}-{}@localhost", std::process::id(), free_port()),
            port: free_port(),
            tls_port: certs.map(|_| free_port()),
            dist_port: free_port(),
        };
        if let (Some(certs), Some(port)) = (certs, r.tls_port) {
            let c = |f: &str| certs.join(f).display().to_string();
            std::fs::write(
                dir.join("rabbitmq.conf"),
                format!(
                    "listeners.ssl.1 = 127.0.0.1:{port}\n\
                     ssl_options.cacertfile = {}\n\
                     ssl_options.certfile = {}\n\
                     ssl_options.keyfile = {}\n\
                     ssl_options.verify = verify_none\n\
                     ssl_options.fail_if_no_peer_cert = false\n",
                    c("ca.pem"),
                    c("server.pem"),
                    c("server.key")
                ),
            )
            .expect("rabbitmq.conf");
        }
        r.boot();
        r
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env(
            "HOME",
            std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
        )
        .env("RABBITMQ_NODENAME", &self.node)
        .env("RABBITMQ_NODE_PORT", self.port.to_string())
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
        .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.join("plugins"));
        if self.tls_port.is_some() {
            cmd.env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"));
        }
    }

    fn boot(&mut self) {
        let mut cmd = Command::new(SERVER);
        self.env(&mut cmd);
        self.proc_ = Some(Proc::spawn("rabbitmq-server", &mut cmd));
        // await_startup fails at once until the node registered with epmd.
        let last_error = std::cell::RefCell::new(String::new());
        poll_every(
            Duration::from_millis(500),
            WAIT * 3,
            || {
                let mut ctl = Command::new(CTL);
                self.env(&mut ctl);
                let out =
                    run(ctl.args(["-q", "-n", &self.node, "await_startup", "--timeout", "10"]));
                *last_error.borrow_mut() = String::from_utf8_lossy(&out.stderr).into_owned();
                out.status.success().then_some(())
            },
            || {
                format!(
                    "RabbitMQ to start: {}\n{}",
                    last_error.borrow(),
                    self.proc_.as_ref().map(|p| p.logs()).unwrap_or_default()
                )
            },
        );
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops the node (its data stays).
    pub fn stop(&mut self) {
        let mut ctl = Command::new(CTL);
        self.env(&mut ctl);
        let _ = run(ctl.args(["-q", "-n", &self.node, "stop"]));
        if let Some(mut p) = self.proc_.take() {
            p.wait_exit();
        }
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.boot();
    }

    /// Runs rabbitmqctl against this node.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut ctl = Command::new(CTL);
        self.env(&mut ctl);
        let out = run(ctl.arg("-q").arg("-n").arg(&self.node).args(args));
        assert!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        if self.proc_.is_some() {
            self.stop();
        }
    }
}
