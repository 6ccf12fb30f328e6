//! The read-only, anonymous HTTP API on `--http` (documented in
//! `docs/history.md`): `GET /v1/events`, `GET /v1/events/{id}`,
//! `/metrics`. Bad parameters get a 400 with the reason; a page is at most
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
use crate::query::{event_json, Query};
use crate::stats::Stats;
use crate::store::{Bind, Store, SELECT_COLUMNS};

/// What every handler shares.
#[derive(Clone)]
pub struct Api {
    pub store: Store,
    pub stats: Arc<Stats>,
}

/// Candidate rows read per round when the topic filter has wildcards
/// that SQL cannot check, and rounds per request at most (a page may then
/// come back short, with `next` to go on).
const SCAN_ROWS: usize = 2000;
const SCAN_ROUNDS: usize = 10;
/// How long one request may take.
const QUERY_TIME: Duration = Duration::from_secs(10);

/// The routes.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/events", get(events))
        .route("/v1/events/{id}", get(event))
        .route("/metrics", get(metrics))
        .with_state(api)
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
        Err(reason) => return error(&api, StatusCode::BAD_REQUEST, reason),
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

/// One page of `q`, and the cursor to go on from (`None` at the end).
pub async fn page(
    store: &Store,
    q: &Query,
) -> Result<(Vec<Value>, Option<String>), crate::store::StoreError> {
    let exact = q.topic.as_deref().is_none_or(|t| !t.contains(['+', '#']));
    let want = q.limit + 1;
    let rows = if exact { want } else { SCAN_ROWS.max(want) };
    let mut found = Vec::new();
    let mut after = q.after;
    for _ in 0..SCAN_ROUNDS {
        let (text, binds) = q.sql(store.dialect(), after, rows);
        let got = store.select(text, binds).await?;
        let end = got.len() < rows;
        after = got.last().map(|s| s.cursor).or(after);
        found.extend(got.into_iter().filter(|s| q.wants(s)));
        if found.len() >= want || end {
            let next = (found.len() > q.limit).then(|| found[q.limit - 1].cursor.to_string());
            found.truncate(q.limit);
            return Ok((found.iter().map(event_json).collect(), next));
        }
    }
    // Scanned as much as one request may: what matched so far, and where
    // to go on.
    Ok((
        found.iter().map(event_json).collect(),
        after.map(|c| c.to_string()),
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
