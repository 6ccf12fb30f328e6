//! firehose-launchpad against a real Dovecot IMAP server and a real broker:
//! every Launchpad fixture on its topic with lpmqtt's fields (raw) and the
//! CloudEvents envelope; other mail left unseen and unpublished; IDLE; a
//! Dovecot restart survived; a broker outage loses nothing and marks
//! nothing seen that was not delivered; `--maildir` and `--mbox`.

use std::path::{Path, PathBuf};
use std::process::Command;

use firehose_testkit::*;
use serde_json::Value;

use firehose_testkit::logins::LAUNCHPAD as BRIDGE;

/// The fixtures: (file name, raw mail).
fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/launchpad");
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("fixtures/launchpad")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

/// Topic each Launchpad fixture must arrive on.
fn expected_topics() -> Vec<&'static str> {
    let mut v = vec![
        "launchpad/lubuntu-default-settings/bug/1928360",
        "launchpad/nova/bug/1761798",
        "launchpad/qemu/bug/1838703",
        "launchpad/snapd/bug/2025030",
        "launchpad/ubuntu/bug/1777070",
        "launchpad/apparmor-profiles/code-review",
    ];
    v.sort();
    v
}

/// The qemu status-change fixture, which [`variant`] copies.
fn qemu() -> Vec<u8> {
    fixtures()
        .into_iter()
        .find(|(n, _)| n.contains("qemu-1838703"))
        .expect("the qemu fixture")
        .1
}

/// A copy of the qemu fixture with its own Message-ID and bug number.
fn variant(raw: &[u8], n: u32) -> Vec<u8> {
    String::from_utf8_lossy(raw)
        .replace("[Bug 1838703]", &format!("[Bug 99000{n}]"))
        .replace("Message-Id: <", &format!("Message-Id: <v{n}."))
        .into_bytes()
}

struct Setup {
    dir: tempfile::TempDir,
    certs: PathBuf,
    dovecot: Dovecot,
    imap_pass: PathBuf,
}

fn setup() -> Setup {
    setup_with(Dovecot::start)
}

fn setup_with(start: fn(&Path, &Path) -> Dovecot) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_certs(&certs);
    let dovecot = start(&dir.path().join("dovecot"), &certs);
    let imap_pass = private_file(
        &dir.path().join("imap.pass"),
        &format!("{}\n", dovecot.password),
    );
    Setup {
        dir,
        certs,
        dovecot,
        imap_pass,
    }
}

impl Setup {
    fn deliver_fixtures(&self) {
        for (_, raw) in fixtures() {
            self.dovecot.deliver(&raw);
        }
    }

    /// firehose-launchpad reading `imap_url` (`{port}`/`{tls}` filled in).
    fn bridge(&self, mqtt: &str, imap_url: &str, extra: &[&str]) -> Proc {
        let url = imap_url
            .replace("{port}", &self.dovecot.port.to_string())
            .replace("{tls}", &self.dovecot.tls_port.to_string());
        let pw = bridge_password_file(self.dir.path(), BRIDGE.1);
        Proc::spawn(
            "firehose-launchpad",
            Command::new(bin("firehose-launchpad"))
                .args(["--imap", &url])
                .arg("--imap-password-file")
                .arg(&self.imap_pass)
                .arg("--imap-ca")
                .arg(self.certs.join("ca.pem"))
                .args(["--broker", &format!("mqtt://{}@{mqtt}", BRIDGE.0)])
                .arg("--password-file")
                .arg(pw)
                .arg("--dead-letter")
                .arg(self.dir.path().join("dead-letter.jsonl"))
                .args(["--instance", "test"])
                .args(extra),
        )
    }
}

/// `mosquitto_sub -v` output as (topic, JSON payload).
fn received(out: &str) -> Vec<(String, Value)> {
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(t, p)| {
            let v = serde_json::from_str(p).unwrap_or_else(|e| panic!("{t}: {e}: {p}"));
            (t.to_owned(), v)
        })
        .collect()
}

