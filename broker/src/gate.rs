//! The gate for sockets that have not finished CONNECT yet: TLS, the
//! websocket upgrade and the CONNECT itself all happen behind it.
//!
//! A socket that never sends CONNECT costs a task, buffers and a file
//! descriptor until its handshake timeout; without a cap, one address can
//! open thousands. The gate holds two caps, both counted when hit: all
//! sockets in a handshake at once (`max_handshakes`, every listener
//! together) and those from one address (`max_handshakes_per_ip`). The last
//! tenth of the global cap is kept for clients that log in: a socket let in
//! on one of those slots is [`Slot::reserved`], and an anonymous CONNECT on
//! it is refused, so a flood of idle anonymous sockets never locks a bridge
//! out during its reconnect.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::stats::Reason;

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, u32>,
}

/// Sockets in a handshake, in total and per address.
#[derive(Debug)]
pub(crate) struct Gate {
    max: usize,
    reserved: usize,
    per_ip: usize,
    counts: Mutex<Counts>,
}

/// One socket's place behind the gate, given back when dropped (the CONNECT
/// was decided, or the socket closed).
#[derive(Debug)]
pub(crate) struct Slot {
    gate: Arc<Gate>,
    ip: IpAddr,
    /// Let in on a slot kept for clients that log in.
    pub(crate) reserved: bool,
}

impl Gate {
    /// A gate for `max` sockets in all, the last `reserved` of them for
    /// logins, at most `per_ip` from one address (0: no per-address cap).
    pub(crate) fn new(max: usize, reserved: usize, per_ip: usize) -> Arc<Gate> {
        Arc::new(Gate {
            max,
            reserved: reserved.min(max),
            per_ip,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a socket from `ip` in, or says which cap it hit.
    pub(crate) fn enter(self: &Arc<Gate>, ip: IpAddr) -> Result<Slot, Reason> {
        let mut c = self.lock();
        if c.total >= self.max {
            return Err(Reason::Handshakes);
        }
        let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        if self.per_ip > 0 && from_ip as usize >= self.per_ip {
            return Err(Reason::HandshakesPerIp);
        }
        let reserved = c.total >= self.max - self.reserved;
        c.total += 1;
        c.per_ip.insert(ip, from_ip + 1);
        Ok(Slot {
            gate: self.clone(),
            ip,
            reserved,
        })
    }

    /// Sockets behind the gate now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.gate.lock();
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn caps_in_total_and_per_address_and_gives_back_on_drop() {
        let g = Gate::new(10, 1, 3);
        let a: Vec<Slot> = (0..3).map(|_| g.enter(ip(1)).unwrap()).collect();
        assert_eq!(g.enter(ip(1)).unwrap_err(), Reason::HandshakesPerIp);
        let b: Vec<Slot> = (0..3).map(|_| g.enter(ip(2)).unwrap()).collect();
        drop(a);
        assert_eq!(g.len(), 3);
        assert!(g.enter(ip(1)).is_ok(), "the address's slots came back");
        assert_eq!(g.len(), 3, "and that one went again");
        drop(b);
        assert_eq!(g.len(), 0);
        assert!(
            g.lock().per_ip.is_empty(),
            "no entry kept for a gone address"
        );
    }

    #[test]
    fn the_last_slots_are_marked_for_logins_then_the_gate_closes() {
        let g = Gate::new(10, 2, 0);
        let first: Vec<Slot> = (0..8).map(|i| g.enter(ip(i)).unwrap()).collect();
        assert!(first.iter().all(|s| !s.reserved));
        let last: Vec<Slot> = (8..10).map(|i| g.enter(ip(i)).unwrap()).collect();
        assert!(
            last.iter().all(|s| s.reserved),
            "the last two are for logins"
        );
        assert_eq!(g.enter(ip(11)).unwrap_err(), Reason::Handshakes);
        drop(first);
        assert!(!g.enter(ip(12)).unwrap().reserved);
    }
}
