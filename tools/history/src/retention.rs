//! Retention: events older than `keep` and, past `max_bytes`, the oldest
//! events go, in the background, in bounded chunks (a purge never holds the
//! database for long), counted by reason.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::ingest::now_ms;
use crate::stats::Stats;
use crate::store::Store;

/// The caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Events received longer ago go.
    pub keep: Option<Duration>,
    /// Past this size, the oldest events go.
    pub max_bytes: Option<u64>,
    /// How often the caps are applied.
    pub every: Duration,
}

/// Rows deleted per statement.
const CHUNK: i64 = 5000;
/// Statements per round at most: the rest waits for the next round.
const ROUNDS: usize = 200;

/// A size that cannot be read; each says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("{0:?}: give a size like 20GiB, 512MiB or 1000000 (bytes)")]
    Number(String),
    #[error("{0:?}: unknown unit {1:?} (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")]
    Unit(String, String),
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// Parses a size: `20GiB`, `512MiB`, `100KiB`, `1GB`, `1000` (bytes).
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| SizeError::Number(s.to_owned()))?;
    let mul: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" | "K" => 1 << 10,
        "MB" => 1000 * 1000,
        "MiB" | "M" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "GiB" | "G" => 1 << 30,
        "TB" => 1000 * 1000 * 1000 * 1000,
        "TiB" | "T" => 1 << 40,
        u => return Err(SizeError::Unit(s.to_owned(), u.to_owned())),
    };
    n.checked_mul(mul)
        .ok_or_else(|| SizeError::TooLarge(s.to_owned()))
}

/// Applies the caps every `every`, forever.
pub async fn run(store: Store, stats: Arc<Stats>, r: Retention) {
    if r.keep.is_none() && r.max_bytes.is_none() {
        return;
    }
    loop {
        if let Err(e) = once(&store, &stats, &r).await {
            tracing::warn!(error = %firehose::report::error_chain(&e), "retention could not purge; trying again later");
        }
        tokio::time::sleep(r.every).await;
    }
}

/// One round of both caps.
pub async fn once(
    store: &Store,
    stats: &Stats,
    r: &Retention,
) -> Result<(), crate::store::StoreError> {
    if let Some(keep) = r.keep {
        let before = now_ms() - keep.as_millis() as i64;
        let mut n = 0;
        for _ in 0..ROUNDS {
            let gone = store.purge_received_before(before, CHUNK).await?;
            n += gone;
            if gone < CHUNK as u64 {
                break;
            }
        }
        if n > 0 {
            stats.purged_age.fetch_add(n, Relaxed);
            tracing::info!(events = n, keep = ?keep, "purged events past their age");
        }
    }
    if let Some(max) = r.max_bytes {
        let mut n = 0;
        for _ in 0..ROUNDS {
            let used = store.used_bytes().await?;
            stats.store_bytes.store(used, Relaxed);
            if used <= max {
                break;
            }
            // Roughly the excess, by the average event's size.
            let count = store.count().await?.max(1) as u64;
            let per = (used / count).max(1);
            let chunk = ((used - max) / per + 1).clamp(1, CHUNK as u64) as i64;
            let gone = store.purge_oldest(chunk).await?;
            n += gone;
            if gone == 0 {
                break;
            }
        }
        if n > 0 {
            stats.purged_size.fetch_add(n, Relaxed);
            tracing::info!(
                events = n,
                max_bytes = max,
                "purged the oldest events past the size cap"
            );
        }
    } else {
        stats.store_bytes.store(store.used_bytes().await?, Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_say_what_is_wrong() {
        assert_eq!(parse_size("20GiB"), Ok(20 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("lots")
            .unwrap_err()
            .to_string()
            .contains("20GiB"));
        assert!(parse_size("5 parsecs")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
        assert!(parse_size("99999999999TiB").is_err());
    }
}