fn topics(got: &[(String, Value)]) -> Vec<&str> {
    let mut t: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    t.sort();
    t
}

#[test]
fn imap_starttls_raw_lpmqtt_fields_idle_and_other_mail_left_alone() {
    let s = setup();
    s.deliver_fixtures();
    let b = BrokerProc::with_users(s.dir.path(), &[BRIDGE], &[]);
    let sub = Sub::spawn(&b, &["-t", "launchpad/#", "-v", "-C", "6", "-W", "30"]);
    let br = s.bridge(
        &b.mqtt().to_string(),
        "imap://lp@127.0.0.1:{port}/INBOX",
        &["--payload", "raw"],
    );
    let (_, out, _) = sub.output();
    let got = received(&out);
    assert_eq!(topics(&got), expected_topics(), "{}", br.logs());
    let (_, bug) = got
        .iter()
        .find(|(t, _)| t == "launchpad/qemu/bug/1838703")
        .expect("the qemu bug");
    assert_eq!(bug["event-type"], "bug");
    assert_eq!(bug["bug-number"], "1838703");
    assert_eq!(bug["status"], "Fix Released");
    assert_eq!(
        bug["commenters"],
        serde_json::json!(["gschafer", "lersek", "philmd"])
    );
    assert_eq!(bug["bug-modifier"], "Thomas Huth (th-huth)");
    assert!(bug.get("tasks").is_none(), "raw is lpmqtt's dict");
    assert!(bug["body"].as_str().unwrap().len() > 100);
    // Delivered mail is marked seen; the Debian BTS mail is not touched.
    wait_until(
        WAIT,
        || s.dovecot.seen_and_total() == (6, 7),
        || format!("6 of 7 seen, now {:?}", s.dovecot.seen_and_total()),
    );
    assert!(br.logs().contains("idle=true"), "{}", br.logs());

    // IDLE: a mail delivered while the bridge waits arrives.
    let sub = Sub::spawn(
        &b,
        &["-t", "launchpad/+/bug/990001", "-v", "-C", "1", "-W", "30"],
    );
    s.dovecot.deliver(&variant(&qemu(), 1));
    let (_, out, _) = sub.output();
    assert_eq!(topics(&received(&out)), vec!["launchpad/qemu/bug/990001"]);
    wait_until(
        WAIT,
        || s.dovecot.seen_and_total() == (7, 8),
        || format!("7 of 8 seen, now {:?}", s.dovecot.seen_and_total()),
    );
    assert!(
        !br.logs().contains(&s.dovecot.password),
        "the IMAP password never shows"
    );
}

#[test]
fn imaps_cloudevents_survive_a_dovecot_restart_and_move_delivered_mail() {
    let mut s = setup();
    s.deliver_fixtures();
    let b = BrokerProc::with_users(s.dir.path(), &[BRIDGE], &[]);
    let sub = Sub::spawn(&b, &["-t", "launchpad/#", "-v", "-C", "6", "-W", "30"]);
    let br = s.bridge(
        &b.mqtt().to_string(),
        "imaps://lp@127.0.0.1:{tls}/INBOX",
        &["--after", "move:Done"],
    );
    let (_, out, _) = sub.output();
    let got = received(&out);
    assert_eq!(topics(&got), expected_topics(), "{}", br.logs());
    let (_, ce) = got
        .iter()
        .find(|(t, _)| t == "launchpad/nova/bug/1761798")
        .expect("the nova bug");
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["type"], "launchpad.bug");
    assert_eq!(ce["subject"], "1761798");
    // The id is derived from the raw payload (the same a reader of a raw
    // payload computes), not the Message-ID, which raw mode does not carry.
    let id = ce["id"].as_str().unwrap();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{ce}"
    );
    assert!(ce["source"]
        .as_str()
        .unwrap()
        .starts_with("imaps://lp@127.0.0.1:"));
    let tasks = ce["data"]["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[1]["product"], "qemu");
    // Delivered mail moved out of INBOX; the other mail stays, unseen.
    wait_until(
        WAIT,
        || s.dovecot.seen_and_total() == (0, 1),
        || {
            format!(
                "INBOX keeps only the unseen BTS mail, now {:?}",
                s.dovecot.seen_and_total()
            )
        },
    );

    // Dovecot restarts under the bridge: it reconnects and goes on.
    s.dovecot.restart();
    let sub = Sub::spawn(
        &b,
        &["-t", "launchpad/+/bug/990002", "-v", "-C", "1", "-W", "60"],
    );
    s.dovecot.deliver(&variant(&qemu(), 2));
    let (_, out, _) = sub.output();
    assert_eq!(
        topics(&received(&out)),
        vec!["launchpad/qemu/bug/990002"],
        "{}",
        br.logs()
    );
    assert!(
        br.count_log("watching for Launchpad mail") >= 2,
        "{}",
        br.logs()
    );
}

