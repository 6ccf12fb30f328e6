//! The read-only, anonymous HTTP API on `--http` (documented in
//! `docs/history.md`): `GET /v1/events`, `GET /v1/events/{id}`,
//! `GET /v1/subjects/{subject}`, `GET /v1/timings`, `GET /v1/stream`
//! (Server-Sent Events), `/metrics`, and the page at `/`. Bad parameters get a 400 with the reason; a page is at most
//! [`MAX_LIMIT`](crate::query::MAX_LIMIT) events and one query's scan is
//! bounded, so no request can hold the database for long.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query as QueryString, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::ingest::now_ms;
use crate::query::{event_json, event_json_with, rfc3339_ms, BadParam, Query, Received};
use crate::stats::Stats;
use crate::store::{Bind, Store, Stored, SELECT_COLUMNS};

/// What every handler shares.
#[derive(Clone)]
pub struct Api {
    pub store: Store,
    pub stats: Arc<Stats>,
}

/// Candidate rows read per round when the topic filter has wildcards
/// that SQL cannot check, and rounds per request at most (a page may then
/// come back short, with `next` to go on). A text search (no index: a
/// scan of the decompressed payloads) reads rounds for [`TEXT_PAGE_TIME`]
/// at most, then answers with what it found and `next`: a search of a
/// large store is a walk of pages, each bounded, never one request that
/// runs into [`QUERY_TIME`].
const SCAN_ROWS: usize = 2000;
const SCAN_ROUNDS: usize = 10;
const TEXT_PAGE_TIME: Duration = Duration::from_secs(2);
/// How long one request may take.
const QUERY_TIME: Duration = Duration::from_secs(10);

/// The routes.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/", get(page_html))
        .route("/v1/events", get(events))
        .route("/v1/events/{id}", get(event))
        .route("/v1/subjects/{subject}", get(subject))
        .route("/v1/timings", get(timings))
        .route("/v1/stream", get(stream))
        .route("/metrics", get(metrics))
        .with_state(api)
}

/// The page at `/`: search, one subject's timeline, the timings table,
/// over this same API (no outside scripts).
const PAGE: &str = include_str!("page.html");

async fn page_html() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The page runs only its own inline script and talks only to
            // this API.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'",
            ),
        ],
        PAGE,
    )
        .into_response()
}

fn error(api: &Api, status: StatusCode, reason: String) -> Response {
    if status == StatusCode::BAD_REQUEST {
        api.stats.bad_requests.fetch_add(1, Relaxed);
    }
    (status, Json(json!({ "error": reason }))).into_response()
}

fn unavailable(api: &Api, e: &crate::store::StoreError) -> Response {
    tracing::warn!(error = %firehose::report::error_chain(e), "a query failed");
    error(
        api,
        StatusCode::SERVICE_UNAVAILABLE,
        "the store cannot answer now".into(),
    )
}

async fn events(
    State(api): State<Api>,
    QueryString(params): QueryString<HashMap<String, String>>,
) -> Response {
    let q = match Query::parse(&params, now_ms()) {
        Ok(q) => q,
        Err(reason) => return error(&api, StatusCode::BAD_REQUEST, reason.0),
    };
    match tokio::time::timeout(QUERY_TIME, page(&api.store, &q)).await {
        Ok(Ok((evs, next))) => {
            api.stats.requests.fetch_add(1, Relaxed);
            Json(json!({ "events": evs, "next": next })).into_response()
        }
        Ok(Err(e)) => unavailable(&api, &e),
        Err(_) => error(
            &api,
            StatusCode::SERVICE_UNAVAILABLE,
            "the query took too long: narrow it (a topic without wildcards, a type, a subject, a time range)".into(),
        ),
    }
}

/// What one scan found: the matches (at most `want`), the last cursor
/// read, and whether the store has nothing after it.
pub(crate) struct Scan {
    pub found: Vec<Stored>,
    pub scanned_to: Option<i64>,
    pub end: bool,
}

/// Reads rows of `q` after `after` until `want` match, the store ends, or
/// the scan bound is reached (rounds; for a text search, the time
/// [`TEXT_PAGE_TIME`] from now).
pub(crate) async fn scan(
    store: &Store,
    q: &Query,
    after: Option<i64>,
    want: usize,
) -> Result<Scan, crate::store::StoreError> {
    let until = q
        .text
        .is_some()
        .then(|| tokio::time::Instant::now() + TEXT_PAGE_TIME);
    scan_until(store, q, after, want, until).await
}

