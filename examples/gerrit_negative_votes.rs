//! Reviews with a negative vote, for one gerrit project (or all): who voted
//! what on which change. Shows a typed filter and the typed gerrit event.
//!
//! Run: `cargo run -p firehose --example gerrit_negative_votes -- mqtt://127.0.0.1:1883`
//! (set `PROJECT=openstack/nova` to watch one project)

use firehose::reader::Body;
use firehose::{Client, Filter};

include!("common.rs");

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, count) = args();
    let client = Client::connect(&url).await?;
    let filter = match std::env::var("PROJECT") {
        Ok(p) => Filter::gerrit().project(&p).event("comment-added"),
        Err(_) => Filter::gerrit().event("comment-added"),
    };
    let mut reviews = client.subscribe(filter).await?;
    let mut n = 0;
    while let Some(ev) = reviews.next().await {
        let Body::Gerrit(g) = &ev.body else { continue };
        for vote in g.approvals().iter().filter(|a| a.value < 0) {
            println!(
                "{} change {} ({}): {} {} by {}",
                g.project(),
                g.change_number().unwrap_or_default(),
                g.change_subject().unwrap_or(""),
                vote.label,
                vote.value,
                g.actor()
                    .map(|a| a.display().to_owned())
                    .unwrap_or_default(),
            );
            n += 1;
        }
        if count.is_some_and(|c| n >= c) {
            break;
        }
    }
    Ok(())
}
