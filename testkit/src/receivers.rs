//! Receivers for notification tests, on loopback: an HTTP server that
//! records every request (or never answers, to stand for a hung
//! endpoint), and aiosmtpd (a real SMTP server, from PyPI, installed into
//! `target/smtp-venv` by `./scripts/test`) delivering into a maildir.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use crate::process::{wait_until, Proc, WAIT};

/// How the HTTP receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200 OK.
    Ok,
    /// Reads the request and never answers.
    Hang,
}

/// One recorded HTTP request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 server on 127.0.0.1 that records requests.
pub struct HttpReceiver {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl HttpReceiver {
    pub fn start(answer: Answer) -> HttpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an HTTP receiver");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let r = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let r = r.clone();
                std::thread::spawn(move || loop {
                    let Some(req) = read_request(&mut conn) else {
                        return;
                    };
                    r.lock().unwrap().push(req);
                    if answer == Answer::Hang {
                        // Never answer: hold the connection until the
                        // client gives up and closes it.
                        let mut rest = Vec::new();
                        let _ = conn.read_to_end(&mut rest);
                        return;
                    }
                    let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if conn.write_all(ok.as_bytes()).is_err() {
                        return;
                    }
                });
            }
        });
        HttpReceiver { addr, requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived.
    pub fn wait_requests(&self, n: usize) -> Vec<Request> {
        wait_until(
            WAIT,
            || self.requests.lock().unwrap().len() >= n,
            || {
                format!(
                    "{n} HTTP requests (got {})",
                    self.requests.lock().unwrap().len()
                )
            },
        );
        self.requests()
    }
}

fn read_request(conn: &mut std::net::TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// aiosmtpd on 127.0.0.1, delivering into a maildir; with certificates,
/// it requires STARTTLS.
pub struct SmtpServer {
    pub port: u16,
    maildir: PathBuf,
    _proc: Proc,
}

impl SmtpServer {
    /// `certs`: a directory with `server.pem` and `server.key` (see
    /// [`crate::make_certs`]) to require STARTTLS.
    pub fn start(dir: &Path, certs: Option<&Path>) -> SmtpServer {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/smtp-venv/bin/aiosmtpd");
        assert!(
            bin.exists(),
            "{} is missing: run ./scripts/test, or: python3 -m venv target/smtp-venv && target/smtp-venv/bin/pip install aiosmtpd==1.4.6",
            bin.display()
        );
        let port = crate::sshd::free_port();
        let maildir = dir.join("maildir");
        let mut cmd = Command::new(bin);
        cmd.args(["-n", "-l", &format!("127.0.0.1:{port}")]);
        if let Some(c) = certs {
            cmd.arg("--tlscert")
                .arg(c.join("server.pem"))
                .arg("--tlskey")
                .arg(c.join("server.key"));
        }
        cmd.args(["-c", "aiosmtpd.handlers.Mailbox"]).arg(&maildir);
        let proc = Proc::spawn("aiosmtpd", &mut cmd);
        proc.wait_listening(port);
        SmtpServer {
            port,
            maildir,
            _proc: proc,
        }
    }

    /// Every message delivered so far (raw RFC 5322 text).
    pub fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect()
    }

    /// Waits until `n` messages arrived.
    pub fn wait_messages(&self, n: usize) -> Vec<String> {
        wait_until(
            WAIT,
            || self.messages().len() >= n,
            || format!("{n} mails (got {})", self.messages().len()),
        );
        self.messages()
    }
}
