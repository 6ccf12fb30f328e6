//! A subscriber for the no-loss tests: persistent session, QoS 1, counts
//! CloudEvents ids and checks that a duplicate is byte-for-byte the same.

use std::collections::HashMap;

use crate::raw::*;

/// A persistent-session (clean session off) QoS 1 subscriber that acks
/// what it gets and counts CloudEvents ids, for the no-loss tests.
pub struct Subscriber {
    pub raw: Raw,
    /// id -> (times seen, first payload)
    pub seen: HashMap<String, (usize, Vec<u8>)>,
    pub received: usize,
}

impl Subscriber {
    /// Connects as "persistent-sub" and subscribes to `filter` at QoS 1.
    pub fn connect(port: u16, filter: &str) -> Raw {
        Subscriber::try_connect(port, filter).expect("subscriber connects")
    }

    /// Like [`Subscriber::connect`], `None` when the broker is not there.
    pub fn try_connect(port: u16, filter: &str) -> Option<Raw> {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(crate::process::WAIT)).ok()?;
        let mut r = Raw::from_stream(s);
        // A broker that is going away may accept and then reset.
        if !r.try_send(&connect(4, "persistent-sub", 30, false, None)) {
            return None;
        }
        let (t, body) = r.read()?;
        if (t, body.get(1)) != (0x20, Some(&0)) {
            return None;
        }
        if !r.try_send(&subscribe(4, 1, filter, 1)) {
            return None;
        }
        loop {
            let (t, _) = r.read()?;
            if t == 0x90 {
                return Some(r);
            }
        }
    }

    pub fn new(port: u16, filter: &str) -> Subscriber {
        Subscriber {
            raw: Subscriber::connect(port, filter),
            seen: HashMap::new(),
            received: 0,
        }
    }

    /// Reads until `n` distinct ids were seen; false if the connection ended.
    pub fn read_until(&mut self, n: usize) -> bool {
        while self.seen.len() < n {
            let Some((t, body)) = self.raw.read() else {
                return false;
            };
            if t & 0xf0 != 0x30 {
                continue;
            }
            let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
            let mut off = 2 + tl;
            let mut puback = None;
            if (t >> 1) & 3 > 0 {
                puback = Some([0x40, 2, body[off], body[off + 1]]);
                off += 2;
            }
            let payload = body[off..].to_vec();
            // Counted first: it arrived, whether or not the ack gets back.
            self.record(&payload);
            if let Some(ack) = puback {
                if !self.raw.try_send(&ack) {
                    return false;
                }
            }
        }
        true
    }

    /// Counts one CloudEvents payload by id (retained state has no id and
    /// is not counted); a duplicate must be byte-for-byte the first one.
    fn record(&mut self, payload: &[u8]) {
        let ev: serde_json::Value = serde_json::from_slice(payload).expect("CloudEvents JSON");
        let Some(id) = ev["id"].as_str().map(str::to_owned) else {
            return;
        };
        self.received += 1;
        let e = self.seen.entry(id).or_insert((0, payload.to_vec()));
        e.0 += 1;
        assert_eq!(e.1, payload, "a duplicate is the same message, same id");
    }

    /// Messages received more than once.
    pub fn duplicates(&self) -> usize {
        self.received - self.seen.len()
    }
}
