//! Fetching a job's stream as the original worker did: `source_url +
//! ".gz"` first, then `source_url`; gunzipped when the server says gzip
//! (content type or encoding) or the bytes start with gzip's magic; at most
//! a configured size, within a timeout.

use std::io::Read;
use std::time::Duration;

/// Why a stream could not be fetched; each names the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: only http:// and https:// streams are fetched")]
    Scheme { url: String },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: larger than --max-stream-bytes {max}")]
    TooLarge { url: String, max: usize },
    #[error("{url}: not gzip although it says so")]
    Gzip {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS for fetching streams")]
    Tls(#[source] firehose::tls::TlsError),
}

/// An HTTP client for streams.
pub struct Fetcher {
    http: reqwest::Client,
    max: usize,
}

impl Fetcher {
    pub fn new(timeout: Duration, max: usize) -> Result<Fetcher, FetchError> {
        let tls = firehose::tls::client_config(None).map_err(FetchError::Tls)?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .use_preconfigured_tls((*tls).clone())
            .build()
            .map_err(|source| FetchError::Http {
                url: String::new(),
                source,
            })?;
        Ok(Fetcher { http, max })
    }

    /// The stream at `source_url` (its `.gz` first), decompressed.
    pub async fn stream(&self, source_url: &str) -> Result<Vec<u8>, FetchError> {
        if !(source_url.starts_with("http://") || source_url.starts_with("https://")) {
            return Err(FetchError::Scheme {
                url: source_url.to_owned(),
            });
        }
        match self.get(&format!("{source_url}.gz")).await {
            Ok(b) => Ok(b),
            Err(first) => {
                tracing::debug!(error = %first, "no .gz stream; fetching the plain one");
                self.get(source_url).await
            }
        }
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let http = |source| FetchError::Http {
            url: url.to_owned(),
            source,
        };
        let mut resp = self
            .http
            .get(url)
            .header("Accept-Encoding", "gzip")
            .send()
            .await
            .map_err(http)?;
        if !resp.status().is_success() {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: resp.status().as_u16(),
            });
        }
        let says_gzip = ["content-type", "content-encoding"].iter().any(|h| {
            resp.headers()
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("gzip"))
        });
        let too_large = || FetchError::TooLarge {
            url: url.to_owned(),
            max: self.max,
        };
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(http)? {
            if body.len() + chunk.len() > self.max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        if !(says_gzip || body.starts_with(&[0x1f, 0x8b])) {
            return Ok(body);
        }
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&body[..])
            .take(self.max as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|source| FetchError::Gzip {
                url: url.to_owned(),
                source,
            })?;
        if out.len() > self.max {
            return Err(too_large());
        }
        Ok(out)
    }
}