#[test]
fn polls_when_the_server_has_no_idle_and_deletes_when_told() {
    let s = setup_with(Dovecot::start_without_idle);
    let b = BrokerProc::with_users(s.dir.path(), &[BRIDGE], &[]);
    let br = s.bridge(
        &b.mqtt().to_string(),
        "imaps://lp@127.0.0.1:{tls}/INBOX",
        &["--poll-interval", "1", "--after", "delete"],
    );
    br.wait_log("watching for Launchpad mail");
    assert!(br.logs().contains("idle=false"), "{}", br.logs());
    let sub = Sub::spawn(
        &b,
        &["-t", "launchpad/+/bug/990009", "-v", "-C", "1", "-W", "30"],
    );
    s.dovecot.deliver(&variant(&qemu(), 9));
    s.dovecot
        .deliver(b"From: someone@example.org\nSubject: not launchpad\n\nhello\n");
    let (_, out, _) = sub.output();
    assert_eq!(topics(&received(&out)), vec!["launchpad/qemu/bug/990009"]);
    // The delivered mail is deleted; the other one stays, unseen.
    wait_until(
        WAIT,
        || s.dovecot.seen_and_total() == (0, 1),
        || {
            format!(
                "only the other mail left, now {:?}",
                s.dovecot.seen_and_total()
            )
        },
    );
}

#[test]
fn broker_outage_loses_nothing_and_marks_nothing_undelivered_seen() {
    let s = setup();
    let pw = PasswdSwitch::new(s.dir.path(), BRIDGE);
    let port = free_port();
    let mut b1 = BrokerProc::on_port(port, &pw.active, &[]);
    let br = s.bridge(
        &format!("127.0.0.1:{port}"),
        "imap://lp@127.0.0.1:{port}/INBOX",
        &["--retry-auth"],
    );
    br.wait_log("watching for Launchpad mail");
    br.wait_log("connected to the broker");
    b1.signal("TERM");
    assert!(b1.wait_exit().success());
    br.wait_log("broker connection lost");
    for n in 3..6 {
        s.dovecot.deliver(&variant(&qemu(), n));
    }
    br.wait_log("published=3");
    assert_eq!(
        s.dovecot.seen_and_total(),
        (0, 3),
        "nothing is seen before the broker has it"
    );
    // A new broker keeps the bridge out until the subscriber is in.
    pw.refuse();
    let b2 = BrokerProc::on_port(port, &pw.active, &[]);
    let sub = Sub::spawn(&b2, &["-t", "launchpad/#", "-v", "-C", "3", "-W", "60"]);
    pw.admit();
    b2.signal("HUP");
    let (_, out, _) = sub.output();
    assert_eq!(
        topics(&received(&out)),
        vec![
            "launchpad/qemu/bug/990003",
            "launchpad/qemu/bug/990004",
            "launchpad/qemu/bug/990005"
        ],
        "{}",
        br.logs()
    );
    wait_until(
        WAIT,
        || s.dovecot.seen_and_total() == (3, 3),
        || {
            format!(
                "all seen once delivered, now {:?}",
                s.dovecot.seen_and_total()
            )
        },
    );
}

