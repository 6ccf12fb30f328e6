//! The harness every Firehose integration test shares: start the real
//! binaries (`firehose-broker`, the bridges) on loopback ports they pick
//! themselves, find real client tools and services (failing with an install
//! hint when one is missing, never skipping), and speak raw MQTT for the
//! bad-input cases.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bound for anything a test waits on. Never a timing assertion:
/// only a guard so a broken test ends instead of hanging.
pub const WAIT: Duration = Duration::from_secs(20);

/// A binary of this workspace, from the target directory the tests run
/// from (`cargo test --workspace` builds every binary first).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary inside target/<profile>/deps");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace` first (./scripts/test does)",
        p.display()
    );
    p
}

/// A broker process; killed on drop.
pub struct BrokerProc {
    child: Child,
    pub mqtt: Option<SocketAddr>,
    pub mqtts: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    logs: Arc<Mutex<Vec<String>>>,
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
        let mut child = Command::new(bin("firehose-broker"))
            .args(args)
            .env("FIREHOSE_LOG", "info,rumqttd=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn firehose-broker");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l2 = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening")
                    || line.contains("auth loaded")
                    || line.contains("firehose-broker:")
                {
                    let _ = tx.send(line.clone());
                }
                l2.lock().unwrap().push(line);
            }
        });
        let mut b = BrokerProc {
            child,
            mqtt: None,
            mqtts: None,
            ws: None,
            wss: None,
            logs,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => panic!("broker did not start; logs:\n{}", b.logs()),
            };
            if line.contains("firehose-broker:") {
                panic!("broker failed to start: {line}");
            }
            if line.contains("auth loaded") {
                break;
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

    pub fn mqtt(&self) -> SocketAddr {
        self.mqtt.expect("mqtt listener")
    }
    pub fn port(&self) -> String {
        self.mqtt().port().to_string()
    }

    /// Everything the broker logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.logs.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no log line with {needle:?}; logs:\n{}", self.logs());
    }

    /// Reads one Prometheus sample from /metrics on the ws listener.
    pub fn metric(&self, sample: &str) -> u64 {
        let (_, body) = http_get(self.ws.expect("ws listener"), "/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|r| r.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no sample {sample} in /metrics:\n{body}"))
    }

    /// Waits until a metric reaches at least `n`.
    pub fn wait_metric(&self, sample: &str, n: u64) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.metric(sample) >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{sample} never reached {n} (now {})", self.metric(sample));
    }

    /// Waits until a metric falls to at most `n`.
    pub fn wait_metric_at_most(&self, sample: &str, n: u64) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.metric(sample) <= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{sample} never fell to {n} (now {})", self.metric(sample));
    }

    pub fn dropped(&self, reason: &str) -> u64 {
        self.metric(&format!(
            "firehose_broker_dropped_total{{reason=\"{reason}\"}}"
        ))
    }

    /// Resident memory of the broker process, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("broker did not exit");
    }
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

/// The path of a required external tool, or a panic naming the package.
pub fn require(tool: &str, package: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!("{tool} not found: install it with `apt-get install {package}` (the README test command does this)");
}

