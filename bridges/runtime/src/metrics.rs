//! `--metrics ADDR`: Prometheus text on `/metrics` and a liveness answer on
//! `/healthz`. Deliberately tiny: one request per connection, bounded reads.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::stats::Stats;

/// Serves until the process ends.
pub async fn serve(listener: TcpListener, stats: Arc<Stats>, bridge: &'static str) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            // Read the request head (bounded in size and time).
            let mut req = Vec::with_capacity(1024);
            let head = async {
                let mut chunk = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => req.extend_from_slice(&chunk[..n]),
                    }
                }
                true
            };
            if !matches!(
                tokio::time::timeout(Duration::from_secs(5), head).await,
                Ok(true)
            ) {
                return;
            }
            let line = String::from_utf8_lossy(&req);
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let (code, body) = match path {
                "/metrics" => ("200 OK", stats.prometheus(bridge)),
                "/healthz" => ("200 OK", "ok\n".to_owned()),
                _ => ("404 Not Found", "try /metrics or /healthz\n".to_owned()),
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
