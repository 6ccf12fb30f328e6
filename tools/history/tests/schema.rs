//! The schema's migrations: a store of schema 1 (the first release's) is
//! taken to the current one on start with its events kept and readable,
//! and a store from a newer firehose-history is refused with the fix named.

use std::collections::HashMap;

use firehose_history::api::page;
use firehose_history::query::Query;
use firehose_history::store::{Store, SCHEMA};
use sqlx::{AnyPool, Row};

/// The first release's table and change index (led by the project), as
/// a schema-1 store has them.
const V1: &[&str] = &[
    "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, \
     topic TEXT NOT NULL, source TEXT, kind TEXT NOT NULL, event_time TEXT, event_time_ms BIGINT, \
     subject TEXT, retained BIGINT NOT NULL, received_ms BIGINT NOT NULL, payload BLOB NOT NULL, \
     readable BIGINT NOT NULL, deployment TEXT, instance TEXT, request TEXT, project TEXT, \
     change_number TEXT, bug TEXT, playbook TEXT)",
    "CREATE INDEX events_change ON events (project, change_number) WHERE change_number IS NOT NULL",
    "CREATE TABLE history_schema (version BIGINT NOT NULL)",
    "INSERT INTO history_schema (version) VALUES (1)",
    "INSERT INTO events (id, topic, kind, subject, retained, received_ms, payload, readable, project, change_number) \
     VALUES ('e-1', 'gerrit/openstack/nova/change-merged', 'gerrit.change-merged', '12', 0, 1, \
     x'7b2274797065223a226368616e67652d6d6572676564227d', 1, 'openstack/nova', '12')",
];

async fn raw(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    AnyPool::connect(url).await.expect("raw pool")
}

async fn index_sql(pool: &AnyPool) -> String {
    sqlx::query("SELECT sql FROM sqlite_master WHERE name = 'events_change'")
        .fetch_one(pool)
        .await
        .and_then(|r| r.try_get::<String, _>("sql"))
        .expect("events_change")
}

#[tokio::test]
async fn a_schema_1_store_is_migrated_and_a_newer_one_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("h.db").display());

    // What the first release left: version 1, its table, its index.
    let pool = raw(&url).await;
    let mut tx = pool.begin().await.expect("a transaction");
    for stmt in V1 {
        sqlx::query(*stmt).execute(&mut *tx).await.expect(stmt);
    }
    tx.commit().await.expect("commit");
    assert!(index_sql(&pool).await.contains("(project, change_number)"));
    pool.close().await;

    let store = Store::open(&url).await.expect("migrated");
    let params: HashMap<String, String> = [("change".to_string(), "12".to_string())].into();
    let (events, _) = page(&store, &Query::parse(&params, 0).expect("a query"))
        .await
        .expect("the old row reads");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["id"], "e-1");
    assert_eq!(
        events[0]["data"]["type"], "change-merged",
        "its payload as stored"
    );
    drop(store);
    drop(Store::open(&url).await.expect("migrated"));
    let pool = raw(&url).await;
    assert!(
        index_sql(&pool).await.contains("(change_number, project)"),
        "the change index leads with the number"
    );
    let version: i64 = sqlx::query("SELECT MAX(version) AS v FROM history_schema")
        .fetch_one(&pool)
        .await
        .and_then(|r| r.try_get("v"))
        .expect("version");
    assert_eq!(version, SCHEMA);
    let kept: i64 = sqlx::query("SELECT COUNT(*) AS n FROM events WHERE id = 'e-1'")
        .fetch_one(&pool)
        .await
        .and_then(|r| r.try_get("n"))
        .expect("count");
    assert_eq!(kept, 1, "the events are kept");

    sqlx::query("INSERT INTO history_schema (version) VALUES (99)")
        .execute(&pool)
        .await
        .expect("a newer version");
    pool.close().await;
    let e = Store::open(&url)
        .await
        .err()
        .expect("a newer store is refused");
    assert!(
        e.to_string().contains("run the newer firehose-history"),
        "{e}"
    );
}
