//! Prometheus metrics, one way for every binary of the suite: the text
//! exposition ([`Exposition`]: `# HELP`, `# TYPE`, samples, label values
//! escaped) and the small `/metrics` + `/healthz` endpoint the bridges and
//! firehose-notify serve ([`serve`]; the broker and firehose-history answer
//! `/metrics` on HTTP servers they already run, with the same writer).
//!
//! Not the `prometheus-client` crate: every counter here is already an
//! atomic owned by the component that counts (the broker's hot path stays
//! one relaxed add), and what each binary needs from a registry is these
//! sixty lines of text; a registry would mean a second copy of each
//! counter or wrapping every one in the crate's types.

use std::fmt::{Display, Write as _};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A metric's type line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets with the process).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// The text exposition of one scrape, every name under one prefix
/// (`firehose_broker`, `firehose_bridge`, ...).
#[derive(Debug)]
pub struct Exposition {
    prefix: &'static str,
    out: String,
}

impl Exposition {
    /// An empty exposition whose metric names start with `prefix_`.
    pub fn new(prefix: &'static str) -> Exposition {
        Exposition {
            prefix,
            out: String::new(),
        }
    }

    /// A metric with one sample and no labels.
    pub fn one(&mut self, name: &str, kind: Kind, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A metric's `# HELP` and `# TYPE` lines; its samples follow
    /// ([`Exposition::sample`]).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let p = self.prefix;
        let _ = writeln!(self.out, "# HELP {p}_{name} {help}");
        let _ = writeln!(self.out, "# TYPE {p}_{name} {}", kind.as_str());
    }

    /// One sample, `name{label="value",...} value`; label values escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        let _ = write!(self.out, "{}_{name}", self.prefix);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// The text to answer a scrape with.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A label value as the exposition format writes it.
pub fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` (the text `render` makes at each scrape) and
/// `GET /healthz` (`ok`) until the process ends. Deliberately tiny: one
/// request per connection, its head bounded in size (8 KiB) and time (5 s).
pub async fn serve<F>(listener: TcpListener, render: F)
where
    F: Fn() -> String + Send + Sync + Clone + 'static,
{
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            // Out of descriptors, most likely: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
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
            let (code, body) = match path.split('?').next().unwrap_or(path) {
                "/metrics" => ("200 OK", render()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaped_labels() {
        let mut e = Exposition::new("firehose_x");
        e.one("up", Kind::Gauge, "Up.", 1);
        e.family("sent_total", Kind::Counter, "Sent, by target.");
        e.sample("sent_total", &[("target", "a\"b\\c\nd")], 3);
        e.sample("sent_total", &[("target", "t"), ("rule", "r")], 4);
        assert_eq!(
            e.finish(),
            "# HELP firehose_x_up Up.\n# TYPE firehose_x_up gauge\nfirehose_x_up 1\n\
             # HELP firehose_x_sent_total Sent, by target.\n# TYPE firehose_x_sent_total counter\n\
             firehose_x_sent_total{target=\"a\\\"b\\\\c\\nd\"} 3\n\
             firehose_x_sent_total{target=\"t\",rule=\"r\"} 4\n"
        );
    }

    #[tokio::test]
    async fn the_endpoint_answers_metrics_health_and_404() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, || "x_total 1\n".to_owned()));
        for (path, want) in [
            ("/metrics", "x_total 1\n"),
            ("/healthz", "ok\n"),
            ("/nope", "try /metrics"),
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).await.unwrap();
            assert!(got.contains(want), "{path}: {got}");
        }
    }
}
