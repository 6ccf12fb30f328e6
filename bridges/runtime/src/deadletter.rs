//! Dead letters: source input that could not become an event (not JSON,
//! not UTF-8, cut off, too large, ...) is appended to a JSON-lines file with
//! the reason, so an operator can look at it and replay what was good, and
//! the stream goes on.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde::Serialize;

/// Most bytes of one bad input kept in the file.
pub const MAX_KEPT: usize = 64 * 1024;

/// The dead-letter file, shared by every task of a bridge.
#[derive(Clone)]
pub struct DeadLetters {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    path: PathBuf,
    file: Option<File>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    source: &'a str,
    reason: &'a str,
    /// The input as text, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    /// The input in base64, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
    /// Bytes of input in all (more than was kept when `truncated`).
    len: usize,
    truncated: bool,
}

impl DeadLetters {
    /// Dead letters go to `path` (opened on first use, appended to).
    pub fn new(path: &Path) -> DeadLetters {
        DeadLetters {
            inner: Arc::new(Mutex::new(Inner {
                path: path.to_owned(),
                file: None,
            })),
        }
    }

    /// Where the dead letters go.
    pub fn path(&self) -> PathBuf {
        self.lock().path.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one bad input. `len` is its full length when only a prefix
    /// (`input`) was kept.
    pub fn write(&self, source: &str, reason: &str, input: &[u8], len: usize) -> io::Result<()> {
        self.write_keeping(source, reason, input, len, MAX_KEPT)
    }

    /// Appends one bad input, keeping up to `keep` bytes of it (a mail is
    /// kept whole, so nothing is lost with it).
    pub fn write_keeping(
        &self,
        source: &str,
        reason: &str,
        input: &[u8],
        len: usize,
        keep: usize,
    ) -> io::Result<()> {
        let kept = &input[..input.len().min(keep)];
        let text = std::str::from_utf8(kept).ok();
        let line = Line {
            time: firehose::envelope::rfc3339(time::OffsetDateTime::now_utc()),
            source,
            reason,
            text,
            base64: text
                .is_none()
                .then(|| base64::engine::general_purpose::STANDARD.encode(kept)),
            len: len.max(input.len()),
            truncated: kept.len() < len.max(input.len()),
        };
        let mut json = serde_json::to_vec(&line).map_err(io::Error::other)?;
        json.push(b'\n');
        let mut inner = self.lock();
        if inner.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&inner.path)?;
            inner.file = Some(f);
        }
        match inner.file.as_mut() {
            Some(f) => f.write_all(&json),
            None => Ok(()),
        }
    }
}
