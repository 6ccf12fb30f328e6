//! At start, with `--persistence`: puts back what the store remembers, before
//! any listener accepts a client.
//!
//! Retained messages go back in the router (expired ones do not); each
//! persistent session gets its task again, parked as its client left it:
//! its subscriptions in the router with their options, its queue in order,
//! what was in flight with its packet ids (re-sent with DUP on resume, or
//! as PUBREL once released), the QoS 2 ids it had received, its will. Of
//! its queue, the first `queue_memory` bytes are read back now; the rest
//! stays on disk until its client returns (see `outbox.rs`). Its
//! expiry counts from the client's departure, its will's delay too; a
//! session whose client was connected when the broker died counts from
//! now, and its will (the connection ended without DISCONNECT) is due after
//! its delay.

use firehose::report::Chain;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::protocol::QoS;

use super::Hub;
use super::{run_restored, Granted, Session};
use crate::codec::Version;
use crate::outbox::{Delivery, Paged, Reader, SubIds};
use crate::router::Sub;
use crate::store::{unix_ms, Pending, Record, SessionImage};

/// Restores everything the store read (see the module documentation).
pub(crate) fn all(shared: &Arc<Hub>, store: &Pending) {
    let (image, opened) = (&store.image, &store.opened);
    let start = Instant::now();
    let mut retained = 0u64;
    for (seq, _) in image.retained() {
        let Some(m) = store.message(seq).filter(|m| !m.expired()) else {
            continue;
        };
        shared.router.restore_retained(&m);
        retained += 1;
    }
    shared.registry.number_from(image.max_key + 1);
    // One session per client id: the newest (an older one left behind by
    // a crash between its end and its successor's start is ended now).
    let mut newest: HashMap<&str, &SessionImage> = HashMap::new();
    for s in image.sessions() {
        let old = newest.insert(&s.rec.client_id, s);
        if let Some(old) = old {
            let (keep, end) = if old.rec.key > s.rec.key {
                (old, s)
            } else {
                (s, old)
            };
            newest.insert(&keep.rec.client_id, keep);
            if let Some(store) = &shared.store {
                store.submit(Record::SessionEnd { key: end.rec.key });
            }
        }
    }
    let now = unix_ms();
    let (mut sessions, mut queued, mut paged) = (0u64, 0u64, 0u64);
    for s in newest.into_values() {
        let (q, p) = one(shared, s, store, now);
        queued += q;
        paged += p;
        sessions += 1;
    }
    let (msgs, _, bytes) = image.size();
    tracing::info!(
        path = %opened.path.display(),
        file_bytes = opened.bytes,
        records = opened.records,
        read_ms = opened.took.as_millis() as u64,
        restore_ms = start.elapsed().as_millis() as u64,
        retained,
        sessions,
        queued,
        on_disk_only = paged,
        messages = msgs,
        message_bytes = bytes,
        cut_bytes = opened.cut.map_or(0, |(_, n)| n),
        "persistent store restored"
    );
}

