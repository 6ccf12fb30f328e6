//! `--demo`: the firehose at once, for a new user. Sample events from all
//! four sources (gerrit, nova, launchpad, ansible) are compiled in from
//! `fixtures/demo/events.jsonl` (what the bridges print, in raw payload
//! mode, for the repository's fixtures; a test keeps the file true) and
//! published through the router, one every [`EVERY`], round and round, by
//! an internal publisher with its own identity: a retained status on
//! `firehose/status/demo/<host>` says it is up, as a bridge's would.

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use crate::shared::Internal;

/// The bundled events: one `{"topic", "retain", "payload"}` per line.
const EVENTS: &str = include_str!("../../fixtures/demo/events.jsonl");

/// One event every this often: a gentle rate a person can read.
pub const EVERY: Duration = Duration::from_millis(500);

/// Where the demo publisher says it is up.
pub fn status_topic() -> String {
    firehose::topic::status("demo", &firehose::status::hostname())
}

#[derive(Deserialize)]
struct Line {
    topic: String,
    #[serde(default)]
    retain: bool,
    /// JSON when the payload is JSON, else its text (as `--print json`).
    payload: serde_json::Value,
}

/// The bundled events as (topic, payload, retain).
pub fn events() -> Vec<(String, Bytes, bool)> {
    EVENTS
        .lines()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .map(|l| {
            let payload = match l.payload {
                serde_json::Value::String(s) => Bytes::from(s),
                v => Bytes::from(v.to_string()),
            };
            (l.topic, payload, l.retain)
        })
        .collect()
}

/// Publishes at QoS 1 (each reader gets the lower of that and its
/// subscription's).
fn publish(broker: &Internal, topic: &str, payload: Bytes, retain: bool) {
    broker.publish(Bytes::copy_from_slice(topic.as_bytes()), payload, 1, retain);
}

fn status(state: firehose::status::State, started: &str, published: u64) -> Bytes {
    let s = firehose::status::Status {
        state,
        version: format!("firehose-broker {} --demo", env!("CARGO_PKG_VERSION")),
        host: firehose::status::hostname(),
        started: started.to_owned(),
        upstream_connected: state == firehose::status::State::Up,
        upstream_error: None,
        last_event: None,
        counters: firehose::status::Counters {
            read: published,
            published,
            ..Default::default()
        },
    };
    Bytes::from(serde_json::to_vec(&s).unwrap_or_default())
}

/// Runs until shutdown, then says "down".
pub(crate) async fn run(broker: Internal) {
    let events = events();
    let started = firehose::envelope::rfc3339(time::OffsetDateTime::now_utc());
    let topic = status_topic();
    let up = firehose::status::State::Up;
    publish(&broker, &topic, status(up, &started, 0), true);
    tracing::info!(events = events.len(), every = ?EVERY, status = %topic, "demo: publishing sample events from gerrit, nova, launchpad and ansible");
    let mut shutdown = broker.shutdown();
    let mut tick = tokio::time::interval(EVERY);
    let mut published = 0u64;
    for (t, payload, retain) in events.iter().cycle() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        publish(&broker, t, payload.clone(), *retain);
        published += 1;
        if published.is_multiple_of(100) {
            publish(&broker, &topic, status(up, &started, published), true);
        }
    }
    let down = firehose::status::State::Down;
    publish(&broker, &topic, status(down, &started, published), true);
}
