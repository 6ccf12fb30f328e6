//! Stacky's questions from a shell: `firehose-history query events|show|
//! subject|timings` asks a running firehose-history's API and prints a
//! table (or the API's JSON with `--json`).

use std::fmt::Write as _;

use serde_json::Value;

/// One question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// `GET /v1/events` with these parameters (every page up to `max`).
    Events {
        params: Vec<(String, String)>,
        max: usize,
    },
    /// `GET /v1/events/{id}`.
    Show { id: String },
    /// `GET /v1/subjects/{subject}`.
    Subject { subject: String },
    /// `GET /v1/timings` with these parameters.
    Timings { params: Vec<(String, String)> },
}

/// Why a question got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("--url {0:?}: give http://HOST:PORT (firehose-history's --http)")]
    Url(String),
    #[error("cannot ask {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {reason}")]
    Refused {
        url: String,
        status: u16,
        reason: String,
    },
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn get(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    params: &[(String, String)],
) -> Result<Value, AskError> {
    let url = format!("{base}{path}");
    let resp = http
        .get(&url)
        .query(params)
        .send()
        .await
        .map_err(|source| AskError::Http {
            url: url.clone(),
            source,
        })?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|source| AskError::Http {
        url: url.clone(),
        source,
    })?;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(AskError::Refused {
            url,
            status: status.as_u16(),
            reason: v["error"].as_str().unwrap_or("no reason given").to_owned(),
        });
    }
    Ok(v)
}

/// Asks `base` (firehose-history's API) and returns what to print.
pub async fn ask(base: &str, q: &Question, json: bool) -> Result<String, AskError> {
    let base = base.trim_end_matches('/');
    if !base.starts_with("http://") && !base.starts_with("https://") {
        return Err(AskError::Url(base.to_owned()));
    }
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|source| AskError::Http {
            url: base.to_owned(),
            source,
        })?;
    match q {
        Question::Events { params, max } => {
            let mut all = Vec::new();
            let mut params = params.clone();
            while all.len() < *max {
                let v = get(&http, base, "/v1/events", &params).await?;
                all.extend(v["events"].as_array().cloned().unwrap_or_default());
                match v["next"].as_str() {
                    Some(n) => {
                        params.retain(|(k, _)| k != "after");
                        params.push(("after".into(), n.to_owned()));
                    }
                    None => break,
                }
            }
            all.truncate(*max);
            Ok(if json {
                lines(&all)
            } else {
                events_table(&all)
            })
        }
        Question::Show { id } => {
            let v = get(&http, base, &format!("/v1/events/{}", percent(id)), &[]).await?;
            Ok(serde_json::to_string_pretty(&v).unwrap_or_default() + "\n")
        }
        Question::Subject { subject } => {
            let v = get(
                &http,
                base,
                &format!("/v1/subjects/{}", percent(subject)),
                &[],
            )
            .await?;
            Ok(if json {
                v.to_string() + "\n"
            } else {
                subject_table(&v)
            })
        }
        Question::Timings { params } => {
            let v = get(&http, base, "/v1/timings", params).await?;
            Ok(if json {
                v.to_string() + "\n"
            } else {
                timings_table(&v)
            })
        }
    }
}

fn lines(evs: &[Value]) -> String {
    evs.iter().map(|e| e.to_string() + "\n").collect()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// Columns padded to their widest cell (the last one is not padded).
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                let _ = write!(out, "{c}");
            } else {
                let _ = write!(out, "{c:<width$}  ", width = w[i]);
            }
        }
        out.push('\n');
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// A duration in ms, the way a person reads it.
pub fn human_ms(ms: i64) -> String {
    let a = ms.unsigned_abs();
    match a {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, (a % 60_000) / 1000),
        _ => format!("{}h{:02}m", ms / 3_600_000, (a % 3_600_000) / 60_000),
    }
}

fn events_table(evs: &[Value]) -> String {
    let rows: Vec<Vec<String>> = evs
        .iter()
        .map(|e| {
            vec![
                s(&e["received"]).to_owned(),
                s(&e["type"]).to_owned(),
                s(&e["subject"]).to_owned(),
                s(&e["topic"]).to_owned(),
            ]
        })
        .collect();
    let mut t = table(&["RECEIVED", "TYPE", "SUBJECT", "TOPIC"], &rows);
    let _ = writeln!(t, "{} events", evs.len());
    t
}

fn subject_table(v: &Value) -> String {
    let evs = v["events"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = evs
        .iter()
        .map(|e| {
            vec![
                e["time"]
                    .as_str()
                    .or(e["received"].as_str())
                    .unwrap_or("-")
                    .to_owned(),
                e["gap_ms"]
                    .as_i64()
                    .map_or("".into(), |g| format!("+{}", human_ms(g))),
                s(&e["type"]).to_owned(),
                s(&e["topic"]).to_owned(),
            ]
        })
        .collect();
    let mut t = table(&["TIME", "GAP", "TYPE", "TOPIC"], &rows);
    let _ = writeln!(
        t,
        "{}: {} events over {}{}",
        s(&v["subject"]),
        evs.len(),
        human_ms(v["span_ms"].as_i64().unwrap_or(0)),
        if v["truncated"].as_bool() == Some(true) {
            " (truncated)"
        } else {
            ""
        }
    );
    t
}

fn timings_table(v: &Value) -> String {
    let ts = v["timings"].as_array().cloned().unwrap_or_default();
    let ms = |t: &Value, k: &str| human_ms(t[k].as_f64().unwrap_or(0.0) as i64);
    let rows: Vec<Vec<String>> = ts
        .iter()
        .map(|t| {
            vec![
                s(&t["operation"]).to_owned(),
                t["count"].as_u64().unwrap_or(0).to_string(),
                ms(t, "min_ms"),
                ms(t, "p50_ms"),
                ms(t, "p95_ms"),
                ms(t, "max_ms"),
                ms(t, "mean_ms"),
                t["slowest"][0]["subject"]
                    .as_str()
                    .unwrap_or("-")
                    .to_owned(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "OPERATION",
            "COUNT",
            "MIN",
            "P50",
            "P95",
            "MAX",
            "MEAN",
            "SLOWEST",
        ],
        &rows,
    );
    let _ = writeln!(
        out,
        "{} operations from {} start/end events{}",
        ts.len(),
        v["events"].as_u64().unwrap_or(0),
        if v["truncated"].as_bool() == Some(true) {
            " (truncated)"
        } else {
            ""
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(human_ms(250), "250ms");
        assert_eq!(human_ms(1500), "1.5s");
        assert_eq!(human_ms(125_000), "2m05s");
        assert_eq!(human_ms(7_500_000), "2h05m");
    }

    #[test]
    fn tables_align_their_columns() {
        let t = table(&["A", "B"], &[vec!["long cell".into(), "x".into()]]);
        assert_eq!(t, "A          B\nlong cell  x\n");
    }
}
