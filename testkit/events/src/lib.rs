//! Fixture events as the SDK's types, published the way the bridges
//! publish them, for the tests of what reads the firehose (the SDK's
//! client, firehose-sub). A crate above the SDK so that `firehose-testkit`
//! stays below it (the SDK's own tests use the testkit). The SDK's
//! integration tests may use this crate too: they link the same SDK.

use firehose::gerrit::GerritEvent;
use firehose::Publishable;
use firehose_testkit::raw::Publisher;
use time::OffsetDateTime;

/// The gerrit the fixture events claim to come from (CloudEvents `source`).
pub const GERRIT_SOURCE: &str = "ssh://review.example.org:29418";

/// Every event of `fixtures/gerrit/stream-events.jsonl`, in order.
pub fn gerrit_events() -> Vec<GerritEvent> {
    firehose_testkit::fixture_lines("gerrit/stream-events.jsonl")
        .iter()
        .map(|l| {
            GerritEvent::parse(l.as_bytes()).unwrap_or_else(|e| panic!("fixture line {l}: {e}"))
        })
        .collect()
}

/// How [`publish_gerrit`] publishes each event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modes {
    /// Raw and CloudEvents in turn (the first raw): a reader must see no
    /// difference.
    Alternating,
    /// Each event twice, raw then CloudEvents, as two redundant bridges in
    /// different modes would: one id, so a reader that drops duplicates
    /// gets each once.
    Both,
}

/// Publishes every gerrit fixture event on its topic as `modes` says;
/// returns the events.
pub fn publish_gerrit(p: &mut Publisher, modes: Modes) -> Vec<GerritEvent> {
    let events = gerrit_events();
    for (i, g) in events.iter().enumerate() {
        let ce = || {
            g.cloudevent(GERRIT_SOURCE, OffsetDateTime::now_utc())
                .to_json()
        };
        match modes {
            Modes::Alternating if i % 2 == 0 => p.publish(&g.topic(), &g.raw(), false),
            Modes::Alternating => p.publish(&g.topic(), &ce(), false),
            Modes::Both => {
                p.publish(&g.topic(), &g.raw(), false);
                p.publish(&g.topic(), &ce(), false);
            }
        }
    }
    events
}
