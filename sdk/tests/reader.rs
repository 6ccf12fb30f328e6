//! Every fixture event of every source, published in both payload modes,
//! reads back into the right typed variant with the same normalized fields
//! (type, id, subject, data). Launchpad mail is parsed by the bridge crate;
//! its round trip is tested there.

use firehose::nova::Notification;
use firehose::reader::{decode, Body};
use firehose::{gerrit::GerritEvent, Publishable};
use serde_json::Value;
use time::OffsetDateTime;

fn fixture(path: &str) -> String {
    let p = format!("{}/../fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// Publishes `ev` both ways (as the bridges do) and reads both back.
fn both_modes(ev: &impl Publishable) -> [firehose::reader::Event; 2] {
    let topic = ev.topic();
    let ce = ev
        .cloudevent("test://source", OffsetDateTime::UNIX_EPOCH)
        .to_json();
    [decode(&topic, &ev.raw(), false), decode(&topic, &ce, false)]
}

#[test]
fn gerrit_events_read_the_same_in_both_modes() {
    let mut n = 0;
    for line in fixture("gerrit/stream-events.jsonl")
        .lines()
        .filter(|l| !l.is_empty())
    {
        let g = GerritEvent::parse(line.as_bytes()).unwrap();
        let [raw, ce] = both_modes(&g);
        for ev in [&raw, &ce] {
            assert_eq!(ev.kind, format!("gerrit.{}", g.event_type()), "{line}");
            assert!(matches!(ev.body, Body::Gerrit(_)), "{line}");
            assert_eq!(ev.id.as_deref(), Some(g.id().as_str()));
            assert_eq!(ev.subject, g.subject());
            assert_eq!(ev.data(), g.value());
        }
        assert_eq!(raw.time, ce.time.clone().filter(|_| g.created().is_some()));
        assert_eq!(ce.source.as_deref(), Some("test://source"));
        n += 1;
    }
    assert!(n >= 26);
}

#[test]
fn nova_notifications_and_service_state_read_back() {
    let mut n = 0;
    for file in ["nova/legacy.jsonl", "nova/versioned.jsonl"] {
        for line in fixture(file).lines() {
            let m: Value = serde_json::from_str(line).unwrap();
            let body = m["body"].as_str().unwrap().as_bytes();
            let note = Notification::parse(body).unwrap();
            let [raw, ce] = both_modes(&note.in_deployment("cell1"));
            for ev in [&raw, &ce] {
                assert_eq!(ev.kind, format!("nova.{}", note.event_type()));
                assert_eq!(ev.id.as_deref(), Some(note.message_id().as_str()));
                assert_eq!(ev.subject, note.instance_uuid());
                assert!(ev.topic.starts_with("nova/cell1/"));
                match &ev.body {
                    Body::Nova(x) => assert_eq!(x.event_type(), note.event_type()),
                    other => panic!("{other:?}"),
                }
            }
            if let Some(status) = note.service_status() {
                let ev = decode(&status.topic("cell1"), &status.to_json(), true);
                assert_eq!(ev.kind, "nova.service");
                assert!(ev.retained);
                match ev.body {
                    Body::NovaService(s) => {
                        assert_eq!(
                            (s.host.as_str(), s.binary.as_str()),
                            (status.host.as_str(), status.binary.as_str())
                        );
                        assert_eq!(s.is_up(), status.state() == "up");
                    }
                    other => panic!("{other:?}"),
                }
                n += 1;
            }
            n += 1;
        }
    }
    assert!(n > 10);
}

#[test]
fn ansible_original_payloads_and_ours_read_back() {
    // What the original plugin published (ansible_result as an object or
    // as a JSON string; both are read).
    for line in fixture("ansible/firehose-examples.jsonl").lines() {
        let m: Value = serde_json::from_str(line).unwrap();
        let topic = m["topic"].as_str().unwrap();
        let ev = decode(topic, m["payload"].as_str().unwrap().as_bytes(), false);
        assert!(ev.kind.starts_with("ansible."), "{topic}: {}", ev.kind);
        assert!(matches!(ev.body, Body::Ansible(_)), "{topic}");
        if topic.contains("/task/") {
            assert_eq!(ev.kind, "ansible.task.ok");
            assert!(ev.data()["ansible_result"].is_object());
        }
    }
    let line = r#"{"event":"task","id":"e1","time":1700000000.5,"session":"s1","launcher":"bastion","play_id":"p-1","play_name":"all","host":"web1","task":"TASK: ping","action":"ping","status":"FAILED","result":"{\"rc\": 2}"}"#;
    // Each kind of plugin event, both modes: the same type, id and subject.
    let lines = [
        r#"{"event":"play_start","id":"a1","time":1700000000.0,"session":"s1","launcher":"bastion","play_id":"p-1","play_name":"all"}"#,
        line,
        r#"{"event":"task","id":"a2","time":1700000001.0,"session":"s1","launcher":"bastion","play_id":"p-1","play_name":"all","host":"web1","task":"TASK: ping","status":"OK","result":"not json"}"#,
        r#"{"event":"stats","id":"a3","time":1700000002.0,"session":"s1","launcher":"bastion","play_id":"p-1","play_name":"all","host":"web1","stats":{"ok":1,"failures":1}}"#,
        r#"{"event":"finish","id":"a4","time":1700000003.0,"session":"s1","launcher":"bastion","play_id":"p-1","play_name":"all","status":"FAILED"}"#,
    ];
    let mut ids = std::collections::HashSet::new();
    for l in lines {
        let [raw, ce] = both_modes(&firehose::ansible::PluginEvent::parse(l.as_bytes()).unwrap());
        assert!(matches!(raw.body, Body::Ansible(_)), "{l}: {:?}", raw.body);
        assert_eq!(
            (&raw.kind, &raw.id, &raw.subject),
            (&ce.kind, &ce.id, &ce.subject),
            "{l}"
        );
        assert!(raw.id.is_some() && ids.insert(raw.id.clone()), "{l}");
    }
    let p = firehose::ansible::PluginEvent::parse(line.as_bytes()).unwrap();
    let [raw, ce] = both_modes(&p);
    for ev in [&raw, &ce] {
        assert_eq!(ev.kind, "ansible.task.failed");
        assert_eq!(ev.subject.as_deref(), Some("web1"));
        assert_eq!(ev.data()["ansible_result"]["rc"], 2);
        match &ev.body {
            Body::Ansible(a) => {
                assert_eq!((a.status(), a.target()), (Some("FAILED"), Some("web1")))
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn status_base_topics_and_garbage() {
    let status = r#"{"state":"up","version":"firehose-gerrit 0.1.0","host":"h","started":"2026-01-01T00:00:00Z","upstream_connected":true,"counters":{"read":1,"published":1,"pending":0,"malformed":0,"dropped":0,"reconnects":0}}"#;
    let ev = decode("firehose/status/gerrit/h", status.as_bytes(), true);
    assert_eq!(ev.kind, "firehose.status");
    assert!(matches!(ev.body, Body::Status(_)));
    // --base-topic puts levels before the bridge's own.
    let ev = decode(
        "site1/gerrit/p/comment-added",
        br#"{"type":"comment-added","project":"p"}"#,
        false,
    );
    assert_eq!(ev.kind, "gerrit.comment-added");
    // Not JSON, or not a firehose topic: Other, with the reason when it
    // claimed to be an event.
    let ev = decode("gerrit/p/x", b"not json", false);
    assert_eq!(ev.kind, "mqtt");
    match &ev.body {
        Body::Other { reason: Some(r) } => assert!(r.contains("not JSON"), "{r}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(ev.data(), &Value::String("not json".into()));
    let ev = decode("some/thing", b"{\"a\":1}", false);
    assert!(matches!(ev.body, Body::Other { reason: None }));
    let json = serde_json::to_value(&ev).unwrap();
    for key in [
        "topic", "id", "source", "type", "time", "subject", "data", "retained",
    ] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
}
