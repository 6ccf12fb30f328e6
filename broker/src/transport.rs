//! Network listeners and the handshakes in front of MQTT: TLS (rustls) and
//! websocket upgrade over HTTP. Each accepted socket gets its own task, and
//! every handshake runs there under a timeout, so an idle or slow client can
//! never delay anyone else (rumqttd runs them in its accept loop).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A byte stream carrying MQTT, whatever is underneath.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Boxed [`Io`].
pub type BoxIo = Box<dyn Io>;

/// The kinds of listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Mqtt,
    Mqtts,
    Ws,
    Wss,
}

impl Kind {
    /// Label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Mqtt => "mqtt",
            Kind::Mqtts => "mqtts",
            Kind::Ws => "ws",
            Kind::Wss => "wss",
        }
    }
    fn tls(self) -> bool {
        matches!(self, Kind::Mqtts | Kind::Wss)
    }
    fn http(self) -> bool {
        matches!(self, Kind::Ws | Kind::Wss)
    }
}

/// Errors building TLS settings.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("{path}: no {what} found in PEM file")]
    Empty {
        path: std::path::PathBuf,
        what: &'static str,
    },
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Builds the rustls acceptor from PEM files.
pub fn tls_acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<_> = rustls_pemfile::certs(&mut &read_pem(cert)?[..])
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            path: cert.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: cert.to_owned(),
            what: "certificate",
        });
    }
    let key_der = rustls_pemfile::private_key(&mut &read_pem(key)?[..])
        .map_err(|source| TlsError::Read {
            path: key.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::Empty {
            path: key.to_owned(),
            what: "private key",
        })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut &read_pem(ca)?[..]) {
                let c = c.map_err(|source| TlsError::Read {
                    path: ca.to_owned(),
                    source,
                })?;
                roots.add(c).map_err(|e| TlsError::Rustls(e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key_der)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What a finished handshake produced.
pub enum Accepted {
    /// An MQTT byte stream.
    Mqtt(BoxIo),
    /// A plain HTTP request that was answered; nothing more to do.
    Answered,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("HTTP request: {0}")]
    Http(String),
    #[error(
        "websocket upgrade from a page of Origin {0:?}, which ws_allowed_origins does not allow"
    )]
    Origin(String),
    #[error("I/O")]
    Io(#[from] io::Error),
}

/// Answers for plain HTTP requests on websocket listeners.
pub trait HttpHandler: Send + Sync {
    /// Returns (status, content type, body) for `GET path`, or `None` for 404.
    fn get(&self, path: &str) -> Option<(u16, &'static str, String)>;
}

/// What the websocket upgrade checks besides the request itself.
#[derive(Debug, Clone, Copy)]
pub struct WsRules<'a> {
    /// The address the connection arrived at (for the default Origin rule).
    pub local: std::net::IpAddr,
    /// `ws_allowed_origins`.
    pub allowed_origins: &'a [String],
}

/// Runs the TLS and HTTP/websocket handshakes for one accepted socket.
pub async fn handshake(
    kind: Kind,
    tcp: TcpStream,
    tls: Option<&TlsAcceptor>,
    http: &dyn HttpHandler,
    max_packet: usize,
    ws: WsRules<'_>,
) -> Result<Accepted, HandshakeError> {
    let io: BoxIo = match (kind.tls(), tls) {
        (true, Some(acc)) => Box::new(acc.accept(tcp).await.map_err(HandshakeError::Tls)?),
        (true, None) => {
            return Err(HandshakeError::Http(
                "TLS listener without TLS settings".into(),
            ))
        }
        _ => Box::new(tcp),
    };
    if !kind.http() {
        return Ok(Accepted::Mqtt(io));
    }
    upgrade(io, http, max_packet, ws).await
}

const MAX_HEAD: usize = 16 * 1024;