/// [`scan`], reading rounds until `until` if given (at least one: each
/// page moves on), else [`SCAN_ROUNDS`].
async fn scan_until(
    store: &Store,
    q: &Query,
    mut after: Option<i64>,
    want: usize,
    until: Option<tokio::time::Instant>,
) -> Result<Scan, crate::store::StoreError> {
    let exact = q.exact();
    // With wildcards, a round reads twice what is still wanted, then four
    // times more each round up to SCAN_ROWS: a filter that matches often
    // is answered from the first small read (reading 2,000 rows of 1 KB
    // for a page of 100 took 30 ms), a rare one still gets wide reads.
    let mut rows = if exact {
        want
    } else {
        (want * 2).min(SCAN_ROWS)
    };
    let mut found = Vec::new();
    let rounds = if until.is_some() {
        usize::MAX
    } else {
        SCAN_ROUNDS
    };
    for _ in 0..rounds {
        let mut end;
        if exact {
            let (text, binds) = q.sql(after, rows);
            let got = store.select(text, binds).await?;
            end = got.len() < rows;
            after = got.last().map(|s| s.cursor).or(after);
            found.extend(got);
        } else {
            // Check the candidates on their topic and payload, then read
            // the whole rows of those that match.
            let (text, binds) = q.candidates_sql(after, rows);
            let got = store.candidates(text, binds).await?;
            end = got.len() < rows;
            let mut hits = Vec::new();
            for c in got {
                if found.len() + hits.len() >= want {
                    end = false;
                    break;
                }
                after = Some(c.cursor);
                if q.wants(&c.topic, &c.payload) {
                    hits.push(c.cursor);
                }
            }
            found.extend(store.at_cursors(&hits).await?);
        }
        if found.len() >= want || end {
            return Ok(Scan {
                found,
                scanned_to: after,
                end,
            });
        }
        if until.is_some_and(|t| tokio::time::Instant::now() >= t) {
            break;
        }
        if !exact {
            rows = (rows * 4).min(SCAN_ROWS.max(want));
        }
    }
    Ok(Scan {
        found,
        scanned_to: after,
        end: false,
    })
}

/// One page of `q`, and the cursor to go on from (`None` at the end).
pub async fn page(
    store: &Store,
    q: &Query,
) -> Result<(Vec<Value>, Option<String>), crate::store::StoreError> {
    let s = scan(store, q, q.after, q.limit + 1).await?;
    if s.found.len() > q.limit {
        let next = s.found[q.limit - 1].cursor.to_string();
        let evs = s.found[..q.limit]
            .iter()
            .map(|e| event_json_with(e, q.payload))
            .collect();
        return Ok((evs, Some(next)));
    }
    let next = (!s.end)
        .then(|| s.scanned_to.map(|c| c.to_string()))
        .flatten();
    Ok((
        s.found
            .iter()
            .map(|e| event_json_with(e, q.payload))
            .collect(),
        next,
    ))
}

async fn event(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let text = format!("SELECT {SELECT_COLUMNS} FROM events WHERE id = $1");
    match api.store.select(text, vec![Bind::Text(id.clone())]).await {
        Ok(rows) => match rows.first() {
            Some(s) => {
                api.stats.requests.fetch_add(1, Relaxed);
                Json(event_json(s)).into_response()
            }
            None => error(&api, StatusCode::NOT_FOUND, format!("no event {id:?}")),
        },
        Err(e) => unavailable(&api, &e),
    }
}

async fn metrics(State(api): State<Api>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        api.stats.render(),
    )
        .into_response()
}

/// At most this many events of one subject (gerrit's events-log serves
/// 5,000 per request).
pub const SUBJECT_EVENTS: usize = 5000;

