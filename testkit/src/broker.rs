//! The broker under test and the mosquitto tools that drive it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

use crate::process::*;

/// A broker process; killed on drop. Derefs to [`Proc`] for logs and signals.
pub struct BrokerProc {
    proc_: Proc,
    /// The directory a [`Broker`] made for it (password file, config,
    /// certificates), removed with it.
    dir: Option<tempfile::TempDir>,
    pub mqtt: Option<SocketAddr>,
    pub mqtts: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
}

impl std::ops::Deref for BrokerProc {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.proc_
    }
}

impl std::ops::DerefMut for BrokerProc {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.proc_
    }
}

impl BrokerProc {
    /// Starts the broker with plain MQTT and websocket listeners on free
    /// loopback ports plus `extra` flags.
    pub fn start(extra: &[&str]) -> BrokerProc {
        let mut args = vec!["--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        BrokerProc::start_exact(&args)
    }

    /// Starts the broker with exactly these flags.
    pub fn start_exact(args: &[&str]) -> BrokerProc {
        let proc_ = Proc::spawn(
            "firehose-broker",
            Command::new(bin("firehose-broker"))
                .args(args)
                .env("FIREHOSE_LOG", "info"),
        );
        let mut b = BrokerProc {
            proc_,
            dir: None,
            mqtt: None,
            mqtts: None,
            ws: None,
            wss: None,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match b.proc_.lines.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => panic!("broker did not start; logs:\n{}", b.logs()),
            };
            if line.contains("firehose-broker:") {
                panic!("broker failed to start: {line}");
            }
            if line.contains("auth loaded") {
                break;
            }
            if !line.contains("listening") {
                continue;
            }
            let kind = field(&line, "listener");
            let addr: Option<SocketAddr> = field(&line, "addr").and_then(|a| a.parse().ok());
            match (kind.as_deref(), addr) {
                (Some("mqtt"), Some(a)) if b.mqtt.is_none() => b.mqtt = Some(a),
                (Some("mqtts"), Some(a)) if b.mqtts.is_none() => b.mqtts = Some(a),
                (Some("ws"), Some(a)) if b.ws.is_none() => b.ws = Some(a),
                (Some("wss"), Some(a)) if b.wss.is_none() => b.wss = Some(a),
                _ => {}
            }
        }
        b
    }

    /// The directory a [`Broker`] made for this broker (its files, and
    /// room for a test's own).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(tempfile::TempDir::path)
            .expect("a broker started by testkit::Broker")
    }

    pub fn mqtt(&self) -> SocketAddr {
        self.mqtt.expect("mqtt listener")
    }
    pub fn port(&self) -> String {
        self.mqtt().port().to_string()
    }

    /// Reads one Prometheus sample from /metrics on the ws listener.
    pub fn metric(&self, sample: &str) -> u64 {
        metric_at(self.ws.expect("ws listener"), sample)
            .unwrap_or_else(|body| panic!("no sample {sample} in /metrics:\n{body}"))
    }

    /// Waits until a metric reaches at least `n`.
    pub fn wait_metric(&self, sample: &str, n: u64) {
        wait_until(
            WAIT,
            || self.metric(sample) >= n,
            || format!("{sample} to reach {n} (now {})", self.metric(sample)),
        );
    }

    /// Waits until a metric falls to at most `n`.
    pub fn wait_metric_at_most(&self, sample: &str, n: u64) {
        wait_until(
            WAIT,
            || self.metric(sample) <= n,
            || format!("{sample} to fall to {n} (now {})", self.metric(sample)),
        );
    }

    pub fn dropped(&self, reason: &str) -> u64 {
        self.metric(&format!(
            "firehose_broker_dropped_total{{reason=\"{reason}\"}}"
        ))
    }
}

/// One Prometheus sample from `http://addr/metrics`, or what the page
/// held instead.
pub fn metric_at(addr: SocketAddr, sample: &str) -> Result<u64, NoSample> {
    let (_, body) = http_get(addr, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.trim().parse().ok()))
        .ok_or_else(|| NoSample {
            sample: sample.to_owned(),
            body,
        })
}

/// A metrics page without the sample asked for: shows the page, so a
/// failing test says what was there.
#[derive(Debug)]
pub struct NoSample {
    pub sample: String,
    pub body: String,
}

impl std::fmt::Display for NoSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no sample {} in:\n{}", self.sample, self.body)
    }
}

impl std::error::Error for NoSample {}

