//! One MQTT connection to the broker, as a publisher: TCP, TLS, websockets
//! or websockets over TLS, from a `mqtt://`, `mqtts://`, `ws://` or
//! `wss://` URL. MQTT 5 first, so a PUBACK can say "not authorized" (a
//! 3.1.1 PUBACK cannot: a denied publish looks delivered); 3.1.1 when the
//! broker does not speak 5.
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
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
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

/// Why a PUBLISH could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("topic of {0} bytes is longer than MQTT allows (65,535)")]
    TopicTooLong(usize),
    #[error("the packet codec refused it: {0}")]
    Codec(String),
}

/// Connection and URL errors, each naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("broker URL")]
    Url(#[from] crate::url::UrlError),
    #[error("cannot reach {addr}")]
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
    #[error("connection lost")]
    Io(#[from] std::io::Error),
    #[error("broker sent a bad packet: {0:?}")]
    Codec(CodecError),
    #[error("broker sent a bad packet: {0}")]
    Codec5(String),
    #[error("no CONNACK within {0:?}")]
    Timeout(Duration),
    #[error("connection closed by the broker")]
    Closed,
    #[error("the broker disconnected us: 0x{0:02x} {1}")]
    Disconnected(u8, &'static str),
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
        let e = crate::url::parse(s, crate::url::MQTT_SCHEMES, crate::url::MQTT_FORM)
            .map_err(MqttError::Url)?;
        let scheme = match e.scheme.as_str() {
            "mqtt" | "tcp" => Scheme::Mqtt,
            "mqtts" | "ssl" => Scheme::Mqtts,
            "ws" => Scheme::Ws,
            _ => Scheme::Wss,
        };
        Ok(BrokerUrl {
            scheme,
            host: e.host,
            port: e.port,
            path: match e.path.as_str() {
                "" | "/" => "/mqtt".to_owned(),
                p => p.to_owned(),
            },
            username: e.user,
            password: e.password,
        })
    }
}

/// Builds the TLS client config: the `--ca` file, or the system's roots.
pub fn tls_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, MqttError> {
    firehose::tls::client_config(ca).map_err(|e| match e {
        firehose::tls::TlsError::Ca { path, reason } => MqttError::Ca { path, reason },
        firehose::tls::TlsError::Rustls(r) => MqttError::Tls(r),
    })
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

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V5,
    V311,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V5 => "5",
            Version::V311 => "3.1.1",
        })
    }
}

/// What the broker sent that a publisher cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// `reason` is the MQTT 5 reason code (always 0 in 3.1.1): 0x80 and
    /// above mean the publish was refused.
    PubAck {
        pkid: u16,
        reason: u8,
        why: Option<String>,
    },
    PingResp,
    /// An MQTT 5 DISCONNECT: the reason.
    Disconnect(u8),
    Other,
}

/// The name of a PUBACK / DISCONNECT reason code, for logs and dead letters.
pub fn reason_name(code: u8) -> &'static str {
    match code {
        0x00 => "success",
        0x10 => "no matching subscribers",
        0x80 => "unspecified error",
        0x83 => "implementation specific error",
        0x87 => "not authorized",
        0x8B => "server shutting down",
        0x90 => "topic name invalid",
        0x91 => "packet identifier in use",
        0x95 => "packet too large",
        0x97 => "quota exceeded",
        0x99 => "payload format invalid",
        _ => "refused",
    }
}

/// An open, accepted (CONNACK 0) connection.
pub struct Connection {
    io: Io,
    buf: BytesMut,
    version: Version,
    /// The broker's Receive Maximum (MQTT 5): publishes in flight at most.
    pub receive_max: Option<u16>,
    /// The broker's Maximum Packet Size (MQTT 5).
    pub max_packet: Option<u32>,
}

/// How one CONNECT attempt ended.
enum Attempt {
    Accepted(Connection),
    /// The broker does not speak this version: try the older one.
    WrongVersion,
}

