//! Bare MQTT 3.1.1 clients for the connection-heavy cases: a CONNECT and a
//! SUBSCRIBE (built by the test kit's packet builders), the CONNACK and
//! SUBACK read back, nothing else. A full client per connection would measure the client, not the
//! broker, at 10,000 and more connections.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use futures_util::stream::{self, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::Target;

/// Connections opened at once.
const PARALLEL: usize = 200;

/// Connects from `127.0.0.<source>`, sends CONNECT + SUBSCRIBE, and waits
/// for CONNACK (accepted) and SUBACK.
async fn subscribe_one(t: &Target, source: u8, id: &str, filter: &str) -> Result<TcpStream> {
    let host: Ipv4Addr = t
        .host
        .parse()
        .context("--host must be an IPv4 address here")?;
    let sock = TcpSocket::new_v4()?;
    if source != 1 {
        // Only to reach past one address's ephemeral ports: binding to an
        // address with port 0 searches the port space, slowly.
        sock.set_reuseaddr(true)?;
        sock.bind(SocketAddr::from(([127, 0, 0, source], 0)))?;
    }
    let mut s = sock.connect(SocketAddr::from((host, t.port))).await?;
    // Keepalive 600 s: idle for the whole measurement without a PINGREQ.
    let mut out = firehose_testkit::raw::connect(4, id, 600, true, None);
    out.extend(firehose_testkit::raw::subscribe(4, 1, filter, 0));
    s.write_all(&out).await?;
    let mut got = [0u8; 9];
    s.read_exact(&mut got).await?;
    if got[0] != 0x20 || got[3] != 0 {
        bail!("connection refused: CONNACK {:02x?}", &got[..4]);
    }
    if got[4] != 0x90 || got[8] >= 0x80 {
        bail!("subscription refused: SUBACK {:02x?}", &got[4..]);
    }
    Ok(s)
}

/// Opens `n` idle subscribers, each with its own filter, spread over
/// `sources` loopback addresses from `127.0.0.<first>`.
pub async fn open_idle(
    t: &Target,
    n: usize,
    (first, sources): (u8, u8),
    tag: &str,
    deadline: Instant,
) -> Result<Vec<TcpStream>> {
    let sources = sources.max(1);
    let results: Vec<Result<TcpStream>> = stream::iter(0..n)
        .map(|i| {
            let source = first
                .max(1)
                .wrapping_add((i % sources as usize) as u8)
                .max(1);
            let id = format!("{tag}-{i}");
            let filter = format!("idle/{tag}/{i}/#");
            async move {
                tokio::time::timeout_at(deadline.into(), subscribe_one(t, source, &id, &filter))
                    .await
                    .map_err(|_| anyhow::anyhow!("timed out"))?
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let mut conns = Vec::with_capacity(n);
    for r in results {
        conns.push(r.with_context(|| format!("opening {n} idle clients"))?);
    }
    Ok(conns)
}

/// Leaves cleanly: DISCONNECT, so the broker closes first and the
/// client's ports do not linger in TIME_WAIT.
pub async fn disconnect_all(conns: Vec<TcpStream>) {
    let bye = conns.into_iter().map(|mut s| async move {
        let _ = s.write_all(&[0xE0, 0]).await;
        let mut rest = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    });
    stream::iter(bye)
        .buffer_unordered(PARALLEL)
        .collect::<Vec<()>>()
        .await;
}

/// `n` short connections, `parallel` at a time, each subscribing a random
/// filter and leaving with DISCONNECT. Returns how many completed.
pub async fn churn(t: &Target, n: usize, parallel: usize, deadline: Instant) -> Result<usize> {
    let done: Vec<bool> = stream::iter(0..n)
        .map(|i| async move {
            let id = format!("churn-{i}-{:08x}", rand_u32());
            let filter = format!("churn/{:x}/+/{:x}", rand_u32() % 4096, rand_u32());
            let one = async {
                let mut s = subscribe_one(t, 1 + (i % 8) as u8, &id, &filter).await?;
                s.write_all(&[0xE0, 0]).await?;
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).await?;
                Ok::<_, anyhow::Error>(())
            };
            matches!(
                tokio::time::timeout_at(deadline.into(), one).await,
                Ok(Ok(()))
            )
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    Ok(done.into_iter().filter(|d| *d).count())
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish() as u32
}

/// A bare subscriber for the latency case: CONNECT, SUBSCRIBE at QoS 0,
/// TCP_NODELAY, nothing else.
pub async fn subscriber(t: &Target, id: &str, filter: &str) -> Result<TcpStream> {
    let s = subscribe_one(t, 1, id, filter).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A bare publisher: CONNECT (with the target's credentials) and CONNACK.
pub async fn publisher(t: &Target, id: &str) -> Result<TcpStream> {
    let mut s = TcpStream::connect((t.host.as_str(), t.port)).await?;
    s.set_nodelay(true)?;
    let login = t.username.as_deref().zip(t.password.as_deref());
    s.write_all(&firehose_testkit::raw::connect(4, id, 600, true, login))
        .await?;
    let mut got = [0u8; 4];
    s.read_exact(&mut got).await?;
    if got[0] != 0x20 || got[3] != 0 {
        bail!("publisher refused: CONNACK {got:02x?}");
    }
    Ok(s)
}

/// Reads QoS 0 PUBLISH packets from `s` until `expected` arrived or the
/// deadline, passing each payload to `on_payload`. Returns how many arrived.
pub async fn read_publishes(
    mut s: TcpStream,
    expected: u64,
    deadline: Instant,
    mut on_payload: impl FnMut(&[u8]),
) -> u64 {
    let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
    let mut got = 0u64;
    while got < expected {
        // Whole packets in the buffer first.
        while let Some((first, body, len)) = split_packet(&buf) {
            if first >> 4 == 3 && body.len() >= 2 {
                let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
                if let Some(p) = body.get(2 + tlen..) {
                    on_payload(p);
                    got += 1;
                }
            }
            let _ = buf.split_to(len);
        }
        if got >= expected {
            break;
        }
        match tokio::time::timeout_at(deadline.into(), s.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
    }
    let _ = s.write_all(&[0xE0, 0]).await;
    got
}

/// The first whole packet of `b`: (first byte, body, total length).
pub(crate) fn split_packet(b: &[u8]) -> Option<(u8, &[u8], usize)> {
    let mut len = 0usize;
    let mut i = 1;
    loop {
        let byte = *b.get(i)?;
        len |= ((byte & 0x7f) as usize) << (7 * (i - 1));
        i += 1;
        if byte & 0x80 == 0 || i > 4 {
            break;
        }
    }
    let body = b.get(i..i + len)?;
    Some((b[0], body, i + len))
}
