//! firehose-history's page at `/` in headless Chromium (Debian's chromium
//! driven by playwright-core from npm, `tests/js/page.mjs`): a search
//! paged with More, by type, by text and topic filter, a bad time that
//! says why; one instance's timeline with its durations and gaps; the
//! timings table; a phone screen; and the broker's live page
//! (`--history-url`) linking an event's instance to its timeline. The
//! screenshot goes to `target/history-page.png`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use firehose_testkit::*;

#[test]
fn the_page_searches_shows_a_timeline_and_timings_and_the_live_page_links_to_it() {
    // The browser tests' one npm install (./scripts/test runs it).
    let modules = js_drivers().join("node_modules");
    let chromium = require("chromium", "chromium");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().expect("tempdir");
    let http = format!("127.0.0.1:{}", free_port());
    let history_url = format!("http://{http}");
    let broker = BrokerProc::with_users(dir.path(), &[BRIDGE], &["--history-url", &history_url]);
    let db = format!("sqlite:{}", dir.path().join("history.db").display());
    let _h = start_history_on(&broker, &db, &http, &[]);
    let ws = broker.ws.expect("ws listener");
    let shot = root.join("target/history-page.png");
    let mut p = Proc::spawn(
        "page.mjs",
        Command::new("node")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/page.mjs"))
            .env("HISTORY_URL", &history_url)
            .env("BROKER_PAGE", format!("http://{ws}/"))
            .env("MQTT_URL", format!("mqtt://{}", broker.mqtt()))
            .env("MQTT_USER", BRIDGE.0)
            .env("MQTT_PASS", BRIDGE.1)
            .env("JS_MODULES", &modules)
            .env("CHROMIUM", &chromium)
            .env("SCREENSHOT", &shot),
    );
    let ok = poll(
        Duration::from_secs(180),
        || p.try_exit().map(|s| s.success()),
        || "page.mjs to finish".to_owned(),
    );
    let out = p.stdout_lines();
    assert!(
        ok && out.last().is_some_and(|l| l == "ok"),
        "the history page failed:\nstdout: {out:#?}\nstderr: {}",
        p.logs()
    );
    for step in [
        "stored",
        "paged",
        "type",
        "text",
        "timeline",
        "timings",
        "phone width",
        "linked from the live page",
    ] {
        assert!(out.iter().any(|l| l == step), "{step} in {out:?}");
    }
    assert!(
        out.iter()
            .any(|l| l.starts_with("bad input: ") && l.contains("since")),
        "{out:?}"
    );
    assert!(shot.exists(), "screenshot {}", shot.display());
}