impl Connection {
    /// Connects, upgrades (TLS, websocket), sends CONNECT (MQTT 5, then
    /// 3.1.1 on a fresh connection if the broker does not speak 5) and waits
    /// for a successful CONNACK, all within `timeout`.
    pub async fn open(
        url: &BrokerUrl,
        tls: Option<&Arc<rustls::ClientConfig>>,
        opts: &ConnectOptions,
        timeout: Duration,
    ) -> Result<Connection, MqttError> {
        tokio::time::timeout(timeout, async {
            for version in [Version::V5, Version::V311] {
                let io = Self::transport(url, tls).await?;
                match Self::handshake(io, opts, version).await? {
                    Attempt::Accepted(c) => return Ok(c),
                    Attempt::WrongVersion => {
                        tracing::info!(broker = %url, "the broker does not speak MQTT 5; using 3.1.1 (a refused publish cannot be told from a delivered one)");
                    }
                }
            }
            Err(MqttError::Refused("unsupported protocol version (neither 5 nor 3.1.1)"))
        })
        .await
        .map_err(|_| MqttError::Timeout(timeout))?
    }

    /// The protocol this connection speaks.
    pub fn version(&self) -> Version {
        self.version
    }

    /// TCP, then TLS and the websocket upgrade as the URL says.
    async fn transport(
        url: &BrokerUrl,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<Io, MqttError> {
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
        Ok(io)
    }

    /// Sends CONNECT in `version` and reads the CONNACK.
    async fn handshake(
        io: Io,
        opts: &ConnectOptions,
        version: Version,
    ) -> Result<Attempt, MqttError> {
        let mut conn = Connection {
            io,
            buf: BytesMut::with_capacity(4096),
            version,
            receive_max: None,
            max_packet: None,
        };
        let keep_alive = opts.keep_alive.as_secs().min(u16::MAX as u64) as u16;
        let mut out = BytesMut::new();
        match version {
            Version::V5 => {
                let connect = v5::Connect {
                    keep_alive,
                    client_id: opts.client_id.clone(),
                    clean_start: true,
                    properties: None,
                };
                let will = opts.will.as_ref().map(|(topic, payload)| {
                    v5::LastWill::new(
                        topic.clone(),
                        payload.clone(),
                        QoS5::AtLeastOnce,
                        true,
                        None,
                    )
                });
                let login = opts
                    .username
                    .as_ref()
                    .map(|u| v5::Login::new(u.clone(), opts.password.clone().unwrap_or_default()));
                v5::Packet::Connect(connect, will, login)
                    .write(&mut out, None)
                    .map_err(|e| MqttError::Codec5(format!("{e:?}")))?;
            }
            Version::V311 => {
                let mut connect = v4::Connect::new(opts.client_id.clone());
                connect.keep_alive = keep_alive;
                connect.clean_session = true;
                if let Some(u) = &opts.username {
                    connect.login = Some(v4::Login::new(
                        u.clone(),
                        opts.password.clone().unwrap_or_default(),
                    ));
                }
                if let Some((topic, payload)) = &opts.will {
                    connect.last_will = Some(v4::LastWill::new(
                        topic.clone(),
                        payload.clone(),
                        QoS::AtLeastOnce,
                        true,
                    ));
                }
                connect.write(&mut out).map_err(MqttError::Codec)?;
            }
        }
        conn.send(&out).await?;
        // A 3.1.1-only broker answers a v5 CONNECT with a 3.1.1 CONNACK
        // (0x20 0x02 flags 0x01), or just closes.
        let first = match conn.fill().await {
            Ok(()) => conn.buf.clone(),
            Err(MqttError::Closed) if version == Version::V5 => return Ok(Attempt::WrongVersion),
            Err(e) => return Err(e),
        };
        if version == Version::V5 && first.len() >= 4 && first[0] == 0x20 && first[1] == 0x02 {
            if first[3] == 0x01 {
                return Ok(Attempt::WrongVersion);
            }
            conn.version = Version::V311;
        }
        loop {
            if conn.version == Version::V311 {
                match conn.read_v4().await? {
                    v4::Packet::ConnAck(ack) => {
                        return v4_connack(ack.code).map(|()| Attempt::Accepted(conn))
                    }
                    _ => continue,
                }
            }
            match conn.read_v5().await? {
                v5::Packet::ConnAck(ack) => {
                    if let Some(p) = &ack.properties {
                        conn.receive_max = p.receive_max;
                        conn.max_packet = p.max_packet_size;
                    }
                    return v5_connack(ack.code).map(|()| Attempt::Accepted(conn));
                }
                _ => continue,
            }
        }
    }

    /// Encodes a PUBLISH (QoS 1 with `pkid`, or QoS 0 when `pkid` is 0).
    /// Nothing is written to `out` when it cannot be encoded.
    pub fn encode_publish(
        &self,
        topic: &str,
        payload: bytes::Bytes,
        retain: bool,
        pkid: u16,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        // MQTT strings carry a 16-bit length: a longer topic would be cut.
        if topic.len() > u16::MAX as usize {
            return Err(EncodeError::TopicTooLong(topic.len()));
        }
        let start = out.len();
        let qos = if pkid == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let written = match self.version {
            Version::V5 => {
                let qos = if pkid == 0 {
                    QoS5::AtMostOnce
                } else {
                    QoS5::AtLeastOnce
                };
                let mut p = v5::Publish::new(topic, qos, payload, None);
                p.retain = retain;
                p.pkid = pkid;
                p.write(out).map(drop).map_err(|e| format!("{e:?}"))
            }
            Version::V311 => {
                let mut p = v4::Publish::from_bytes(topic, qos, payload);
                p.retain = retain;
                p.pkid = pkid;
                p.write(out).map(drop).map_err(|e| format!("{e:?}"))
            }
        };
        written.map_err(|e| {
            out.truncate(start);
            EncodeError::Codec(e)
        })
    }

    /// Encodes a PINGREQ.
    pub fn encode_ping(&self, out: &mut BytesMut) {
        let _ = v4::PingReq.write(out);
    }

    /// Encodes a normal DISCONNECT (the will is not sent).
    pub fn encode_disconnect(&self, out: &mut BytesMut) {
        match self.version {
            Version::V5 => {
                let _ =
                    v5::Disconnect::new(v5::DisconnectReasonCode::NormalDisconnection).write(out);
            }
            Version::V311 => {
                let _ = v4::Disconnect.write(out);
            }
        }
    }

    /// Closes without losing what is in flight: our side is shut first,
    /// then what the broker still sends is read until it closes too (1 s at
    /// most). Dropping a socket with unread input makes the kernel send a
    /// reset, and a reset makes the broker's kernel drop what it had not
    /// read yet: our last status message and DISCONNECT.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            match &mut self.io {
                Io::Stream(s) => {
                    let _ = s.shutdown().await;
                    let mut sink = [0u8; 4096];
                    while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                }
                Io::Ws(ws) => {
                    let _ = (**ws).close(None).await;
                    while let Some(Ok(_)) = ws.next().await {}
                }
            }
        })
        .await;
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
    pub async fn recv(&mut self) -> Result<Incoming, MqttError> {
        Ok(match self.version {
            Version::V311 => match self.read_v4().await? {
                v4::Packet::PubAck(a) => Incoming::PubAck {
                    pkid: a.pkid,
                    reason: 0,
                    why: None,
                },
                v4::Packet::PingResp => Incoming::PingResp,
                _ => Incoming::Other,
            },
            Version::V5 => match self.read_v5().await? {
                v5::Packet::PubAck(a) => Incoming::PubAck {
                    pkid: a.pkid,
                    reason: puback_code(&a.reason),
                    why: a.properties.and_then(|p| p.reason_string),
                },
                v5::Packet::PingResp(_) => Incoming::PingResp,
                v5::Packet::Disconnect(d) => Incoming::Disconnect(d.reason_code as u8),
                _ => Incoming::Other,
            },
        })
    }

    async fn read_v4(&mut self) -> Result<v4::Packet, MqttError> {
        loop {
            match v4::Packet::read(&mut self.buf, MAX_INCOMING) {
                Ok(p) => return Ok(p),
                Err(CodecError::InsufficientBytes(_)) => self.fill().await?,
                Err(e) => return Err(MqttError::Codec(e)),
            }
        }
    }

    async fn read_v5(&mut self) -> Result<v5::Packet, MqttError> {
        loop {
            match v5::Packet::read(&mut self.buf, Some(MAX_INCOMING as u32)) {
                Ok(p) => return Ok(p),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => self.fill().await?,
                Err(e) => return Err(MqttError::Codec5(format!("{e:?}"))),
            }
        }
    }

    /// Reads more bytes into the buffer.
    async fn fill(&mut self) -> Result<(), MqttError> {
        match &mut self.io {
            Io::Stream(s) => {
                if s.read_buf(&mut self.buf).await? == 0 {
                    return Err(MqttError::Closed);
                }
            }
            Io::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        self.buf.extend_from_slice(&b);
                        break;
                    }
                    Some(Ok(Message::Close(_))) | None => return Err(MqttError::Closed),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(MqttError::Ws(e.to_string())),
                }
            },
        }
        Ok(())
    }
}

