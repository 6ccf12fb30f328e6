//! Any bytes through the subunit v2 parser and the run summary: errors,
//! never a panic, and a packet that parses writes back to the same bytes.
#![no_main]

use firehose_subunit::summary::summarize;
use firehose_subunit::v2::{packets, write};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = summarize(data, 64);
    let mut at = 0;
    for p in packets(data) {
        let Ok(p) = p else { break };
        let bytes = write::packet(&p);
        // The writer picks the shortest length; a stream may use a longer
        // one, so compare by parsing again.
        let again = packets(&bytes).next().and_then(Result::ok);
        assert_eq!(again.as_ref(), Some(&p));
        at += 1;
        if at > 10_000 {
            break;
        }
    }
});
