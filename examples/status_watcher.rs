//! Is it up? Every bridge's status and every nova service's state, from the
//! retained topics: first what is known, then each change.
//!
//! Run: `cargo run -p firehose --example status_watcher -- mqtt://127.0.0.1:1883`

use firehose::liveness::Change;
use firehose::Client;

include!("common.rs");

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, count) = args();
    let client = Client::connect(&url).await?;
    let live = client.liveness().await?;
    let mut changes = live.changes();
    let mut n = 0;
    while let Ok(change) = changes.recv().await {
        match change {
            Change::Bridge {
                bridge,
                instance,
                status,
            } => {
                let why = status.upstream_error.as_deref().unwrap_or("");
                println!("bridge {bridge}/{instance}: {:?} {why}", status.state);
            }
            Change::NovaService { deployment, state } => {
                println!(
                    "nova {deployment} {} on {}: {}",
                    state.binary, state.host, state.state
                );
            }
        }
        n += 1;
        if count.is_some_and(|c| n >= c) {
            break;
        }
    }
    Ok(())
}
