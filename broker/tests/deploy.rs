//! The systemd units in `deploy/` pass `systemd-analyze verify` and rate
//! "OK" (exposure at most 2.0) in `systemd-analyze security`, checked
//! offline on copies whose `ExecStart` points at the binaries just built.
//! These units are the whole suite's; the test lives with the broker's.

use std::path::Path;
use std::process::Command;

use firehose_testkit::*;

const UNITS: [(&str, &str); 8] = [
    ("firehose-broker.service", "firehose-broker"),
    ("firehose-gerrit.service", "firehose-gerrit"),
    ("firehose-nova.service", "firehose-nova"),
    ("firehose-launchpad.service", "firehose-launchpad"),
    ("firehose-ansible.service", "firehose-ansible"),
    ("firehose-notify.service", "firehose-notify"),
    ("firehose-history.service", "firehose-history"),
    ("firehose-subunit.service", "firehose-subunit"),
];

#[test]
fn units_verify_and_rate_ok_in_systemd_analyze_security() {
    let analyze = require("systemd-analyze", "systemd");
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let dir = tempfile::tempdir().unwrap();
    for (unit, binary) in UNITS {
        let text = std::fs::read_to_string(deploy.join(unit)).unwrap();
        let from = format!("/usr/local/bin/{binary}");
        assert!(text.contains(&from), "{unit} runs {from}");
        let copy = dir.path().join(unit);
        let built = bin(binary);
        std::fs::write(&copy, text.replace(&from, &built.to_string_lossy())).unwrap();

        let out = run(Command::new(&analyze)
            .args(["verify", "--man=no"])
            .arg(&copy));
        let err = String::from_utf8_lossy(&out.stderr);
        // `verify` also looks at units named in After=/Wants= that this
        // machine does not have; only complaints about our unit count.
        let ours: Vec<&str> = err.lines().filter(|l| l.contains(unit)).collect();
        assert!(ours.is_empty(), "systemd-analyze verify {unit}:\n{err}");

        let out = run(Command::new(&analyze)
            .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
            .arg(&copy));
        let text = String::from_utf8_lossy(&out.stdout);
        let level = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .unwrap_or_else(|| panic!("no exposure level for {unit}:\n{text}"));
        assert!(
            level.contains(" OK"),
            "{unit} must rate OK (exposure at most 2.0): {level}\n{text}"
        );
        assert!(out.status.success(), "{unit}: exposure above 2.0\n{text}");
    }
}

/// `deploy/prometheus/`: the scrape config and the alert rules pass
/// promtool, the rules' own unit tests pass (each alert fires on the series
/// that should trigger it), and every broker metric they use exists.
#[test]
fn prometheus_rules_check_and_their_tests_pass() {
    let promtool = require("promtool", "prometheus");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    for args in [
        vec!["check", "rules", "firehose-alerts.yml"],
        vec!["check", "config", "prometheus.yml"],
        vec!["test", "rules", "firehose-alerts-test.yml"],
    ] {
        let out = run(Command::new(&promtool).current_dir(&dir).args(&args));
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules = std::fs::read_to_string(dir.join("firehose-alerts.yml")).unwrap();
    let b = BrokerProc::start(&[]);
    let (_, metrics) = http_get(b.ws.expect("ws listener"), "/metrics");
    for name in rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("firehose_broker_"))
    {
        assert!(
            metrics.contains(name),
            "{name} is not in the broker's /metrics"
        );
    }
    // And every firehose-history metric, from a running one.
    let state = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", state.path().join("h.db").display());
    let history = HistoryProc::start(&format!("mqtt://{}", b.mqtt()), &db, "127.0.0.1:0", &[]);
    let (_, metrics) = http_get(history.http, "/metrics");
    let names: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("firehose_history_"))
        .collect();
    assert!(!names.is_empty(), "the rules watch firehose-history");
    for name in names {
        assert!(
            metrics.contains(name),
            "{name} is not in firehose-history's /metrics"
        );
    }
}