/// A bug mail Launchpad sent that lpmqtt could not read (no `[Bug N]`).
const BROKEN: &str = "X-Generated-By: Launchpad (canonical.com)\nX-Launchpad-Notification-Type: bug\nMessage-Id: <broken@example>\nSubject: a subject without the number\n\nbody\n";

#[test]
fn maildir_backfill_publishes_then_exits_and_dead_letters_the_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("Maildir");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(md.join(sub)).unwrap();
    }
    for (i, (name, raw)) in fixtures().into_iter().enumerate() {
        let sub = if i % 2 == 0 { "new" } else { "cur" };
        std::fs::write(md.join(sub).join(format!("{i}.{name}:2,")), raw).unwrap();
    }
    std::fs::write(md.join("new/zz.broken"), BROKEN).unwrap();
    let b = BrokerProc::with_users(dir.path(), &[BRIDGE], &[]);
    let sub = Sub::spawn(&b, &["-t", "launchpad/#", "-v", "-C", "6", "-W", "30"]);
    let pw = bridge_password_file(dir.path(), BRIDGE.1);
    let dl = dir.path().join("dl.jsonl");
    let out = run(Command::new(bin("firehose-launchpad"))
        .arg("--maildir")
        .arg(&md)
        .args(["--broker", &format!("mqtt://{}@{}", BRIDGE.0, b.mqtt())])
        .arg("--password-file")
        .arg(&pw)
        .arg("--dead-letter")
        .arg(&dl));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("mails=8 published=6 not_launchpad=1 dead_lettered=1"),
        "{log}"
    );
    let (_, got, _) = sub.output();
    assert_eq!(topics(&received(&got)), expected_topics());
    let dead = std::fs::read_to_string(&dl).unwrap();
    let line: Value = serde_json::from_str(dead.lines().next().unwrap()).unwrap();
    assert_eq!(line["text"], BROKEN, "the raw mail is kept whole");
    assert!(
        line["reason"].as_str().unwrap().contains("[Bug N]"),
        "{line}"
    );
    // The maildir is only read.
    assert_eq!(std::fs::read_dir(md.join("new")).unwrap().count(), 5);
}

