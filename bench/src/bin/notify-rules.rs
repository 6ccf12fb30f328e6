//! `notify-rules`: events per second through firehose-notify's rule
//! matching with 1,000 rules, on one core, no network (issue #10).
//!
//! 1,000 rules over 1,000 gerrit projects (`gerrit/<project>/#`), every
//! tenth with a jq `where`, every rule with a type list and a template; a
//! stream of gerrit fixture events spread over the projects, decoded by
//! the SDK as a subscriber would, then matched. Prints events/s and the
//! notifications made.

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use firehose_notify::config::Config;
use firehose_notify::rules::Engine;
use firehose_notify::stats::Stats;

#[derive(Debug, Parser)]
#[command(name = "notify-rules", version)]
struct Args {
    /// Rules in the configuration.
    #[arg(long, default_value_t = 1000)]
    rules: usize,
    /// Events matched.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let mut text = String::from(
        "[broker]\nurl = \"mqtt://127.0.0.1\"\n[[target]]\nname = \"log\"\ntype = \"log\"\n",
    );
    for i in 0..a.rules {
        text.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\ntopics = [\"gerrit/project-{i}/#\"]\ntype = [\"gerrit.comment-added\", \"gerrit.change-merged\", \"gerrit.patchset-created\"]\ntemplate = \"{{{{ data.change.subject }}}} in {{{{ topic }}}}\"\ntargets = [\"log\"]\n"
        ));
        if i % 10 == 0 {
            text.push_str("where = '[.data.approvals[]? | .value | tostring] | any(. == \"2\")'\n");
        }
    }
    let cfg = Config::parse(&text)?;
    let mut engine = Engine::new(&cfg, std::sync::Arc::new(Stats::new(&["log".into()])))?;
    let fixtures = firehose_testkit::fixture_lines("gerrit/stream-events.jsonl");
    let payloads: Vec<(String, Vec<u8>)> = (0..a.events)
        .map(|i| {
            let line = &fixtures[i % fixtures.len()];
            let kind = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["type"].as_str().map(str::to_owned))
                .unwrap_or_default();
            (
                format!("gerrit/project-{}/{kind}", i % a.rules),
                line.as_bytes().to_vec(),
            )
        })
        .collect();
    let start = Instant::now();
    let mut notes = 0usize;
    let now = std::time::Instant::now();
    for (topic, payload) in &payloads {
        let ev = firehose::reader::decode(topic, payload, false);
        notes += engine.process(&ev, now, "2026-11-30T00:00:00Z").len();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "rules={} events={} notifications={} seconds={:.2} events_per_s={:.0}",
        a.rules,
        a.events,
        notes,
        secs,
        a.events as f64 / secs
    );
    Ok(())
}
