//! Bad input never panics the parsers: random bytes, and every fixture cut
//! at every length or with a byte flipped, give an event or an error.

use firehose::gerrit::GerritEvent;
use firehose::nova::Notification;

/// A small deterministic generator (xorshift), so a failure can be rerun.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../fixtures/{path}", env!("CARGO_MANIFEST_DIR")))
        .expect("fixture")
}

fn nova_bodies() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for f in ["nova/versioned.jsonl", "nova/legacy.jsonl"] {
        for l in fixture(f).lines() {
            let v: serde_json::Value = serde_json::from_str(l).expect("fixture line");
            out.push(v["body"].as_str().expect("body").as_bytes().to_vec());
        }
    }
    out
}

#[test]
fn random_bytes() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = (rng.next() % 300) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        assert!(GerritEvent::parse(&bytes).is_err() || bytes.first() == Some(&b'{'));
        let _ = Notification::parse(&bytes);
    }
}

#[test]
fn truncated_and_flipped_fixtures() {
    let mut rng = Rng(42);
    let gerrit: Vec<Vec<u8>> = fixture("gerrit/stream-events.jsonl")
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect();
    let mut complete = 0;
    for line in &gerrit {
        for cut in 0..=line.len() {
            if let Ok(e) = GerritEvent::parse(&line[..cut]) {
                let _ = (e.topic(), e.subject(), e.created());
                complete += 1;
            }
        }
    }
    // Only the whole line parses: a cut-off event is never taken for one.
    assert_eq!(complete, gerrit.len());
    for body in nova_bodies().iter().take(30) {
        for cut in (0..body.len()).step_by(7) {
            if let Ok(n) = Notification::parse(&body[..cut]) {
                let _ = (
                    n.topic("x"),
                    n.service_status(),
                    n.instance_uuid(),
                    n.timestamp(),
                );
            }
        }
        for _ in 0..200 {
            let mut b = body.clone();
            let i = (rng.next() as usize) % b.len();
            b[i] = rng.next() as u8;
            if let Ok(n) = Notification::parse(&b) {
                let _ = n
                    .to_cloudevent("amqp://x", time::OffsetDateTime::UNIX_EPOCH)
                    .to_json();
                let _ = n.service_status().map(|s| s.to_json());
            }
        }
    }
}