async fn upgrade(
    mut io: BoxIo,
    http: &dyn HttpHandler,
    max_packet: usize,
    ws: WsRules<'_>,
) -> Result<Accepted, HandshakeError> {
    let mut buf = BytesMut::with_capacity(1024);
    let (head_len, req) = loop {
        if io.read_buf(&mut buf).await? == 0 {
            return Err(HandshakeError::Http(
                "connection closed before the request was complete".into(),
            ));
        }
        let mut headers = [httparse::EMPTY_HEADER; 48];
        let mut r = httparse::Request::new(&mut headers);
        match r.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => break (n, Request::from(&r)),
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                respond(&mut io, 431, "text/plain", "request header too large\n").await?;
                return Err(HandshakeError::Http("request header too large".into()));
            }
            Err(e) => {
                respond(&mut io, 400, "text/plain", "bad request\n").await?;
                return Err(HandshakeError::Http(e.to_string()));
            }
        }
    };
    let leftover = buf.split_off(head_len).freeze();

    if !req.wants_websocket() {
        if req.method != "GET" && req.method != "HEAD" {
            respond(&mut io, 405, "text/plain", "method not allowed\n").await?;
            return Ok(Accepted::Answered);
        }
        match http.get(&req.path) {
            Some((status, ctype, body)) => respond(&mut io, status, ctype, &body).await?,
            None => respond(&mut io, 404, "text/plain", "not found\n").await?,
        }
        return Ok(Accepted::Answered);
    }
    let path = req.path.split('?').next().unwrap_or("");
    if path != "/" && path != "/mqtt" {
        respond(
            &mut io,
            404,
            "text/plain",
            "MQTT over websockets is served on / and /mqtt\n",
        )
        .await?;
        return Err(HandshakeError::Http(format!(
            "websocket upgrade on unknown path {path:?}"
        )));
    }
    if !crate::origin::allowed(req.origin.as_deref(), ws.local, ws.allowed_origins) {
        // Refused (and counted) whether or not the page reads the answer.
        let _ = respond(
            &mut io,
            403,
            "text/plain",
            "this page's Origin may not use MQTT over websockets here (see ws_allowed_origins)\n",
        )
        .await;
        return Err(HandshakeError::Origin(req.origin.unwrap_or_default()));
    }
    let Some(key) = req.key.as_deref().filter(|_| req.version13) else {
        respond(
            &mut io,
            400,
            "text/plain",
            "websocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13\n",
        )
        .await?;
        return Err(HandshakeError::Http("incomplete websocket upgrade".into()));
    };
    // Echo exactly one subprotocol the client asked for; none if it asked for none.
    let chosen = if req.protocols.is_empty() {
        None
    } else {
        match req
            .protocols
            .iter()
            .find(|p| p.as_str() == "mqtt" || p.as_str() == "mqttv3.1")
        {
            Some(p) => Some(p.clone()),
            None => {
                respond(
                    &mut io,
                    400,
                    "text/plain",
                    "supported websocket subprotocols: mqtt, mqttv3.1\n",
                )
                .await?;
                return Err(HandshakeError::Http(format!(
                    "unsupported subprotocols {:?}",
                    req.protocols
                )));
            }
        }
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = &chosen {
        resp.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    resp.push_str("\r\n");
    io.write_all(resp.as_bytes()).await?;
    io.flush().await?;
    let config = WebSocketConfig {
        max_message_size: Some(max_packet + 16),
        max_frame_size: Some(max_packet + 16),
        ..Default::default()
    };
    let io: BoxIo = Box::new(Rewind {
        pre: leftover,
        inner: io,
    });
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    Ok(Accepted::Mqtt(Box::new(WsIo::new(ws))))
}

async fn respond(io: &mut BoxIo, status: u16, ctype: &str, body: &str) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    io.write_all(head.as_bytes()).await?;
    io.write_all(body.as_bytes()).await?;
    io.flush().await?;
    let _ = io.shutdown().await;
    Ok(())
}

struct Request {
    method: String,
    path: String,
    upgrade: bool,
    key: Option<String>,
    version13: bool,
    protocols: Vec<String>,
    origin: Option<String>,
}

impl Request {
    fn from(r: &httparse::Request<'_, '_>) -> Request {
        let mut req = Request {
            method: r.method.unwrap_or("").to_owned(),
            path: r.path.unwrap_or("/").to_owned(),
            upgrade: false,
            key: None,
            version13: false,
            protocols: Vec::new(),
            origin: None,
        };
        for h in r.headers.iter() {
            let v = String::from_utf8_lossy(h.value);
            let name = h.name.to_ascii_lowercase();
            match name.as_str() {
                "upgrade" => req.upgrade |= v.to_ascii_lowercase().contains("websocket"),
                "sec-websocket-key" => req.key = Some(v.trim().to_owned()),
                "sec-websocket-version" => req.version13 = v.trim() == "13",
                "origin" => req.origin = Some(v.trim().to_owned()),
                "sec-websocket-protocol" => req.protocols.extend(
                    v.split(',')
                        .map(|p| p.trim().to_owned())
                        .filter(|p| !p.is_empty()),
                ),
                _ => {}
            }
        }
        req
    }
    fn wants_websocket(&self) -> bool {
        self.upgrade
    }
}

/// Yields `pre` before reading from `inner`: bytes a client sent right
/// behind its HTTP request must not be lost.
struct Rewind {
    pre: Bytes,
    inner: BoxIo,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// MQTT bytes over websocket binary frames, as a byte stream: a frame may
/// hold part of a packet or several packets, in both directions.
pub struct WsIo {
    ws: WebSocketStream<BoxIo>,
    pending: Bytes,
}

impl WsIo {
    fn new(ws: WebSocketStream<BoxIo>) -> WsIo {
        WsIo {
            ws,
            pending: Bytes::new(),
        }
    }
}

fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl AsyncRead for WsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(ws_err(e))),
                Some(Ok(Message::Binary(b))) => self.pending = Bytes::from(b),
                Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over websockets must use binary frames",
                    )))
                }
                Some(Ok(_)) => continue, // ping/pong: tungstenite answers pings itself
            }
        }
    }
}

impl AsyncWrite for WsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_err)?;
        Pin::new(&mut self.ws)
            .start_send(Message::binary(buf.to_vec()))
            .map_err(ws_err)?;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(ws_err)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(ws_err)
    }
}

/// Binds a listener, naming the address in the error.
pub async fn bind(addr: SocketAddr, kind: Kind) -> io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen for {} on {addr}: {e}", kind.as_str()),
        )
    })
}
