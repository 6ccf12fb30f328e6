//! How long instances take to build: nova's `*.create.start` → `*.create.end`
//! per instance, from the notifications' own timestamps. Shows nova filters
//! and the typed notification.
//!
//! Run: `cargo run -p firehose --example nova_lifecycle -- mqtt://127.0.0.1:1883`

use std::collections::HashMap;

use firehose::reader::Body;
use firehose::{Client, Filter};

include!("common.rs");

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, count) = args();
    let client = Client::connect(&url).await?;
    // Legacy (compute.instance.*) and versioned (instance.*) notifications.
    let mut legacy = client
        .subscribe(Filter::nova().event_prefix("compute.instance"))
        .await?;
    let mut versioned = client
        .subscribe(Filter::nova().event_prefix("instance"))
        .await?;
    let mut started: HashMap<String, time::OffsetDateTime> = HashMap::new();
    let mut n = 0;
    loop {
        let ev = tokio::select! {
            e = legacy.next() => e,
            e = versioned.next() => e,
        };
        let Some(ev) = ev else { break };
        let Body::Nova(note) = &ev.body else { continue };
        let (Some(uuid), Some(at)) = (note.instance_uuid(), note.timestamp()) else {
            continue;
        };
        let kind = note.event_type();
        if kind.ends_with("create.start") {
            started.insert(uuid, at);
        } else if kind.ends_with("create.end") {
            match started.remove(&uuid) {
                Some(t0) => println!("{uuid} built in {:.1} s", (at - t0).as_seconds_f64()),
                None => println!("{uuid} built (start not seen)"),
            }
            n += 1;
        } else {
            println!("{uuid} {kind}");
            n += 1;
        }
        if count.is_some_and(|c| n >= c) {
            break;
        }
    }
    Ok(())
}