fn v4_connack(code: ConnectReturnCode) -> Result<(), MqttError> {
    match code {
        ConnectReturnCode::Success => Ok(()),
        ConnectReturnCode::RefusedProtocolVersion => {
            Err(MqttError::Refused("unsupported protocol version"))
        }
        ConnectReturnCode::BadClientId => Err(MqttError::Refused(
            "client id refused (or keepalive above the broker's max_keepalive)",
        )),
        ConnectReturnCode::ServiceUnavailable => Err(MqttError::Refused("server unavailable")),
        ConnectReturnCode::BadUserNamePassword => Err(MqttError::AuthRefused(
            "bad user name or password: check --username/--password-file or the URL",
        )),
        ConnectReturnCode::NotAuthorized => Err(MqttError::AuthRefused(
            "not authorized: the broker does not let this user connect",
        )),
    }
}

fn v5_connack(code: v5::ConnectReturnCode) -> Result<(), MqttError> {
    use v5::ConnectReturnCode as C;
    match code {
        C::Success => Ok(()),
        C::BadUserNamePassword => Err(MqttError::AuthRefused(
            "bad user name or password: check --username/--password-file or the URL",
        )),
        C::NotAuthorized | C::Banned | C::BadAuthenticationMethod => Err(MqttError::AuthRefused(
            "not authorized: the broker does not let this user connect",
        )),
        C::ClientIdentifierNotValid => Err(MqttError::Refused(
            "client id refused (or keepalive above the broker's max_keepalive)",
        )),
        C::ServerUnavailable
        | C::ServerBusy
        | C::ServiceUnavailable
        | C::ConnectionRateExceeded
        | C::QuotaExceeded => Err(MqttError::Refused("server unavailable or busy")),
        _ => Err(MqttError::Refused("refused (MQTT 5 CONNACK)")),
    }
}