/// Restores one session and spawns its task; returns its queue's length
/// and how much of it stays on disk only.
fn one(shared: &Arc<Hub>, si: &SessionImage, store: &Pending, now: u64) -> (u64, u64) {
    let rec = &si.rec;
    let version = match rec.level {
        3 => Version::V31,
        5 => Version::V5,
        _ => Version::V311,
    };
    let mut s = Session::new(
        rec.key,
        rec.client_id.clone(),
        version,
        rec.user.as_deref(),
        shared.clone(),
    );
    s.user = rec.user.clone();
    s.expiry = Some(Duration::from_secs(rec.expiry_secs.max(1)));
    s.expiry_was_zero = false;
    s.will = rec.will.as_ref().map(|(m, _)| m.clone());
    s.will_delay = Duration::from_secs(rec.will.as_ref().map_or(0, |(_, d)| u64::from(*d)));
    s.limit_anonymous_persistence();
    let policy = shared.auth.policy();
    s.outbox.set_reader(Reader {
        client_id: s.client_id.clone(),
        user: s.user.clone(),
        reads_everything: policy.reads_everything(s.who()),
        policy_gen: policy.generation(),
        holds_publishers: shared.cfg.may_push_back(s.user.as_deref()),
    });
    s.kept = true;
    s.outbox.set_durable(shared.store.clone());
    s.outflow.keep_journal(true);
    for sub in &rec.subs {
        if crate::topic::is_system_filter(&sub.filter) {
            if s.sys_subs.insert(sub.filter.clone()) {
                shared.stats.subscriptions.fetch_add(1, Relaxed);
            }
            continue;
        }
        let entry = Sub {
            outbox: s.outbox.clone(),
            qos: sub.qos,
            no_local: sub.no_local,
            retain_as_published: sub.retain_as_published,
            id: sub.id,
        };
        match shared
            .router
            .subscribe(&sub.filter, entry, s.user.as_deref())
        {
            Ok(()) => {
                let g = Granted {
                    qos: rumqttd::protocol::qos(sub.qos).unwrap_or(QoS::AtMostOnce),
                    no_local: sub.no_local,
                    retain_as_published: sub.retain_as_published,
                    id: sub.id,
                };
                if s.subs.insert(sub.filter.clone(), g).is_none() {
                    shared.stats.subscriptions.fetch_add(1, Relaxed);
                }
            }
            Err(e) => {
                tracing::warn!(client_id = %crate::stats::short(&s.client_id), filter = %crate::stats::short(&sub.filter), error = %Chain(&e), "stored subscription not restored");
            }
        }
    }
    s.outbox.set_subscriptions(s.subs.len());
    let (mut inflight, mut waiting, mut paged) = (Vec::new(), Vec::new(), Vec::new());
    let (memory, mut in_memory) = (shared.store.as_ref().map_or(0, |st| st.queue_memory()), 0);
    for (seq, q) in &si.queue {
        let Some((_, weight)) = store.image.stored(*seq) else {
            continue;
        };
        let sub_ids = match q.sub_ids.as_slice() {
            [] => SubIds::One(0),
            [one] => SubIds::One(*one),
            many => SubIds::Many(Arc::from(many)),
        };
        // In flight, and the head of the queue, are read now; the rest
        // stays on disk, in order behind them.
        if q.pkid == 0 && (!paged.is_empty() || in_memory + weight > memory) {
            paged.push(Paged {
                seq: *seq,
                weight: weight as u32,
                qos: q.qos,
                retain: q.retain,
                sub_ids,
            });
            continue;
        }
        let Some(msg) = store.message(*seq) else {
            continue;
        };
        let d = Delivery {
            msg,
            qos: q.qos,
            retain: q.retain,
            sub_ids,
        };
        if q.pkid != 0 {
            inflight.push((d, q.pkid, q.released));
        } else {
            in_memory += weight;
            waiting.push(d);
        }
    }
    let on_disk = paged.len() as u64;
    let queued = (inflight.len() + waiting.len()) as u64 + on_disk;
    s.outflow.restore_in_flight(inflight);
    s.outbox.restore(waiting, paged);
    for pkid in &si.inbound {
        s.awaiting_rel.insert(*pkid);
    }
    let departed = rec.departed_ms.unwrap_or(now);
    let away = Duration::from_millis(now.saturating_sub(departed));
    let expiry_left = s.expiry.unwrap_or_default().saturating_sub(away);
    let will_in = match rec.departed_ms {
        // Cut off by the broker's death: as a connection lost now.
        None => s.will.is_some().then_some(s.will_delay),
        Some(_) if rec.will_armed && s.will.is_some() => Some(s.will_delay.saturating_sub(away)),
        Some(_) => None,
    };
    s.save(Some(departed), will_in.is_some());
    let (id, gen, user) = (s.client_id.clone(), s.gen, s.user.clone());
    shared.registry.restore(id, gen, user, move |mailbox| {
        run_restored(s, expiry_left, will_in, departed, mailbox)
    });
    (queued, on_disk)
}
