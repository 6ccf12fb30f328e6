//! The sample `deploy/history.toml` shows every key firehose-history knows
//! and only those, and checks as it is (once its files exist); the CLI
//! refuses what cannot work with a message that names the fix.

use std::path::Path;
use std::process::Command;

use firehose_history::config::{BrokerFile, File, HttpFile, StoreFile};
use firehose_testkit::*;

fn sample() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/history.toml"))
        .expect("deploy/history.toml")
}

#[test]
fn sample_config_has_every_key_and_only_known_ones() {
    // Every key, `None`s included (JSON keeps them).
    let full = File {
        broker: BrokerFile::default(),
        store: StoreFile::default(),
        http: HttpFile::default(),
    };
    let known = json_keys(&serde_json::to_value(&full).expect("json"));
    assert_sample_complete("deploy/history.toml", &sample(), &known);
}

#[test]
fn the_sample_checks_once_its_files_exist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pass = private_file(&dir.path().join("history-broker.pass"), "secret\n");
    let db = dir.path().join("history.db");
    let text = sample()
        .replace(
            "/etc/firehose/history-broker.pass",
            &pass.display().to_string(),
        )
        .replace(
            "/var/lib/firehose/history/history.db",
            &db.display().to_string(),
        );
    let cfg = dir.path().join("history.toml");
    std::fs::write(&cfg, text).expect("write");
    let out = run(Command::new(bin("firehose-history"))
        .arg("--config")
        .arg(&cfg)
        .arg("--check-config"));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("settings are good") && said.contains("0 events"),
        "{said}"
    );
    assert!(db.exists(), "the schema was created");
}

#[test]
fn what_cannot_work_is_refused_naming_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (args, says) in [
        (vec!["--check-config"], "--broker"),
        (
            vec![
                "--broker",
                "mqtt://127.0.0.1",
                "--db",
                "mysql://x",
                "--check-config",
            ],
            "sqlite:PATH",
        ),
        (
            vec![
                "--broker",
                "mqtt://127.0.0.1",
                "--filter",
                "$SYS/#",
                "--check-config",
            ],
            "$SYS",
        ),
        (
            vec![
                "--broker",
                "mqtt://127.0.0.1",
                "--keep",
                "forever",
                "--check-config",
            ],
            "30d",
        ),
    ] {
        let out = run(Command::new(bin("firehose-history"))
            .args(&args)
            .env("HOME", dir.path())
            .env_remove("STATE_DIRECTORY")
            .env_remove("XDG_STATE_HOME"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// The user in the URL and the password in a file (`mqtt://history@host`
/// with `--password-file`), as an operator writes it, logs in: against a
/// broker that refuses anonymous clients, it connects.
#[test]
fn a_url_user_with_a_password_file_logs_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = BrokerProc::with_users(dir.path(), &[("history", "h1st")], &["--no-anonymous"]);
    let pass = private_file(&dir.path().join("history.pass"), "h1st\n");
    let pass = pass.display().to_string();
    let db = format!("sqlite:{}", dir.path().join("h.db").display());
    let h = HistoryProc::start(
        &format!("mqtt://history@{}", b.mqtt()),
        &db,
        "127.0.0.1:0",
        &["--password-file", &pass],
    );
    let logs = h.proc_.logs();
    assert!(!logs.contains("BadUserNamePassword"), "{logs}");
}
