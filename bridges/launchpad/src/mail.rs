//! Launchpad notification mail into lpmqtt's event: which mail is an event,
//! its fields, its topic, and both payload forms.
//!
//! lpmqtt's rules, kept for compatibility (`docs/launchpad.md` has them in
//! full): only mail whose `X-Generated-By` mentions Launchpad is an event.
//! Bug mail (`X-Launchpad-Notification-Type: bug`) becomes a dict of
//! strings: `event-type`, `bug-number` (from `[Bug N]` in the subject),
//! `project` (the first `X-Launchpad-Bug` header's `product=`, else its
//! `distribution=`), every other `key=value` of that header, `tags` and
//! `commenters` split on spaces, `bug-reporter`, `bug-modifier` and `body`.
//! Other notifications copy every `X-Launchpad*` header, plus `body`; we
//! also set `event-type` (the notification type) and `project`
//! (`X-Launchpad-Project`) when the mail says, so they get a useful topic.

pub use firehose::launchpad::LaunchpadEvent;
use mail_parser::{HeaderValue, Message, MessageParser};
use serde_json::{Map, Value};
use time::OffsetDateTime;

/// Why a Launchpad mail is not an event (it is dead-lettered, raw).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MailError {
    #[error("not a mail message (no headers could be read)")]
    NotMail,
    #[error("bug mail without an X-Launchpad-Bug header")]
    NoBugHeader,
    #[error("bug mail whose subject has no [Bug N]: {0:?}")]
    NoBugNumber(String),
    #[error("bug mail whose X-Launchpad-Bug names no product or distribution: {0:?}")]
    NoProject(String),
}

/// The mail in `raw` as an event: `Ok(None)` when it is not from Launchpad
/// (left alone), `Err` when it is but cannot be read as lpmqtt would.
pub fn parse(raw: &[u8]) -> Result<Option<LaunchpadEvent>, MailError> {
    // `X-Launchpad-*` headers are not standard ones: parsed as text, so
    // RFC 2047 encoded-words (non-ASCII names) arrive decoded. (mail-parser
    // applies the default only when some header is configured.)
    let msg = MessageParser::new()
        .with_minimal_headers()
        .with_message_ids()
        .default_header_text()
        .parse(raw)
        .filter(|m| !m.headers().is_empty())
        .ok_or(MailError::NotMail)?;
    let generated_by = header_texts(&msg, "X-Generated-By");
    if !generated_by.iter().any(|v| v.contains("Launchpad")) {
        return Ok(None);
    }
    let kind = header_texts(&msg, "X-Launchpad-Notification-Type")
        .into_iter()
        .next();
    let mut fields = Map::new();
    let mut tasks = Vec::new();
    if kind.as_deref() == Some("bug") {
        bug_fields(&msg, &mut fields, &mut tasks)?;
    } else {
        for h in msg.headers() {
            let name = h.name();
            if name.to_ascii_lowercase().starts_with("x-launchpad") {
                if let Some(v) = text(h.value()) {
                    fields.insert(name.to_owned(), Value::String(v));
                }
            }
        }
        if let Some(kind) = kind {
            fields.insert("event-type".into(), Value::String(kind));
        }
        if let Some(p) = header_texts(&msg, "X-Launchpad-Project").into_iter().next() {
            fields.insert("project".into(), Value::String(p));
        }
    }
    fields.insert("body".into(), Value::String(body(&msg)));
    Ok(Some(LaunchpadEvent {
        fields,
        tasks,
        message_id: msg.message_id().map(str::to_owned),
        date: msg
            .date()
            .and_then(|d| OffsetDateTime::from_unix_timestamp(d.to_timestamp()).ok()),
    }))
}

/// [`parse`], refusing mail over `max` bytes first; the error is the
/// dead-letter reason.
pub fn parse_limited(raw: &[u8], max: usize) -> Result<Option<LaunchpadEvent>, Refused> {
    if raw.len() > max {
        return Err(Refused::TooBig {
            size: raw.len(),
            max,
        });
    }
    Ok(parse(raw)?)
}

