//! Everything on the firehose, typed: the SDK's `mosquitto_sub -t '#' -v`.
//! One line per event: its type, topic and subject, whatever the bridge's
//! payload mode.
//!
//! Run: `cargo run -p firehose --example subscribe_all -- mqtt://127.0.0.1:1883`

use firehose::{Client, Filter};

include!("common.rs");

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, count) = args();
    let client = Client::connect(&url).await?;
    let mut all = client.subscribe(Filter::all()).await?;
    let mut n = 0;
    while let Some(ev) = all.next().await {
        println!(
            "{} {} {}",
            ev.kind,
            ev.topic,
            ev.subject.as_deref().unwrap_or("-")
        );
        n += 1;
        if count.is_some_and(|c| n >= c) {
            break;
        }
    }
    Ok(())
}
