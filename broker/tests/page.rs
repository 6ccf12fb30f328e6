//! The live page at `/` in headless Chromium (Debian's chromium driven by
//! playwright-core from npm, `broker/tests/js/page.mjs`): it loads from
//! the broker, connects back over MQTT over websockets, shows an event
//! published during the test with its summary, expands it, narrows the
//! list with the filter, shows a bridge up then down in the status panel,
//! stops updating while paused, says when the broker refuses a filter,
//! and fits a phone screen; over ws and over
//! wss with a test certificate. Screenshots go to `target/page-*.png`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use firehose_testkit::*;

use firehose_testkit::logins::PUBLISHER as BRIDGE;

fn drive(page_url: &str, mqtt_url: &str, ca: Option<&Path>, shot: &str) {
    let js = js_drivers();
    let chromium = require("chromium", "chromium");
    let shot = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(shot);
    let mut cmd = Command::new("node");
    cmd.current_dir(&js)
        .arg("page.mjs")
        .env("PAGE_URL", page_url)
        .env("MQTT_URL", mqtt_url)
        .env("MQTT_USER", BRIDGE.0)
        .env("MQTT_PASS", BRIDGE.1)
        .env("CHROMIUM", &chromium)
        .env("SCREENSHOT", &shot);
    if let Some(ca) = ca {
        cmd.env("CA", ca);
    }
    let mut p = Proc::spawn("page.mjs", &mut cmd);
    let st = poll(
        Duration::from_secs(120),
        || p.try_exit().map(|s| s.success()),
        || "page.mjs to finish".to_owned(),
    );
    let out = p.stdout_lines();
    assert!(
        st && out.last().is_some_and(|l| l == "ok"),
        "the live page failed:\nstdout: {out:#?}\nstderr: {}",
        p.logs()
    );
    for step in [
        "connected",
        "expanded",
        "bridge up",
        "bridge down",
        "paused",
        "refused filter",
        "phone width",
    ] {
        assert!(out.iter().any(|l| l == step), "{step} in {out:?}");
    }
    assert!(
        out.iter().any(|l| l.starts_with(
            "summary: openstack/nova · Fix the scheduler · by Jane Reviewer · Code-Review-1"
        )),
        "{out:?}"
    );
    assert!(shot.exists(), "screenshot {}", shot.display());
}

#[test]
fn live_page_over_ws() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let ws = b.ws.expect("ws listener");
    // The startup log says where the page is.
    b.wait_log(&format!("live page url=http://{ws}/"));
    drive(
        &format!("http://{ws}/"),
        &format!("mqtt://{}", b.mqtt()),
        None,
        "page-ws.png",
    );
}

#[test]
fn live_page_over_wss() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let b = BrokerProc::with_users(
        dir.path(),
        &[BRIDGE],
        &[
            "--wss",
            "127.0.0.1:0",
            "--cert",
            &path_str(dir.path(), "server.pem"),
            "--key",
            &path_str(dir.path(), "server.key"),
        ],
    );
    let wss = b.wss.expect("wss listener");
    drive(
        &format!("https://localhost:{}/", wss.port()),
        &format!("mqtt://{}", b.mqtt()),
        None,
        "page-wss.png",
    );
}