/// Why a Launchpad mail is dead-lettered instead of published: the dead
/// letter's reason.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("mail of {size} bytes is over --max-mail-bytes ({max})")]
    TooBig { size: usize, max: usize },
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error(transparent)]
    Dkim(#[from] crate::dkim::DkimRefusal),
}

/// What every mail passes before it is published, whatever the input:
/// the size limit, then (with `--dkim`) a valid signature of the signing
/// domain. An `Err` is the dead letter's reason.
#[derive(Clone)]
pub struct Screen {
    pub max_mail_bytes: usize,
    pub dkim: Option<std::sync::Arc<crate::dkim::Dkim>>,
}

impl Screen {
    /// The event of a Launchpad mail, `None` for other mail (left alone,
    /// not checked), or why the mail is refused.
    pub async fn read(&self, raw: &[u8]) -> Result<Option<LaunchpadEvent>, Refused> {
        let ev = parse_limited(raw, self.max_mail_bytes)?;
        if let (Some(_), Some(dkim)) = (&ev, &self.dkim) {
            dkim.verify(raw).await?;
        }
        Ok(ev)
    }
}

/// lpmqtt's bug fields.
fn bug_fields(
    msg: &Message<'_>,
    fields: &mut Map<String, Value>,
    tasks: &mut Vec<Map<String, Value>>,
) -> Result<(), MailError> {
    let s = |v: String| Value::String(v);
    fields.insert("event-type".into(), s("bug".into()));
    let subject = msg.subject().unwrap_or_default();
    let number = bug_number(subject).ok_or_else(|| MailError::NoBugNumber(subject.to_owned()))?;
    fields.insert("bug-number".into(), s(number));
    for header in header_texts(msg, "X-Launchpad-Bug") {
        tasks.push(task(&header));
    }
    let first = tasks.first().ok_or(MailError::NoBugHeader)?;
    let project = first
        .get("product")
        .or_else(|| first.get("distribution"))
        .cloned()
        .ok_or_else(|| MailError::NoProject(header_texts(msg, "X-Launchpad-Bug").join(" | ")))?;
    fields.insert("project".into(), project);
    // Whichever key became `project` is not repeated.
    let project_key = match first.contains_key("product") {
        true => "product",
        false => "distribution",
    };
    for (k, v) in first {
        if k != project_key {
            fields.insert(k.clone(), v.clone());
        }
    }
    let words = |name: &str| {
        let list: Vec<Value> = header_texts(msg, name)
            .iter()
            .flat_map(|v| v.split_whitespace())
            .map(|w| Value::String(w.to_owned()))
            .collect();
        Value::Array(list)
    };
    fields.insert("tags".into(), words("X-Launchpad-Bug-Tags"));
    fields.insert("commenters".into(), words("X-Launchpad-Bug-Commenters"));
    for (key, header) in [
        ("bug-reporter", "X-Launchpad-Bug-Reporter"),
        ("bug-modifier", "X-Launchpad-Bug-Modifier"),
    ] {
        if let Some(v) = header_texts(msg, header).into_iter().next() {
            fields.insert(key.into(), s(v));
        }
    }
    Ok(())
}

/// `product=qemu; status=New; assignee=None;` (folded or not) as a map.
fn task(header: &str) -> Map<String, Value> {
    header
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), Value::String(v.trim().to_owned())))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// N from the first `[Bug N]` in a subject (a list may put its own
/// `[list]` tag first).
fn bug_number(subject: &str) -> Option<String> {
    let mut rest = subject;
    while let Some(i) = rest.find("[Bug ") {
        rest = &rest[i + 5..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty() && rest[digits.len()..].starts_with(']') {
            return Some(digits);
        }
    }
    None
}

/// Every value of the header `name` (any case) as unfolded, decoded text.
fn header_texts(msg: &Message<'_>, name: &str) -> Vec<String> {
    msg.headers()
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case(name))
        .filter_map(|h| text(h.value()))
        .collect()
}

