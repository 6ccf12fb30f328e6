//! Configuration: the TOML file (by flag or FIREHOSE_GERRIT_CONFIG), flags
//! over it, `--check-config`, and errors that name the fix.

use std::path::Path;
use std::process::Command;

use firehose_testkit::*;

fn gerrit() -> Command {
    Command::new(bin("firehose-gerrit"))
}

fn stderr(cmd: &mut Command) -> (bool, String) {
    let out = run(cmd);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn check_config_from_file_env_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = run(Command::new(require("ssh-keygen", "openssh-client"))
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(d.join("id"))
        .current_dir(d));
    assert!(out.status.success());
    std::fs::write(d.join("known_hosts"), "").unwrap();
    private_file(&d.join("pass"), "pw\n");
    let cfg = d.join("gerrit.toml");
    std::fs::write(
        &cfg,
        format!(
            "[publish]\nbroker = \"mqtt://bot@127.0.0.1:1\"\npassword_file = \"{p}\"\n\
             [source]\ngerrit = \"ssh://bot@review.example.org\"\nssh_key = \"{k}\"\nknown_hosts = \"{kh}\"\n",
            p = d.join("pass").display(),
            k = d.join("id").display(),
            kh = d.join("known_hosts").display()
        ),
    )
    .unwrap();
    let (ok, text) = stderr(gerrit().arg("--config").arg(&cfg).arg("--check-config"));
    assert!(ok, "{text}");
    assert!(text.contains("configuration OK"), "{text}");
    assert!(
        text.contains("ssh://bot@review.example.org:29418"),
        "{text}"
    );
    assert!(!text.contains("pw"), "the password never shows: {text}");
    // The environment names the file too; a flag overrides it.
    let (ok, text) = stderr(gerrit().env("FIREHOSE_GERRIT_CONFIG", &cfg).args([
        "--broker",
        "mqtts://bot@127.0.0.1:8883",
        "--check-config",
    ]));
    assert!(ok, "{text}");
    assert!(text.contains("mqtts://bot@127.0.0.1:8883"), "{text}");

    // Errors name the fix.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("pass"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, text) = stderr(gerrit().arg("--config").arg(&cfg).arg("--check-config"));
    assert!(!ok);
    assert!(text.contains("chmod 0600"), "{text}");
    std::fs::set_permissions(d.join("pass"), std::fs::Permissions::from_mode(0o600)).unwrap();

    let (ok, text) = stderr(
        gerrit()
            .arg("--config")
            .arg(&cfg)
            .arg("--known-hosts")
            .arg(d.join("missing"))
            .arg("--check-config"),
    );
    assert!(!ok);
    assert!(
        text.contains("ssh-keyscan -p 29418 review.example.org"),
        "{text}"
    );

    std::fs::set_permissions(d.join("id"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, text) = stderr(gerrit().arg("--config").arg(&cfg).arg("--check-config"));
    assert!(!ok);
    assert!(text.contains("chmod 0600"), "{text}");
    std::fs::set_permissions(d.join("id"), std::fs::Permissions::from_mode(0o600)).unwrap();

    // --check-config finds what would only fail (or be silently ignored)
    // at run time, and says what to do.
    for (flags, says) in [
        (&["--base-topic", "site1/+"][..], "wildcard"),
        (&["--base-topic", "/site1"][..], "empty level"),
        (&["--base-topic", "$SYS/x"][..], "reserved"),
        (
            &["--ca", "/nonexistent/ca.pem"][..],
            "not mqtts:// or wss://",
        ),
        (
            &[
                "--broker",
                "mqtts://bot@127.0.0.1:8883",
                "--ca",
                "/nonexistent/ca.pem",
            ][..],
            "/nonexistent/ca.pem",
        ),
    ] {
        let (ok, text) = stderr(
            gerrit()
                .arg("--config")
                .arg(&cfg)
                .args(flags)
                .arg("--check-config"),
        );
        assert!(!ok, "{flags:?} accepted");
        assert!(text.contains(says), "{flags:?}: {text}");
    }
    let no_password = d.join("nopass.toml");
    std::fs::write(
        &no_password,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("password_file"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let (ok, text) = stderr(
        gerrit()
            .arg("--config")
            .arg(&no_password)
            .arg("--check-config"),
    );
    assert!(!ok);
    assert!(
        text.contains("no password") && text.contains("--password-file"),
        "{text}"
    );

    std::fs::write(&cfg, "[source]\ngerit = \"typo\"\n").unwrap();
    let (ok, text) = stderr(gerrit().arg("--config").arg(&cfg).arg("--check-config"));
    assert!(!ok);
    assert!(
        text.contains("unknown field") && text.contains("gerit"),
        "{text}"
    );

    let (ok, text) = stderr(gerrit().arg("--check-config"));
    assert!(!ok);
    assert!(text.contains("--gerrit ssh://USER@HOST"), "{text}");
}

#[test]
fn shipped_sample_config_parses() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/gerrit.toml");
    let (_, text) = stderr(gerrit().arg("--config").arg(&sample).arg("--check-config"));
    // The sample names files that exist only on a real host: the error is
    // about those files, never about the config's syntax.
    assert!(
        !text.contains("unknown field") && !text.contains("expected"),
        "{text}"
    );
    assert!(text.contains("/etc/firehose/gerrit.pass"), "{text}");
}

#[test]
fn sample_config_has_every_key_and_only_known_ones() {
    // Every key the bridge knows, `None`s included (JSON keeps them).
    let full =
        firehose_bridge::config::FileConfig::<firehose_gerrit::config::GerritConfig>::default();
    let known = json_keys(&serde_json::to_value(&full).unwrap());
    let sample = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/gerrit.toml"),
    )
    .unwrap();
    assert_sample_complete("deploy/gerrit.toml", &sample, &known);
}

/// A replay of a file that is not there says which file once, and why.
#[test]
fn a_missing_replay_file_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let (ok, text) = stderr(
        gerrit()
            .arg("--replay")
            .arg(&missing)
            .args(["--print", "json"]),
    );
    assert!(!ok);
    let name = missing.display().to_string();
    assert!(
        text.contains(&format!(
            "source replay {name}: cannot open the file: No such file"
        )),
        "{text}"
    );
    assert_eq!(text.matches(&name).count(), 1, "{text}");
}
