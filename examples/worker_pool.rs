//! A pool of workers sharing the load: with a shared subscription
//! (`$share/<group>/...`) the broker gives each event to one worker only.
//! Run several copies of this program (or raise WORKERS) to scale out.
//!
//! Run: `cargo run -p firehose --example worker_pool -- mqtt://127.0.0.1:1883`

use firehose::{Client, Filter};

include!("common.rs");

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, count) = args();
    let workers: usize = std::env::var("WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(2);
    let (tx, mut rx) = tokio::sync::mpsc::channel(100);
    for w in 0..workers {
        let client = Client::connect(&url).await?;
        let mut jobs = client
            .subscribe(Filter::gerrit().shared("firehose-example-pool"))
            .await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let _client = client;
            while let Some(ev) = jobs.next().await {
                // The work: here, just say who did what.
                if tx
                    .send(format!("worker {w}: {} {}", ev.kind, ev.topic))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut n = 0;
    while let Some(line) = rx.recv().await {
        println!("{line}");
        n += 1;
        if count.is_some_and(|c| n >= c) {
            break;
        }
    }
    Ok(())
}