/// A header value as one line of text, whitespace runs collapsed.
fn text(v: &HeaderValue<'_>) -> Option<String> {
    let joined = match v {
        HeaderValue::Text(t) => t.to_string(),
        HeaderValue::TextList(l) => l.join(", "),
        _ => return None,
    };
    Some(joined.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The first text part, decoded (transfer encoding and charset).
fn body(msg: &Message<'_>) -> String {
    msg.body_text(0).map(|b| b.into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use firehose::Publishable;
    use time::OffsetDateTime;

    fn fixture(name: &str) -> Vec<u8> {
        let p = format!(
            "{}/../../fixtures/launchpad/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    fn event(name: &str) -> LaunchpadEvent {
        parse(&fixture(name)).unwrap().expect("a Launchpad mail")
    }

    #[test]
    fn bug_mail_has_lpmqtt_fields() {
        let e = event("bug-status-change-qemu-1838703.eml");
        assert_eq!(e.topic(), "launchpad/qemu/bug/1838703");
        let f = &e.fields;
        assert_eq!(f["event-type"], "bug");
        assert_eq!(f["bug-number"], "1838703");
        assert_eq!(f["project"], "qemu");
        assert_eq!(f["status"], "Fix Released");
        assert_eq!(f["importance"], "Undecided");
        assert_eq!(f["assignee"], "None");
        assert_eq!(
            f["commenters"],
            serde_json::json!(["gschafer", "lersek", "philmd"])
        );
        assert_eq!(f["bug-reporter"], "Toolybird (gschafer)");
        assert_eq!(f["bug-modifier"], "Thomas Huth (th-huth)");
        assert!(!f.contains_key("product"));
        let body = f["body"].as_str().unwrap();
        assert!(
            !body.contains("=\n") && !body.contains("=3D"),
            "decoded: {body}"
        );
        assert_eq!(
            e.message_id.as_deref(),
            Some("156593064352.26089.9329486174178098831.launchpad@soybean.canonical.com")
        );
    }

    #[test]
    fn several_tasks_first_one_names_the_project() {
        let e = event("bug-comment-nova-qemu-1761798.eml");
        assert_eq!(e.topic(), "launchpad/nova/bug/1761798");
        assert_eq!(e.tasks.len(), 2);
        assert_eq!(e.tasks[1]["product"], "qemu");
        assert_eq!(
            e.fields["tags"],
            serde_json::json!(["libvirt", "live-migration"])
        );

        let e = event("bug-new-base64-multi-task-1928360.eml");
        assert_eq!(e.topic(), "launchpad/lubuntu-default-settings/bug/1928360");
        assert_eq!(e.tasks.len(), 4);
        assert_eq!(e.tasks[2]["sourcepackage"], "apparmor");
        assert!(!e.fields.contains_key("bug-modifier"), "the mail has none");
        let body = e.fields["body"].as_str().unwrap();
        assert!(body.contains("Fcitx"), "base64 decoded: {body}");
    }

    #[test]
    fn distribution_bugs_keep_the_source_package() {
        let e = event("bug-distribution-ubuntu-1777070.eml");
        assert_eq!(e.topic(), "launchpad/ubuntu/bug/1777070");
        assert_eq!(e.fields["sourcepackage"], "apparmor");
        assert_eq!(e.fields["status"], "Confirmed");
        assert_eq!(e.fields["tags"], serde_json::json!(["bionic"]));
        let c = e.fields["commenters"].as_array().unwrap();
        assert!(c.len() > 6, "folded header unfolded: {c:?}");
    }

    #[test]
    fn other_notifications_copy_their_headers() {
        let e = event("code-review-merge-proposal.eml");
        let f = &e.fields;
        assert_eq!(f["X-Launchpad-Notification-Type"], "code-review");
        assert!(f.contains_key("X-Launchpad-Branch"), "{f:?}");
        assert_eq!(f["event-type"], "code-review");
        assert!(e.topic().starts_with("launchpad/"), "{}", e.topic());
        assert!(e.topic().ends_with("/code-review"), "{}", e.topic());
    }

    #[test]
    fn non_launchpad_mail_is_left_alone_and_bad_mail_is_an_error() {
        assert_eq!(
            parse(&fixture("not-launchpad-debian-bts-1050256.eml")),
            Ok(None)
        );
        let bad = b"X-Generated-By: Launchpad (canonical.com)\nX-Launchpad-Notification-Type: bug\nSubject: no number\n\nbody\n";
        assert!(matches!(parse(bad), Err(MailError::NoBugNumber(_))));
        assert!(parse(b"").is_err());
    }

    #[test]
    fn cloudevent_carries_every_task() {
        let e = event("bug-comment-nova-qemu-1761798.eml");
        let ce = e.cloudevent("imaps://lp@mail.example/INBOX", OffsetDateTime::UNIX_EPOCH);
        assert_eq!(ce.kind, "launchpad.bug");
        assert_eq!(ce.subject.as_deref(), Some("1761798"));
        assert_eq!(
            ce.id,
            firehose::launchpad::event_id(&e.raw()),
            "the id a reader of the raw payload computes too"
        );
        let data: Value = serde_json::from_str(ce.data.get()).unwrap();
        assert_eq!(data["tasks"].as_array().unwrap().len(), 2);
        assert_eq!(data["bug-number"], "1761798");
        let raw: Value = serde_json::from_slice(&e.raw()).unwrap();
        assert!(raw.get("tasks").is_none(), "raw mode is lpmqtt's dict only");
    }

    #[test]
    fn every_fixture_reads_back_in_both_payload_modes() {
        use firehose::reader::{decode, Body};
        let dir = format!("{}/../../fixtures/launchpad", env!("CARGO_MANIFEST_DIR"));
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let Ok(Some(ev)) = parse(&std::fs::read(e.path()).unwrap()) else {
                continue;
            };
            let ce = ev.cloudevent("imaps://lp@mail/INBOX", OffsetDateTime::UNIX_EPOCH);
            let reads = [
                decode(&ev.topic(), &ev.raw(), false),
                decode(&ev.topic(), &ce.to_json(), false),
            ];
            assert_eq!(reads[0].id, reads[1].id, "one id in both modes");
            assert!(reads[0].id.is_some());
            for read in reads {
                assert_eq!(read.kind, format!("launchpad.{}", ev.event_type()));
                assert_eq!(read.subject.as_deref(), ev.bug_number());
                match read.body {
                    Body::Launchpad(l) => {
                        assert_eq!(l.project(), ev.project());
                        assert_eq!(l.fields, ev.fields);
                    }
                    other => panic!("{other:?}"),
                }
            }
            n += 1;
        }
        assert_eq!(n, 6);
    }

    #[test]
    fn encoded_words_in_launchpad_headers_arrive_decoded_in_both_modes() {
        use firehose::reader::{decode, Body};
        let mail = "From: Launchpad Bug Tracker <1@bugs.launchpad.net>\r\n\
            To: someone@example.org\r\n\
            Subject: [Bug 42] =?utf-8?q?Caf=C3=A9?= crashes\r\n\
            Message-Id: <x@launchpad.net>\r\n\
            X-Generated-By: Launchpad (canonical.com)\r\n\
            X-Launchpad-Notification-Type: bug\r\n\
            X-Launchpad-Bug: product=nova; status=New; importance=Undecided;\r\n\
            \tassignee=None;\r\n\
            X-Launchpad-Bug-Reporter: =?utf-8?q?Jos=C3=A9_Garc=C3=ADa?=\r\n \
            =?utf-8?q?_=28jgarcia=29?=\r\n\
            X-Launchpad-Bug-Modifier: =?iso-8859-1?q?Ren=E9?= (rene)\r\n\
            Content-Type: text/plain; charset=utf-8\r\n\
            \r\n\
            body\r\n";
        let ev = parse(mail.as_bytes()).unwrap().expect("a Launchpad mail");
        assert_eq!(ev.fields["bug-reporter"], "José García (jgarcia)");
        assert_eq!(ev.fields["bug-modifier"], "René (rene)");
        assert_eq!(ev.fields["assignee"], "None", "folded header unfolded");
        let ce = ev.cloudevent("imaps://lp@mail/INBOX", OffsetDateTime::UNIX_EPOCH);
        for read in [
            decode(&ev.topic(), &ev.raw(), false),
            decode(&ev.topic(), &ce.to_json(), false),
        ] {
            match read.body {
                Body::Launchpad(l) => {
                    assert_eq!(l.fields["bug-reporter"], "José García (jgarcia)")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