fn only(params: &HashMap<String, String>, known: &[&str]) -> Result<(), BadParam> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(BadParam(format!(
            "unknown parameter {k:?}; known: {}",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// Every event of one instance, request, change, bug or playbook (or
/// CloudEvents subject), in the order of the events' own time, each with
/// the gap since the one before.
async fn subject(
    State(api): State<Api>,
    Path(subject): Path<String>,
    QueryString(params): QueryString<HashMap<String, String>>,
) -> Response {
    if let Err(reason) = only(&params, &["project"]) {
        return error(&api, StatusCode::BAD_REQUEST, reason.0);
    }
    let mut text = format!(
        "SELECT {SELECT_COLUMNS} FROM events WHERE (subject = $1 OR instance = $1 OR request = $1 \
         OR change_number = $1 OR bug = $1 OR playbook = $1)"
    );
    let mut binds = vec![Bind::Text(subject.clone())];
    if let Some(p) = params.get("project").filter(|p| !p.is_empty()) {
        text.push_str(" AND project = $2");
        binds.push(Bind::Text(p.clone()));
    }
    binds.push(Bind::Int(SUBJECT_EVENTS as i64 + 1));
    text.push_str(&format!(
        " ORDER BY COALESCE(event_time_ms, received_ms), seq LIMIT ${}",
        binds.len()
    ));
    let rows = match api.store.select(text, binds).await {
        Ok(r) => r,
        Err(e) => return unavailable(&api, &e),
    };
    let truncated = rows.len() > SUBJECT_EVENTS;
    let at = |s: &Stored| s.row.time_ms.unwrap_or(s.row.received_ms);
    let mut prev: Option<i64> = None;
    let events: Vec<Value> = rows
        .iter()
        .take(SUBJECT_EVENTS)
        .map(|s| {
            let mut v = event_json(s);
            let t = at(s);
            v["gap_ms"] = prev.map_or(Value::Null, |p| json!(t - p));
            prev = Some(t);
            v
        })
        .collect();
    if events.is_empty() {
        return error(
            &api,
            StatusCode::NOT_FOUND,
            format!("no events about {subject:?}"),
        );
    }
    let first = rows.first().map(at).unwrap_or_default();
    let last = rows[..rows.len().min(SUBJECT_EVENTS)]
        .last()
        .map(at)
        .unwrap_or_default();
    api.stats.requests.fetch_add(1, Relaxed);
    Json(json!({
        "subject": subject,
        "first": rfc3339_ms(first),
        "last": rfc3339_ms(last),
        "span_ms": last - first,
        "truncated": truncated,
        "events": events,
    }))
    .into_response()
}

/// At most this many start/end events per timings request.
pub const TIMING_EVENTS: usize = 200_000;

/// StackTach's timings over the events received in `since..until`.
async fn timings(
    State(api): State<Api>,
    QueryString(params): QueryString<HashMap<String, String>>,
) -> Response {
    let q = match only(&params, &["type", "since", "until"])
        .and_then(|_| Query::parse(&params, now_ms()))
    {
        Ok(q) => q,
        Err(reason) => return error(&api, StatusCode::BAD_REQUEST, reason.0),
    };
    let (mut w, mut binds) = q.conditions(None);
    w.push(
        "(kind LIKE 'nova.%.start' OR kind LIKE 'nova.%.end' OR kind IN \
         ('ansible.play.start', 'ansible.playbook.finish', 'gerrit.patchset-created', 'gerrit.change-merged'))"
            .into(),
    );
    binds.push(Bind::Int(TIMING_EVENTS as i64 + 1));
    let text = format!(
        "SELECT kind, COALESCE(instance, playbook, change_number, subject) AS key, project, event_time_ms \
         FROM events WHERE {} ORDER BY seq LIMIT ${}",
        w.join(" AND "),
        binds.len()
    );
    let work = async {
        let marks = api.store.marks(text, binds).await?;
        let truncated = marks.len() > TIMING_EVENTS;
        let n = marks.len().min(TIMING_EVENTS);
        Ok::<_, crate::store::StoreError>((crate::timings::timings(&marks[..n]), n, truncated))
    };
    match tokio::time::timeout(QUERY_TIME, work).await {
        Ok(Ok((t, n, truncated))) => {
            api.stats.requests.fetch_add(1, Relaxed);
            Json(json!({ "timings": t, "events": n, "truncated": truncated })).into_response()
        }
        Ok(Err(e)) => unavailable(&api, &e),
        Err(_) => error(
            &api,
            StatusCode::SERVICE_UNAVAILABLE,
            "the timings took too long: narrow them (type=nova.instance.create.*, since=1d)".into(),
        ),
    }
}

/// Events per read of the stream.
const STREAM_BATCH: usize = 500;
/// How long the stream waits for a commit before it looks again anyway.
const STREAM_IDLE: Duration = Duration::from_secs(1);

/// Server-Sent Events: every stored event of the query from `since` (or
/// the `Last-Event-ID` cursor a reconnecting client sends) on, then each
/// new one as it is committed; `id:` is the cursor, so a resume has no gap
/// and no duplicate. Without either, it starts at the newest event.
async fn stream(
    State(api): State<Api>,
    headers: axum::http::HeaderMap,
    QueryString(params): QueryString<HashMap<String, String>>,
) -> Response {
    // What a page takes, but for its bounds: a stream has no end and no
    // page size.
    let known: Vec<&str> = crate::query::KNOWN
        .iter()
        .copied()
        .filter(|k| !["until", "from", "to", "limit", "after"].contains(k))
        .collect();
    let parsed = only(&params, &known).and_then(|_| Query::parse(&params, now_ms()));
    let mut q = match parsed {
        Ok(q) => q,
        Err(reason) => return error(&api, StatusCode::BAD_REQUEST, reason.0),
    };
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let mut after = match resume.map(str::parse::<i64>) {
        Some(Ok(c)) => Some(c),
        Some(Err(_)) => {
            return error(
                &api,
                StatusCode::BAD_REQUEST,
                "Last-Event-ID is not a cursor of this stream".into(),
            )
        }
        None => None,
    };
    if after.is_some() {
        q.since = None;
    } else if let Some(Received::Cursor(c)) = q.since {
        q.since = None;
        after = Some(c);
    } else if q.since.is_none() {
        after = match api.store.last_cursor().await {
            Ok(c) => Some(c),
            Err(e) => return unavailable(&api, &e),
        };
    }
    api.stats.requests.fetch_add(1, Relaxed);
    let state = (api, q, after, std::collections::VecDeque::<Stored>::new());
    let events = futures_util::stream::unfold(state, |(api, q, mut after, mut buf)| async move {
        loop {
            if let Some(s) = buf.pop_front() {
                let ev = axum::response::sse::Event::default()
                    .id(s.cursor.to_string())
                    .data(event_json_with(&s, q.payload).to_string());
                return Some((Ok::<_, std::convert::Infallible>(ev), (api, q, after, buf)));
            }
            // Registered before the read: a commit during it still wakes us.
            let committed = api.stats.committed.notified();
            match scan(&api.store, &q, after, STREAM_BATCH).await {
                Ok(s) => {
                    after = s.scanned_to.or(after);
                    buf.extend(s.found);
                    if !buf.is_empty() || !s.end {
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %firehose::report::error_chain(&e), "the stream cannot read the store; retrying")
                }
            }
            let _ = tokio::time::timeout(STREAM_IDLE, committed).await;
        }
    });
    axum::response::sse::Sse::new(events)
        .keep_alive(axum::response::sse::KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A text search whose time is up answers after one round with what
    /// it found and where it got to; walking on from there reaches every
    /// match and the end, never standing still.
    #[tokio::test]
    async fn a_text_search_out_of_time_answers_with_where_it_got_to() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("h.db").display());
        let store = Store::open(&url).await.expect("a store");
        let rows: Vec<_> = (0..100)
            .map(|i| {
                let text = if i == 90 { "needle" } else { "hay" };
                let payload = format!("{{\"n\":{i},\"text\":\"{text}\"}}");
                let ev = firehose::reader::decode(&format!("other/{i}"), payload.as_bytes(), false);
                crate::fields::row(&ev, i)
            })
            .collect();
        store.insert(&rows).await.expect("stored");
        let params: HashMap<String, String> = [("q".to_string(), "needle".to_string())].into();
        let q = Query::parse(&params, 0).expect("a query");

        let first = scan_until(&store, &q, None, 11, Some(tokio::time::Instant::now()))
            .await
            .expect("a page");
        assert!(first.found.is_empty() && !first.end);
        let mut after = first.scanned_to.expect("it read some");
        let (mut pages, mut found) = (1, 0);
        loop {
            let s = scan_until(
                &store,
                &q,
                Some(after),
                11,
                Some(tokio::time::Instant::now()),
            )
            .await
            .expect("a page");
            pages += 1;
            found += s.found.len();
            if s.end {
                break;
            }
            let next = s.scanned_to.expect("it read some");
            assert!(next > after, "each page moves on: {after} -> {next}");
            after = next;
            assert!(pages < 100, "the walk ends");
        }
        assert_eq!(found, 1);
        assert!(pages > 2, "out of time, each page is one round: {pages}");
    }
}
