//! Hostile readers (issue #18), as bare MQTT clients: what one anonymous
//! client can do to a public bus on purpose.
//!
//! - `slow-ack`: MQTT 5, Receive Maximum 1, subscribes `load/#` at QoS 1 and
//!   acknowledges one message every 90 ms;
//! - `no-ack`: the same, reading everything and acknowledging nothing;
//! - `no-read`: the same subscription, then never reads its socket.
//!
//! And the SUBSCRIBE flood: one client sends SUBSCRIBEs that repeat `#`
//! thousands of times each, and never reads.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Target;

/// How a hostile reader treats what it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Manner {
    SlowAck,
    NoAck,
    NoRead,
    /// Not hostile: the broker's window, every message acknowledged at
    /// once. What the same number of honest readers of `#` cost.
    Polite,
}

/// The gap between two acknowledgements of a `slow-ack` reader.
const ACK_GAP: Duration = Duration::from_millis(90);

/// Reads one packet's first byte and body from `buf`, refilling it from
/// `s` as needed; `None` once the broker closed.
async fn next_packet(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    loop {
        if let Some((first, body, len)) = crate::raw::split_packet(buf) {
            let body = body.to_vec();
            buf.drain(..len);
            return Some((first, body));
        }
        let mut tmp = [0u8; 16 * 1024];
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

/// Connects a hostile reader and waits for its CONNACK and SUBACK.
async fn connect(t: &Target, id: &str, manner: Manner) -> Result<TcpStream> {
    let mut s = TcpStream::connect((t.host.as_str(), t.port)).await?;
    s.set_nodelay(true)?;
    // Receive Maximum 1: one QoS 1 message in flight at a time.
    let props: &[u8] = if manner == Manner::Polite {
        &[]
    } else {
        &[0x21, 0, 1]
    };
    let mut out = firehose_testkit::raw::connect5_with(id, true, 0, props, None, None);
    out.extend(firehose_testkit::raw::subscribe(5, 1, "load/#", 1));
    s.write_all(&out).await?;
    let mut buf = Vec::new();
    for want in [0x20u8, 0x90] {
        match next_packet(&mut s, &mut buf).await {
            Some((b, body)) if b == want => {
                if want == 0x20 && body.get(1).is_some_and(|c| *c >= 0x80) {
                    bail!("{id}: CONNACK refused {:02x?}", body);
                }
            }
            other => bail!("{id}: expected {want:#04x}, got {other:?}"),
        }
    }
    Ok(s)
}

/// `n` hostile readers behaving in `manner` until `stop` or `deadline`.
pub async fn readers(
    t: &Target,
    n: usize,
    manner: Manner,
    stop: Arc<AtomicBool>,
    deadline: Instant,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut s = connect(t, &format!("hostile-{i}"), manner)
            .await
            .with_context(|| format!("hostile reader {i}"))?;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = Vec::new();
            while !stop.load(Relaxed) && Instant::now() < deadline {
                match manner {
                    // Holds the socket, unread, until the case ends (the
                    // task is aborted then) or its deadline.
                    Manner::NoRead => tokio::time::sleep_until(deadline.into()).await,
                    Manner::NoAck | Manner::SlowAck | Manner::Polite => {
                        let next = tokio::time::timeout(
                            Duration::from_millis(200),
                            next_packet(&mut s, &mut buf),
                        )
                        .await;
                        let (first, body) = match next {
                            Ok(Some(p)) => p,
                            Ok(None) => return,
                            Err(_) => continue,
                        };
                        let acks = matches!(manner, Manner::SlowAck | Manner::Polite);
                        if acks && first & 0xf0 == 0x30 && body.len() >= 4 {
                            let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                            let Some(id) = body.get(2 + tl..4 + tl) else {
                                continue;
                            };
                            if manner == Manner::SlowAck {
                                tokio::time::sleep(ACK_GAP).await;
                            }
                            if s.write_all(&[0x40, 2, id[0], id[1]]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }));
    }
    Ok(tasks)
}

/// The SUBSCRIBE flood: `packets` SUBSCRIBEs, each repeating `#` `repeat`
/// times, from one client that never reads. Returns its socket (kept open
/// by the caller while memory is measured).
pub async fn subscribe_flood(t: &Target, packets: u16, repeat: usize) -> Result<TcpStream> {
    let mut s = TcpStream::connect((t.host.as_str(), t.port)).await?;
    let mut out = firehose_testkit::raw::connect(4, "sub-flood", 600, true, None);
    let filters = vec!["#"; repeat];
    for p in 0..packets {
        out.extend(firehose_testkit::raw::subscribe_many(4, p + 1, &filters));
    }
    s.write_all(&out).await?;
    Ok(s)
}