fn field(line: &str, name: &str) -> Option<String> {
    let key = format!("{name}=");
    let start = line.find(&key)? + key.len();
    let rest = &line[start..];
    let v: String = if let Some(r) = rest.strip_prefix('"') {
        r.chars().take_while(|c| *c != '"').collect()
    } else {
        rest.chars().take_while(|c| !c.is_whitespace()).collect()
    };
    Some(v)
}

/// Spawns `mosquitto_sub` and waits until the broker has its subscription.
pub struct Sub {
    child: Option<Child>,
}

impl Sub {
    pub fn spawn(b: &BrokerProc, args: &[&str]) -> Sub {
        let mut all = vec![
            "-h".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            b.port(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        Sub::spawn_args(b, &all)
    }

    /// Like `spawn`, with every argument given (host, port, TLS files).
    pub fn spawn_args(b: &BrokerProc, args: &[String]) -> Sub {
        let tool = require("mosquitto_sub", "mosquitto-clients");
        let before = b.metric("firehose_broker_subscriptions");
        let mut child = Command::new(tool)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mosquitto_sub");
        // Subscribed (or already done, e.g. -C 1 satisfied by a retained message).
        wait_until(
            WAIT,
            || {
                b.metric("firehose_broker_subscriptions") > before
                    || child.try_wait().expect("try_wait").is_some()
            },
            || "mosquitto_sub to subscribe".to_owned(),
        );
        Sub { child: Some(child) }
    }

    /// Waits for exit (use -C/-W so it ends) and returns (code, stdout, stderr).
    pub fn output(mut self) -> (i32, String, String) {
        let child = self.child.take().expect("child");
        let (out, _) = finish(child, WAIT);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn mosquitto_pub(b: &BrokerProc, args: &[&str]) -> Output {
    let tool = require("mosquitto_pub", "mosquitto-clients");
    run(Command::new(tool)
        .args(["-h", "127.0.0.1", "-p", &b.port()])
        .args(args))
}

/// Writes a password file with Debian's mosquitto_passwd (mode 0600).
pub fn passwd_file(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let tool = require("mosquitto_passwd", "mosquitto");
    let p = dir.join("passwd");
    for (i, (u, pw)) in users.iter().enumerate() {
        let mut c = Command::new(&tool);
        if i == 0 {
            c.arg("-c");
        }
        let out = run(c.args(["-b", p.to_str().unwrap(), u, pw]));
        assert!(out.status.success(), "mosquitto_passwd: {out:?}");
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Minimal HTTP GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default();
    (status, body)
}

// ---- raw MQTT -------------------------------------------------------------

/// A broker for a test, built up, then started: in a directory of its own
/// (removed with it), knowing the publishing users (by default
/// [`crate::logins::PUBLISHER`]), with plain MQTT and websocket listeners
/// on free loopback ports, and whatever else a test asks for.
///
/// ```no_run
/// let b = firehose_testkit::Broker::new().limits("max_inflight = 2").acl("topic read #\n").start();
/// ```
pub struct Broker {
    dir: tempfile::TempDir,
    users: Vec<(String, String)>,
    config: Vec<String>,
    args: Vec<String>,
}

impl Default for Broker {
    fn default() -> Self {
        Broker::new()
    }
}

impl Broker {
    pub fn new() -> Broker {
        let (user, password) = crate::logins::PUBLISHER;
        Broker {
            dir: tempfile::tempdir().expect("a temporary directory"),
            users: vec![(user.into(), password.into())],
            config: Vec::new(),
            args: Vec::new(),
        }
    }

    /// The users its password file knows, instead of the publisher alone.
    pub fn users(mut self, users: &[(&str, &str)]) -> Broker {
        self.users = users
            .iter()
            .map(|(u, p)| ((*u).into(), (*p).into()))
            .collect();
        self
    }

    /// An ACL file with `text` (`--acl`).
    pub fn acl(mut self, text: &str) -> Broker {
        let path = self.dir.path().join("acl");
        std::fs::write(&path, text).expect("writing the ACL");
        self.args.push("--acl".into());
        self.args.push(path.to_string_lossy().into_owned());
        self
    }

    /// Lines of the config file's `[limits]` table.
    pub fn limits(mut self, lines: &str) -> Broker {
        self.config.push(format!("[limits]\n{lines}\n"));
        self
    }

    /// An MQTT-over-TLS listener too, with certificates made in its
    /// directory (`ca.pem` is what clients trust).
    pub fn tls(mut self) -> Broker {
        let tls = crate::certs::TlsListener::new(self.dir.path());
        self.args.extend(tls.flags().into_iter().map(str::to_owned));
        self
    }

    /// More flags.
    pub fn args(mut self, args: &[&str]) -> Broker {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Starts it; waits until it listens.
    pub fn start(self) -> BrokerProc {
        let users: Vec<(&str, &str)> = self
            .users
            .iter()
            .map(|(u, p)| (u.as_str(), p.as_str()))
            .collect();
        let mut args = self.args.clone();
        if !self.config.is_empty() {
            let path = self.dir.path().join("broker.toml");
            std::fs::write(&path, self.config.concat()).expect("writing the config");
            args.push("--config".into());
            args.push(path.to_string_lossy().into_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut b = BrokerProc::with_users(self.dir.path(), &users, &args);
        b.dir = Some(self.dir);
        b
    }
}

impl BrokerProc {
    /// A broker whose password file (written into `dir` with Debian's
    /// mosquitto_passwd) knows `users`: plain MQTT and websocket listeners
    /// on free ports, plus `extra` flags.
    pub fn with_users(dir: &Path, users: &[(&str, &str)], extra: &[&str]) -> BrokerProc {
        let pw = passwd_file(dir, users).to_string_lossy().into_owned();
        let mut args = vec!["--passwd", pw.as_str()];
        args.extend_from_slice(extra);
        BrokerProc::start(&args)
    }

    /// A broker on a fixed MQTT port (so a restart comes back on the same
    /// address), reading `passwd`, plus `extra` flags.
    pub fn on_port(port: u16, passwd: &Path, extra: &[&str]) -> BrokerProc {
        let mqtt = format!("127.0.0.1:{port}");
        let mut args = vec!["--mqtt", &mqtt, "--ws", "127.0.0.1:0", "--passwd"];
        let pw = passwd.to_string_lossy().into_owned();
        args.push(&pw);
        args.extend_from_slice(extra);
        BrokerProc::start_exact(&args)
    }
}

/// A bridge's `--password-file` (mode 0600) in `dir` holding `password`.
pub fn bridge_password_file(dir: &Path, password: &str) -> PathBuf {
    private_file(&dir.join("bridge.pass"), &format!("{password}\n"))
}

/// Runs the real gerrit bridge over every gerrit fixture event
/// (`firehose-gerrit --replay fixtures/gerrit/stream-events.jsonl`),
/// logged in as `login` on `broker` (`SCHEME://HOST:PORT`; the user is put
/// in the URL, the password in a private file under `dir`), with `extra`
/// flags; its output once it has exited.
pub fn replay_gerrit(dir: &Path, broker: &str, login: (&str, &str), extra: &[&str]) -> Output {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/gerrit/stream-events.jsonl");
    let (scheme, rest) = broker.split_once("://").unwrap_or(("mqtt", broker));
    run(Command::new(bin("firehose-gerrit"))
        .arg("--replay")
        .arg(&fixture)
        .args(["--broker", &format!("{scheme}://{}@{rest}", login.0)])
        .arg("--password-file")
        .arg(bridge_password_file(dir, login.1))
        .args(extra))
}

/// The password file of a broker that is restarted in a test: it either
/// knows the bridge's user or does not (so a fresh broker can keep the
/// bridge out until a subscriber is back), switched with SIGHUP.
pub struct PasswdSwitch {
    /// The file the broker reads.
    pub active: PathBuf,
    with: PathBuf,
    without: PathBuf,
}

impl PasswdSwitch {
    /// Starts out admitting `user`.
    pub fn new(dir: &Path, user: (&str, &str)) -> PasswdSwitch {
        let (a, b) = (dir.join("passwd-with"), dir.join("passwd-without"));
        std::fs::create_dir_all(&a).expect("mkdir");
        std::fs::create_dir_all(&b).expect("mkdir");
        let s = PasswdSwitch {
            active: dir.join("passwd-active"),
            with: passwd_file(&a, &[user]),
            without: passwd_file(&b, &[("someone-else", "pw")]),
        };
        s.admit();
        s
    }

    /// The file knows the user (send SIGHUP to a running broker).
    pub fn admit(&self) {
        std::fs::copy(&self.with, &self.active).expect("copy passwd");
    }

    /// The file does not know the user.
    pub fn refuse(&self) {
        std::fs::copy(&self.without, &self.active).expect("copy passwd");
    }
}