#[test]
fn mbox_from_stdin_with_print() {
    let mut mbox = Vec::new();
    for (_, raw) in fixtures() {
        mbox.extend_from_slice(b"From launchpad@example Thu Jan  1 00:00:00 2024\n");
        // mboxrd: body lines that start with "From " get a ">".
        for line in raw.split_inclusive(|b| *b == b'\n') {
            if line.starts_with(b"From ") {
                mbox.push(b'>');
            }
            mbox.extend_from_slice(line);
        }
        mbox.push(b'\n');
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin("firehose-launchpad"))
        .args(["--mbox", "-", "--print", "json", "--payload", "raw"])
        .arg("--dead-letter")
        .arg(dir.path().join("dl.jsonl"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn firehose-launchpad");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&mbox).unwrap();
    let (out, _) = finish(child, WAIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let printed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut t: Vec<&str> = printed
        .iter()
        .map(|p| p["topic"].as_str().unwrap())
        .collect();
    t.sort();
    assert_eq!(t, expected_topics());
    assert!(
        stderr.contains("mails=7 published=6 not_launchpad=1"),
        "{stderr}"
    );
}

#[test]
fn check_config_and_errors_that_name_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let lp = |args: &[&str]| outcome(Command::new(bin("firehose-launchpad")).args(args));
    let pass = private_file(&dir.path().join("imap.pass"), "hunter2\n");
    let p = pass.to_str().unwrap();
    let (ok, text) = lp(&[
        "--imap",
        "imaps://lp@mail.example/Launchpad",
        "--imap-password-file",
        p,
        "--check-config",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("configuration OK") && text.contains("imaps://lp@mail.example/Launchpad"),
        "{text}"
    );
    assert!(!text.contains("hunter2"));
    let (ok, text) = lp(&[
        "--imap",
        "imap://lp@mail.example/",
        "--imap-password-file",
        p,
        "--check-config",
    ]);
    assert!(ok, "STARTTLS is the default for imap://: {text}");
    let (ok, text) = lp(&["--check-config"]);
    assert!(
        !ok && text.contains("--imap imaps://USER@HOST/FOLDER"),
        "{text}"
    );
    let (ok, text) = lp(&["--imap", "imaps://lp@mail.example/", "--check-config"]);
    assert!(!ok && text.contains("--imap-password-file"), "{text}");
    let (ok, text) = lp(&[
        "--imap",
        "imaps://lp@h/",
        "--imap-password-file",
        p,
        "--after",
        "archive",
        "--check-config",
    ]);
    assert!(!ok && text.contains("move:FOLDER"), "{text}");
    let (ok, text) = lp(&[
        "--maildir",
        "/srv/mail",
        "--imap-password-file",
        p,
        "--check-config",
    ]);
    assert!(!ok && text.contains("drop it"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, text) = lp(&[
        "--imap",
        "imaps://lp@h/",
        "--imap-password-file",
        p,
        "--check-config",
    ]);
    assert!(!ok && text.contains("chmod 0600"), "{text}");

    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/launchpad.toml");
    let (_, text) = lp(&["--config", sample.to_str().unwrap(), "--check-config"]);
    assert_sample_checks(&text);
}

#[test]
fn sample_config_has_every_key_and_only_known_ones() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/launchpad.toml");
    let text = std::fs::read_to_string(&sample).unwrap();
    // Every key the bridge knows, `None`s included (JSON keeps them).
    let full =
        firehose_bridge::config::FileConfig::<firehose_launchpad::config::LaunchpadConfig>::default(
        );
    let known = json_keys(&serde_json::to_value(&full).unwrap());
    assert_sample_complete("deploy/launchpad.toml", &text, &known);
}

/// A mail over `--max-mail-bytes` (by its RFC822.SIZE) is not fetched
/// whole: its headers go to the dead-letter file with the reason, it is
/// marked seen, and the mail beside it is published.
#[test]
fn oversize_mail_is_not_fetched_whole() {
    let s = setup();
    let b = BrokerProc::with_users(s.dir.path(), &[BRIDGE], &[]);
    let big = String::from_utf8_lossy(&variant(&qemu(), 7)).replace(
        "\n\n",
        &format!("\n\n{}\n", "BIG-BODY-LINE ".repeat(20_000)),
    );
    s.dovecot.deliver(big.as_bytes());
    s.dovecot.deliver(&variant(&qemu(), 8));
    let sub = Sub::spawn(
        &b,
        &["-t", "launchpad/+/bug/#", "-v", "-C", "1", "-W", "30"],
    );
    let br = s.bridge(
        &b.mqtt().to_string(),
        "imaps://lp@127.0.0.1:{tls}/INBOX",
        &["--max-mail-bytes", "100000"],
    );
    let (_, out, _) = sub.output();
    assert_eq!(
        topics(&received(&out)),
        vec!["launchpad/qemu/bug/990008"],
        "{}",
        br.logs()
    );
    let dl_path = s.dir.path().join("dead-letter.jsonl");
    wait_until(
        WAIT,
        || std::fs::read_to_string(&dl_path).is_ok_and(|t| t.contains("over --max-mail-bytes")),
        || "the oversize mail's dead letter".into(),
    );
    let dl = std::fs::read_to_string(&dl_path).unwrap();
    assert!(dl.contains("not fetched"), "{dl}");
    assert!(
        !dl.contains("BIG-BODY-LINE"),
        "only the headers are kept: {dl}"
    );
    wait_until(
        WAIT,
        || s.dovecot.seen_and_total() == (2, 2),
        || format!("both mails seen, now {:?}", s.dovecot.seen_and_total()),
    );
}

/// A server that accepts and then never answers (hung, or half-open) is
/// noticed by the command deadline: the connection counts as lost, the
/// bridge's status says why, and it tries again.
#[test]
fn a_server_that_stops_answering_is_noticed() {
    let s = setup();
    let b = BrokerProc::with_users(s.dir.path(), &[BRIDGE], &[]);
    // Greets, then reads and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = std::thread::spawn(move || {
        let mut held = Vec::new();
        // Bounded: the bridge reconnects a few times at most before the
        // test ends and wakes this accept one last time.
        for c in silent.incoming().take(100) {
            if stop2.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            if let Ok(mut c) = c {
                use std::io::Write;
                let _ = c.write_all(b"* OK IMAP4rev1 ready\r\n");
                held.push(c);
            }
        }
    });
    let br = s.bridge(
        &b.mqtt().to_string(),
        &format!("imap://lp@127.0.0.1:{port}/INBOX"),
        &["--imap-timeout", "1"],
    );
    br.wait_log("no answer in 1s (--imap-timeout)");
    let (mut r, _) = Raw::connect(b.mqtt(), 4, "status-watch", None);
    r.send(&firehose_testkit::subscribe(
        4,
        1,
        "firehose/status/launchpad/test",
        0,
    ));
    loop {
        let (t, body) = r.expect("a degraded status naming the silent server");
        if t & 0xf0 != 0x30 {
            continue;
        }
        let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
        let v: Value = serde_json::from_slice(&body[2 + tl..]).expect("status JSON");
        if v["state"] == "degraded"
            && v["upstream_error"]
                .as_str()
                .is_some_and(|e| e.contains("not responding"))
        {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(br);
    // Wakes the accept so the server thread sees the flag and ends.
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    server.join().unwrap();
}

/// `--dkim`: only Launchpad mail with a valid signature of launchpad.net
/// is published; a forged one (unsigned) and a tampered one (signed, then
/// changed) are dead-lettered with the reason. Keys pinned in a file, so
/// nothing asks DNS.
#[test]
fn dkim_dead_letters_forged_and_tampered_mail() {
    let dir = tempfile::tempdir().unwrap();
    let lp = firehose_launchpad::dkim::testing::Signer::new();
    let keys = dir.path().join("dkim.keys");
    std::fs::write(&keys, lp.key_line("lp2026")).unwrap();
    let maildir = dir.path().join("mail");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    let signed = lp.sign(&variant(&qemu(), 1), "launchpad.net", "lp2026");
    let tampered =
        String::from_utf8_lossy(&lp.sign(&variant(&qemu(), 2), "launchpad.net", "lp2026"))
            .replace("[Bug 990002]", "[Bug 990003]")
            .into_bytes();
    let forged = variant(&qemu(), 4);
    for (name, raw) in [
        ("1.signed", &signed),
        ("2.tampered", &tampered),
        ("3.forged", &forged),
    ] {
        std::fs::write(maildir.join("new").join(name), raw).unwrap();
    }
    let dl = dir.path().join("dl.jsonl");
    let out = run(Command::new(bin("firehose-launchpad"))
        .arg("--maildir")
        .arg(&maildir)
        .args(["--print", "json", "--dkim", "--dkim-keys"])
        .arg(&keys)
        .arg("--dead-letter")
        .arg(&dl));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let topics: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["topic"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(topics, vec!["launchpad/qemu/bug/990001"], "{stderr}");
    let dead = std::fs::read_to_string(&dl).unwrap();
    assert_eq!(dead.lines().count(), 2, "{dead}");
    assert!(
        dead.contains("2.tampered: DKIM: the signature of launchpad.net does not verify"),
        "{dead}"
    );
    assert!(
        dead.contains("3.forged: DKIM: no signature of launchpad.net"),
        "{dead}"
    );
}