/// Runs a command with a time limit and returns its output.
pub fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + WAIT;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{cmd:?} did not finish; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
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
        let deadline = Instant::now() + WAIT;
        while b.metric("firehose_broker_subscriptions") <= before
            && child.try_wait().expect("try_wait").is_none()
        {
            assert!(Instant::now() < deadline, "mosquitto_sub never subscribed");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sub { child: Some(child) }
    }

    /// Waits for exit (use -C/-W so it ends) and returns stdout.
    pub fn output(mut self) -> (i32, String, String) {
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + WAIT;
        while child.try_wait().expect("try_wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output().expect("output");
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
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
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

fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn s16(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A packet from its first byte and body.
pub fn packet(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![byte1];
    varint(body.len(), &mut v);
    v.extend_from_slice(body);
    v
}

/// CONNECT for level 3 (MQIsdp), 4 or 5.
pub fn connect(
    level: u8,
    client_id: &str,
    keep_alive: u16,
    clean: bool,
    login: Option<(&str, &str)>,
) -> Vec<u8> {
    let mut b = Vec::new();
    s16(if level == 3 { b"MQIsdp" } else { b"MQTT" }, &mut b);
    b.push(level);
    let mut flags = if clean { 0x02 } else { 0 };
    if login.is_some() {
        flags |= 0xC0;
    }
    b.push(flags);
    b.extend_from_slice(&keep_alive.to_be_bytes());
    if level == 5 {
        b.push(0);
    }
    s16(client_id.as_bytes(), &mut b);
    if let Some((u, p)) = login {
        s16(u.as_bytes(), &mut b);
        s16(p.as_bytes(), &mut b);
    }
    packet(0x10, &b)
}

/// An MQTT 5 CONNECT with a session expiry interval and, optionally, a will
/// `(topic, payload, will delay seconds)`.
pub fn connect5(
    client_id: &str,
    clean: bool,
    session_expiry: u32,
    will: Option<(&str, &str, u32)>,
    login: Option<(&str, &str)>,
) -> Vec<u8> {
    let mut b = Vec::new();
    s16(b"MQTT", &mut b);
    b.push(5);
    let mut flags = if clean { 0x02 } else { 0 };
    if will.is_some() {
        flags |= 0x04;
    }
    if login.is_some() {
        flags |= 0xC0;
    }
    b.push(flags);
    b.extend_from_slice(&60u16.to_be_bytes());
    let mut props = vec![0x11];
    props.extend_from_slice(&session_expiry.to_be_bytes());
    varint(props.len(), &mut b);
    b.extend_from_slice(&props);
    s16(client_id.as_bytes(), &mut b);
    if let Some((topic, payload, delay)) = will {
        let mut wp = vec![0x18];
        wp.extend_from_slice(&delay.to_be_bytes());
        varint(wp.len(), &mut b);
        b.extend_from_slice(&wp);
        s16(topic.as_bytes(), &mut b);
        s16(payload.as_bytes(), &mut b);
    }
    if let Some((u, p)) = login {
        s16(u.as_bytes(), &mut b);
        s16(p.as_bytes(), &mut b);
    }
    packet(0x10, &b)
}

/// SUBSCRIBE with several filters at QoS 0.
pub fn subscribe_many(level: u8, pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut b = pkid.to_be_bytes().to_vec();
    if level == 5 {
        b.push(0);
    }
    for f in filters {
        s16(f.as_bytes(), &mut b);
        b.push(0);
    }
    packet(0x82, &b)
}

/// The reason codes of a SUBACK body.
pub fn suback_codes(level: u8, body: &[u8]) -> Vec<u8> {
    let skip = if level == 5 { 3 } else { 2 };
    body[skip..].to_vec()
}

pub fn subscribe(level: u8, pkid: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut b = pkid.to_be_bytes().to_vec();
    if level == 5 {
        b.push(0);
    }
    s16(filter.as_bytes(), &mut b);
    b.push(qos);
    packet(0x82, &b)
}

pub fn publish(level: u8, topic: &[u8], payload: &[u8], qos: u8, pkid: u16) -> Vec<u8> {
    let mut b = Vec::new();
    s16(topic, &mut b);
    if qos > 0 {
        b.extend_from_slice(&pkid.to_be_bytes());
    }
    if level == 5 {
        b.push(0);
    }
    b.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &b)
}

/// A raw MQTT connection.
pub struct Raw {
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub fn open(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).unwrap();
        Raw { s, buf: Vec::new() }
    }

    /// Connects and returns the CONNACK (byte1, body).
    pub fn connect(
        addr: SocketAddr,
        level: u8,
        id: &str,
        login: Option<(&str, &str)>,
    ) -> (Raw, Vec<u8>) {
        let mut r = Raw::open(addr);
        r.send(&connect(level, id, 60, true, login));
        let (t, body) = r.read().expect("CONNACK");
        assert_eq!(t, 0x20, "expected CONNACK");
        (r, body)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    /// Next packet as (byte1, body), or None when the server closed.
    pub fn read(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let mut len = 0usize;
                let mut i = 1;
                let mut mult = 1;
                let mut complete = false;
                while i < self.buf.len() && i <= 4 {
                    let b = self.buf[i];
                    len += (b & 0x7f) as usize * mult;
                    mult *= 128;
                    i += 1;
                    if b & 0x80 == 0 {
                        complete = true;
                        break;
                    }
                }
                if complete && self.buf.len() >= i + len {
                    let byte1 = self.buf[0];
                    let body = self.buf[i..i + len].to_vec();
                    self.buf.drain(..i + len);
                    return Some((byte1, body));
                }
            }
            let mut tmp = [0u8; 4096];
            match self.s.read(&mut tmp) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// Reads until the server closes; returns every packet type seen.
    pub fn read_until_closed(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut v = Vec::new();
        while let Some(p) = self.read() {
            v.push(p);
        }
        v
    }
}

/// Anonymous subscriber used as a canary: it must keep receiving while
/// other connections misbehave.
pub struct Canary {
    raw: Raw,
    n: u32,
}

impl Canary {
    pub fn new(b: &BrokerProc) -> Canary {
        let (mut raw, _) = Raw::connect(b.mqtt(), 4, "canary", None);
        raw.send(&subscribe(4, 1, "canary/#", 0));
        let (t, _) = raw.read().expect("SUBACK");
        assert_eq!(t, 0x90);
        Canary { raw, n: 0 }
    }

    /// Publishes through an authenticated raw client and checks the canary got it.
    pub fn check(&mut self, b: &BrokerProc, login: (&str, &str)) {
        self.n += 1;
        let (mut p, ack) =
            Raw::connect(b.mqtt(), 4, &format!("canary-pub-{}", self.n), Some(login));
        assert_eq!(ack, vec![0, 0], "publisher refused");
        let payload = format!("ping {}", self.n);
        p.send(&publish(4, b"canary/x", payload.as_bytes(), 1, 7));
        let (t, _) = p.read().expect("PUBACK");
        assert_eq!(t, 0x40);
        loop {
            let (t, body) = self.raw.read().expect("canary lost its connection");
            if t & 0xf0 == 0x30 && body.ends_with(payload.as_bytes()) {
                return;
            }
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = run(Command::new(require("openssl", "openssl"))
        .args(args)
        .current_dir(dir));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key and a certificate signed by the test CA (`ca.pem`/`ca.key`):
/// `<name>.key`, `<name>.pem`, with `ext` as the v3 extensions.
fn signed_cert(dir: &Path, name: &str, subject: &str, ext: &str) {
    let (key, csr, pem, extf) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            subject,
        ],
    );
    std::fs::write(dir.join(&extf), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &extf,
        ],
    );
}

/// Generates a test CA (`ca.pem`), a server certificate for
/// 127.0.0.1/localhost (`server.pem`, `server.key`) and a client
/// certificate (`client.pem`, `client.key`), all with openssl.
pub fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=firehose test CA",
        ],
    );
    signed_cert(
        dir,
        "server",
        "/CN=localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    signed_cert(
        dir,
        "client",
        "/CN=firehose-test-client",
        "extendedKeyUsage=clientAuth\n",
    );
}

/// Path of `name` inside `dir` as a string, for command-line flags.
pub fn path_str(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}
