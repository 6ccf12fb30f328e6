//! One MQTT 3.1.1 connection to the broker, as a publisher: TCP, TLS,
//! websockets or websockets over TLS, from a `mqtt://`, `mqtts://`, `ws://`
//! or `wss://` URL.
//!
//! Packets are encoded and decoded by rumqttc's `mqttbytes`; the session
//! logic (which event a PUBACK acknowledges, what to resend after a
//! reconnect) lives in [`crate::runtime`], so no client library can drop an
//! unacknowledged publish behind our back. Every connection is a clean
//! session: anything unacknowledged is resent from the spool on the next one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::v4::{Connect, LastWill, Login, Packet};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use rumqttc::ConnectReturnCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Largest packet we accept from the broker (we only expect acks).
const MAX_INCOMING: usize = 1024 * 1024;

/// A broker address from `--broker`.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// Websocket path (default `/mqtt`).
    pub path: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// How to reach the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Mqtt,
    Mqtts,
    Ws,
    Wss,
}

impl Scheme {
    fn tls(self) -> bool {
        matches!(self, Scheme::Mqtts | Scheme::Wss)
    }
}

/// Connection and URL errors, each naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("broker URL {0:?}: {1}")]
    Url(String, &'static str),
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("CA file {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("websocket handshake: {0}")]
    Ws(String),
    #[error("broker refused the connection: {0}")]
    Refused(&'static str),
    /// Refused for who we are: retrying cannot help until someone fixes it.
    #[error("broker refused the connection: {0}")]
    AuthRefused(&'static str),
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("broker sent a bad packet: {0:?}")]
    Codec(CodecError),
    #[error("no CONNACK within {0:?}")]
    Timeout(Duration),
    #[error("connection closed by the broker")]
    Closed,
}

impl std::fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// Shows the URL without its password.
impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.scheme {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        };
        write!(f, "{scheme}://")?;
        if let Some(u) = &self.username {
            write!(f, "{u}@")?;
        }
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{host}:{}", self.port)?;
        if matches!(self.scheme, Scheme::Ws | Scheme::Wss) {
            write!(f, "{}", self.path)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for BrokerUrl {
    type Err = MqttError;

    fn from_str(s: &str) -> Result<BrokerUrl, MqttError> {
        let bad = |why| MqttError::Url(redact(s), why);
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| bad("expected mqtt://, mqtts://, ws:// or wss://"))?;
        let scheme = match scheme {
            "mqtt" | "tcp" => Scheme::Mqtt,
            "mqtts" | "ssl" => Scheme::Mqtts,
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            _ => return Err(bad("scheme must be mqtt, mqtts, ws or wss")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (Some(percent_decode(u)), Some(percent_decode(p))),
                None => (Some(percent_decode(u)), None),
            },
            None => (None, None),
        };
        let default_port = match scheme {
            Scheme::Mqtt => 1883,
            Scheme::Mqtts => 8883,
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("port is not a number"))?,
                None => default_port,
            };
            (h.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    p.parse().map_err(|_| bad("port is not a number"))?,
                ),
                None => (hostport.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(BrokerUrl {
            scheme,
            host,
            port,
            path: if path.is_empty() {
                "/mqtt".to_owned()
            } else {
                path.to_owned()
            },
            username,
            password,
        })
    }
}

/// The URL with any password replaced, for error messages.
fn redact(s: &str) -> String {
    match (s.find("://"), s.rfind('@')) {
        (Some(a), Some(b)) if b > a => {
            let userinfo = &s[a + 3..b];
            match userinfo.split_once(':') {
                Some((u, _)) => format!("{}{u}:***{}", &s[..a + 3], &s[b..]),
                None => s.to_owned(),
            }
        }
        _ => s.to_owned(),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Builds the TLS client config: the `--ca` file, or the system's roots.
pub fn tls_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, MqttError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let ca_err = |reason: String| MqttError::Ca {
                path: path.to_owned(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            for c in rustls_pemfile::certs(&mut &pem[..]) {
                let c = c.map_err(|e| ca_err(e.to_string()))?;
                roots.add(c).map_err(|e| ca_err(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca_err("no PEM certificates in the file".into()));
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// What to say in CONNECT.
#[derive(Clone)]
pub struct ConnectOptions {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: Duration,
    /// Retained last will: `(topic, payload)`.
    pub will: Option<(String, Vec<u8>)>,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

enum Io {
    Stream(Box<dyn Stream>),
    Ws(Box<WebSocketStream<Box<dyn Stream>>>),
}

/// An open, accepted (CONNACK 0) connection.
pub struct Connection {
    io: Io,
    buf: BytesMut,
}

impl Connection {
    /// Connects, upgrades (TLS, websocket), sends CONNECT and waits for a
    /// successful CONNACK, all within `timeout`.
    pub async fn open(
        url: &BrokerUrl,
        tls: Option<&Arc<rustls::ClientConfig>>,
        opts: &ConnectOptions,
        timeout: Duration,
    ) -> Result<Connection, MqttError> {
        tokio::time::timeout(timeout, Self::open_inner(url, tls, opts))
            .await
            .map_err(|_| MqttError::Timeout(timeout))?
    }

    async fn open_inner(
        url: &BrokerUrl,
        tls: Option<&Arc<rustls::ClientConfig>>,
        opts: &ConnectOptions,
    ) -> Result<Connection, MqttError> {
        let addr = format!("{}:{}", url.host, url.port);
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|source| MqttError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = if url.scheme.tls() {
            let cfg = tls.ok_or_else(|| MqttError::Tls("no TLS configuration".into()))?;
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| MqttError::Tls(format!("server name {:?}: {e}", url.host)))?;
            let s = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    let e = e.to_string();
                    let hint = if e.contains("UnknownIssuer") {
                        " (the broker's certificate is not signed by a CA we trust: pass --ca FILE)"
                    } else if e.contains("NotValidForName") {
                        " (the certificate does not name this host: use the name it was issued for)"
                    } else {
                        ""
                    };
                    MqttError::Tls(format!("{e}{hint}"))
                })?;
            Box::new(s)
        } else {
            Box::new(tcp)
        };
        let io = match url.scheme {
            Scheme::Ws | Scheme::Wss => {
                let ws_url = format!(
                    "{}://{}:{}{}",
                    if url.scheme.tls() { "wss" } else { "ws" },
                    url.host,
                    url.port,
                    url.path
                );
                let mut req = ws_url
                    .into_client_request()
                    .map_err(|e| MqttError::Ws(e.to_string()))?;
                req.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    tokio_tungstenite::tungstenite::http::HeaderValue::from_static("mqtt"),
                );
                let (ws, _) = tokio_tungstenite::client_async(req, stream)
                    .await
                    .map_err(|e| MqttError::Ws(e.to_string()))?;
                Io::Ws(Box::new(ws))
            }
            _ => Io::Stream(stream),
        };
        let mut conn = Connection {
            io,
            buf: BytesMut::with_capacity(4096),
        };
        let mut connect = Connect::new(opts.client_id.clone());
        connect.keep_alive = opts.keep_alive.as_secs().min(u16::MAX as u64) as u16;
        connect.clean_session = true;
        if let Some(u) = &opts.username {
            connect.login = Some(Login::new(
                u.clone(),
                opts.password.clone().unwrap_or_default(),
            ));
        }
        if let Some((topic, payload)) = &opts.will {
            connect.last_will = Some(LastWill::new(
                topic.clone(),
                payload.clone(),
                QoS::AtLeastOnce,
                true,
            ));
        }
        let mut out = BytesMut::new();
        connect.write(&mut out).map_err(MqttError::Codec)?;
        conn.send(&out).await?;
        loop {
            match conn.recv().await? {
                Packet::ConnAck(ack) => {
                    return match ack.code {
                        ConnectReturnCode::Success => Ok(conn),
                        ConnectReturnCode::RefusedProtocolVersion => {
                            Err(MqttError::Refused("unsupported protocol version"))
                        }
                        ConnectReturnCode::BadClientId => Err(MqttError::Refused(
                            "client id refused (or keepalive above the broker's max_keepalive)",
                        )),
                        ConnectReturnCode::ServiceUnavailable => {
                            Err(MqttError::Refused("server unavailable"))
                        }
                        ConnectReturnCode::BadUserNamePassword => Err(MqttError::AuthRefused(
                            "bad user name or password: check --username/--password-file or the URL",
                        )),
                        ConnectReturnCode::NotAuthorized => Err(MqttError::AuthRefused(
                            "not authorized: the broker does not let this user connect",
                        )),
                    };
                }
                _ => continue,
            }
        }
    }

    /// Writes encoded packets.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), MqttError> {
        match &mut self.io {
            Io::Stream(s) => {
                s.write_all(bytes).await?;
                s.flush().await?;
            }
            Io::Ws(ws) => ws
                .send(Message::Binary(bytes.to_vec()))
                .await
                .map_err(|e| MqttError::Ws(e.to_string()))?,
        }
        Ok(())
    }

    /// The next packet from the broker. Cancel-safe: bytes read before a
    /// cancellation stay in the buffer.
    pub async fn recv(&mut self) -> Result<Packet, MqttError> {
        loop {
            match Packet::read(&mut self.buf, MAX_INCOMING) {
                Ok(p) => return Ok(p),
                Err(CodecError::InsufficientBytes(_)) => {}
                Err(e) => return Err(MqttError::Codec(e)),
            }
            match &mut self.io {
                Io::Stream(s) => {
                    if s.read_buf(&mut self.buf).await? == 0 {
                        return Err(MqttError::Closed);
                    }
                }
                Io::Ws(ws) => match ws.next().await {
                    Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                    Some(Ok(Message::Close(_))) | None => return Err(MqttError::Closed),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(MqttError::Ws(e.to_string())),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u: BrokerUrl = "mqtt://bridge:s%40cret@127.0.0.1:1884".parse().unwrap();
        assert_eq!(u.scheme, Scheme::Mqtt);
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 1884));
        assert_eq!(u.username.as_deref(), Some("bridge"));
        assert_eq!(u.password.as_deref(), Some("s@cret"));
        assert_eq!(
            u.to_string(),
            "mqtt://bridge@127.0.0.1:1884",
            "no password shown"
        );
        let u: BrokerUrl = "wss://[::1]/x".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 443, "/x")
        );
        let u: BrokerUrl = "ws://h".parse().unwrap();
        assert_eq!(u.path, "/mqtt");
        let e = "http://a:b@h".parse::<BrokerUrl>().unwrap_err().to_string();
        assert!(e.contains("a:***@h") && !e.contains(":b@"), "{e}");
        assert!("mqtt://h:x".parse::<BrokerUrl>().is_err());
    }
}