/// A v5 PUBACK reason as its code.
fn puback_code(r: &v5::PubAckReason) -> u8 {
    use v5::PubAckReason as R;
    match r {
        R::Success => 0x00,
        R::NoMatchingSubscribers => 0x10,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicNameInvalid => 0x90,
        R::PacketIdentifierInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::PayloadFormatInvalid => 0x99,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3.1.1-only broker: refuses a v5 CONNECT with a 3.1.1 CONNACK 0x01
    /// (as mosquitto 1.5 did), accepts a 3.1.1 one. The bridge falls back.
    #[tokio::test]
    async fn falls_back_to_3_1_1_when_the_broker_does_not_speak_5() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let broker = tokio::spawn(async move {
            let mut levels = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 9 && buf[0] == 0x10, "a CONNECT");
                // Fixed header (2), protocol name (2 + 4), then the level.
                let level = buf[8];
                levels.push(level);
                let code = if level == 5 { 0x01 } else { 0x00 };
                s.write_all(&[0x20, 0x02, 0x00, code]).await.unwrap();
                if level == 4 {
                    // Hold the connection until the client is done.
                    let _ = s.read(&mut buf).await;
                    break;
                }
            }
            levels
        });
        let url: BrokerUrl = format!("mqtt://{addr}").parse().unwrap();
        let opts = ConnectOptions {
            client_id: "fallback-test".into(),
            username: None,
            password: None,
            keep_alive: Duration::from_secs(30),
            will: None,
        };
        let conn = Connection::open(&url, None, &opts, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(conn.version(), Version::V311);
        drop(conn);
        assert_eq!(broker.await.unwrap(), vec![5, 4]);
    }

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
        let e = firehose::report::error_chain(&"http://a:b@h".parse::<BrokerUrl>().unwrap_err());
        assert!(e.contains("a:***@h") && !e.contains(":b@"), "{e}");
        assert!("mqtt://h:x".parse::<BrokerUrl>().is_err());
    }
}
