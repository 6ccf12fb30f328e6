//! Packets from the client: PUBLISH (ACL, topic limits, QoS 1 and 2
//! acknowledgements, exactly once towards the router, inbound topic
//! aliases), the acknowledgements of what we sent (settled in the
//! [`super::flight::Outflow`]), SUBSCRIBE (validation, ACL, quota, the
//! router, retained messages and `$SYS` served at once), UNSUBSCRIBE, PING
//! and DISCONNECT.

use firehose::report::Chain;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{
    DisconnectReasonCode, Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec,
    PubRecReason, PubRelReason, Publish, QoS, RetainForwardRule, SubAck, Subscribe,
    SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};

use super::flight::PubRecAnswer;
use super::{End, Session};
use crate::auth::Policy;
use crate::codec::{self, DecodeError, Version};
use crate::message::Message;
use crate::outbox::{Delivery, SubIds};
use crate::router::{Sub, SubscribeError};
use crate::stats::Reason;
use crate::topic;

impl Session {
    /// Parses and handles every complete packet in `inbuf`. Returns
    /// `Some(end)` when the client disconnected cleanly.
    pub(super) fn incoming(
        &mut self,
        inbuf: &mut BytesMut,
        out: &mut BytesMut,
        max: usize,
    ) -> Result<Option<End>, DecodeError> {
        let mut end = None;
        let policy = self.shared.auth.policy();
        // Stop at the first publish that put pressure on a reader: the rest
        // waits in `inbuf` for the pushback.
        while end.is_none() && self.pressure.is_empty() {
            let meta = publish_meta(inbuf);
            let Some(p) = codec::decode(self.version, inbuf, max)? else {
                break;
            };
            self.shared.stats.messages_received.fetch_add(1, Relaxed);
            match p {
                Packet::Publish(publish, props) => {
                    self.on_publish(publish, props, meta, &policy, out)?
                }
                Packet::PubAck(ack, _) => {
                    if self.outflow.on_puback(ack.pkid) {
                        self.outbox.progressed();
                    }
                }
                Packet::PubRel(rel, _) => {
                    let reason = if self.awaiting_rel.remove(&rel.pkid) {
                        self.write_inbound(rel.pkid, false);
                        PubCompReason::Success
                    } else {
                        PubCompReason::PacketIdentifierNotFound
                    };
                    self.send(
                        Packet::PubComp(
                            PubComp {
                                pkid: rel.pkid,
                                reason,
                            },
                            None,
                        ),
                        out,
                    );
                }
                Packet::PubRec(rec, _) => {
                    // QoS 2, step 2: the client has it; release it. A v5
                    // client's error code ends the exchange there.
                    let refused = !matches!(
                        rec.reason,
                        PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                    );
                    let reason = match self.outflow.on_pubrec(rec.pkid, refused) {
                        PubRecAnswer::Release => Some(PubRelReason::Success),
                        PubRecAnswer::Unknown => Some(PubRelReason::PacketIdentifierNotFound),
                        PubRecAnswer::Settled => {
                            self.outbox.progressed();
                            None
                        }
                    };
                    if let Some(reason) = reason {
                        let rel = rumqttd::protocol::PubRel {
                            pkid: rec.pkid,
                            reason,
                        };
                        self.send(Packet::PubRel(rel, None), out);
                    }
                }
                Packet::PubComp(comp, _) => {
                    if self.outflow.on_pubcomp(comp.pkid) {
                        self.outbox.progressed();
                    }
                }
                Packet::Subscribe(sub, props) => self.on_subscribe(sub, props, &policy, out),
                Packet::Unsubscribe(unsub, _) => self.on_unsubscribe(unsub, out),
                Packet::PingReq(_) => {
                    self.send(Packet::PingResp(rumqttd::protocol::PingResp), out);
                }
                Packet::Disconnect(d, props) => {
                    // MQTT 5: the session expiry may change at DISCONNECT,
                    // but not from 0 (MQTT-3.14.2-2).
                    if let Some(secs) = props.and_then(|p| p.session_expiry_interval) {
                        if self.expiry_was_zero && secs > 0 {
                            return Err(DecodeError::Protocol(
                                "DISCONNECT sets a session expiry the CONNECT did not ask for"
                                    .into(),
                            ));
                        }
                        self.expiry = (secs > 0).then(|| Duration::from_secs(secs as u64));
                        self.limit_anonymous_persistence();
                    }
                    let will = d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
                    end = Some(End::Closed { will });
                }
                other => {
                    return Err(DecodeError::Protocol(format!(
                        "unexpected packet {:?}",
                        packet_name(&other)
                    )));
                }
            }
        }
        self.write_journal();
        Ok(end)
    }

    /// Encodes a control packet for this client. Our own packets always
    /// encode; if one does not, that is counted and logged, never silent.
    pub(super) fn send(&self, p: Packet, out: &mut BytesMut) {
        match codec::encode(self.version, p, out) {
            Ok(_) => {
                self.shared.stats.messages_sent.fetch_add(1, Relaxed);
            }
            Err(e) => {
                self.shared.stats.count(Reason::EncodeFailed);
                tracing::error!(client_id = %crate::stats::short(&self.client_id), error = %Chain(&e), "cannot encode a reply");
            }
        }
    }

    /// Applies an MQTT 5 topic alias (3.3.2.3.4): an empty topic with an
    /// alias uses the topic set for it earlier. Returns the alias to set
    /// when the publish names a topic with one: the caller stores it once
    /// the topic passed validation (so an alias never holds a topic over
    /// the length limit). An alias of 0 or above our maximum is DISCONNECT
    /// 0x94 (MQTT-3.3.2-9); an empty topic without a known alias is a
    /// protocol error.
    fn resolve_alias(
        &mut self,
        publish: &mut Publish,
        props: Option<&rumqttd::protocol::PublishProperties>,
    ) -> Result<Option<u16>, DecodeError> {
        let Some(alias) = props.and_then(|p| p.topic_alias) else {
            return Ok(None);
        };
        let max = self.shared.cfg.limits.max_topic_alias;
        if alias == 0 || alias > max {
            return Err(DecodeError::TopicAlias { alias, max });
        }
        if !publish.topic.is_empty() {
            return Ok(Some(alias));
        }
        match self.in_aliases.as_ref().and_then(|m| m.get(&alias)) {
            Some(t) => {
                publish.topic = t.clone();
                Ok(None)
            }
            None => Err(DecodeError::Protocol(format!(
                "topic alias {alias} used before it was set"
            ))),
        }
    }

    /// A PUBLISH: resolved alias, checked topic and ACL (refusals counted
    /// and acknowledged per version), routed once, acknowledged.
    fn on_publish(
        &mut self,
        mut publish: Publish,
        props: Option<rumqttd::protocol::PublishProperties>,
        meta: (u8, u16),
        policy: &Policy,
        out: &mut BytesMut,
    ) -> Result<(), DecodeError> {
        let (qos, pkid) = meta;
        self.shared.stats.publish_received.fetch_add(1, Relaxed);
        let set_alias = self.resolve_alias(&mut publish, props.as_ref())?;
        let topic_str = std::str::from_utf8(&publish.topic)
            .map_err(|_| DecodeError::Malformed("topic is not UTF-8".into()))?;
        let limits = self.shared.cfg.topic_limits();
        let refused = match topic::validate_name(topic_str, limits) {
            // A mirror edge is read-only: what it serves comes from its core.
            Ok(()) => {
                if policy.may_write(self.who(), topic_str) && self.shared.cfg.upstream.url.is_none()
                {
                    None
                } else {
                    Some(Reason::AclPublish)
                }
            }
            Err(topic::TopicError::TooLong(_) | topic::TopicError::TooDeep(_)) => {
                Some(Reason::TopicLimit)
            }
            Err(e) => return Err(DecodeError::Malformed(format!("publish topic: {e}"))),
        };
        if let (Some(alias), None | Some(Reason::AclPublish)) = (set_alias, refused) {
            self.in_aliases
                .get_or_insert_with(Default::default)
                .insert(alias, publish.topic.clone());
        }
        let v5 = self.version == Version::V5;
        if let Some(reason) = refused {
            self.shared.stats.count(reason);
            self.denied_logged += 1;
            if self.denied_logged.is_power_of_two() {
                tracing::warn!(client_id = %crate::stats::short(&self.client_id), user = %crate::stats::who(self.user.as_deref()), topic = %crate::stats::short(topic_str), reason = reason.name(), denied = self.denied_logged, "publish dropped");
            }
            let (ack, rec) = match (v5, reason) {
                (false, _) => (PubAckReason::Success, PubRecReason::Success),
                (true, Reason::TopicLimit) => (
                    PubAckReason::TopicNameInvalid,
                    PubRecReason::TopicNameInvalid,
                ),
                (true, _) => (PubAckReason::NotAuthorized, PubRecReason::NotAuthorized),
            };
            match qos {
                1 => self.ack(
                    None,
                    Packet::PubAck(PubAck { pkid, reason: ack }, None),
                    out,
                ),
                2 => {
                    // A v5 client is told (and sends no PUBREL); a v3 one
                    // goes through the whole QoS 2 handshake, its PUBREL
                    // answered without remembering the id (a v3 PUBCOMP
                    // has no reason code), so refused publishes cost no
                    // memory.
                    self.ack(
                        None,
                        Packet::PubRec(PubRec { pkid, reason: rec }, None),
                        out,
                    );
                }
                _ => {}
            }
            return Ok(());
        }
        // A QoS 2 publish re-sent before our PUBREC arrived was routed once.
        let first = qos < 2 || self.awaiting_rel.insert(pkid);
        let mut ticket = None;
        if first {
            let msg = Message::new(
                publish.topic,
                publish.payload,
                qos,
                publish.retain,
                props,
                self.gen,
            );
            // The id goes to the store with the message, in one write.
            let held = if qos == 2 {
                self.inbound_record(pkid, true)
            } else {
                None
            };
            ticket = self.shared.publish(&msg, policy, &mut self.pressure, held);
        }
        match qos {
            1 => self.ack(
                ticket,
                Packet::PubAck(
                    PubAck {
                        pkid,
                        reason: PubAckReason::Success,
                    },
                    None,
                ),
                out,
            ),
            2 => self.ack(
                ticket,
                Packet::PubRec(
                    PubRec {
                        pkid,
                        reason: PubRecReason::Success,
                    },
                    None,
                ),
                out,
            ),
            _ => {}
        }
        Ok(())
    }

    /// A SUBSCRIBE: each distinct filter validated, checked against the ACL
    /// and the quotas, given to the router (or served from `$SYS`), its
    /// retained messages queued per retain handling, each passing the
    /// client's read ACL; one SUBACK with a code per filter of the packet.
    ///
    /// A filter repeated in one packet is handled once, with its last
    /// options (MQTT-3.8.4-3: a repeated filter replaces the subscription),
    /// and its code given to every copy; at most
    /// `max_subscriptions_per_packet` distinct filters are handled, the
    /// rest refused (0x97 / 0x80) and counted.
    fn on_subscribe(
        &mut self,
        sub: Subscribe,
        props: Option<rumqttd::protocol::SubscribeProperties>,
        policy: &Policy,
        out: &mut BytesMut,
    ) {
        let v5 = self.version == Version::V5;
        let per_packet = self.shared.cfg.limits.max_subscriptions_per_packet;
        let sub_id = props
            .as_ref()
            .and_then(|p| p.id)
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or(0);
        // The last occurrence of each filter is the one that counts.
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, f) in sub.filters.iter().enumerate() {
            last.insert(f.path.as_str(), i);
        }
        let quota = if v5 {
            SubscribeReasonCode::QuotaExceeded
        } else {
            SubscribeReasonCode::Failure
        };
        let mut codes: Vec<Option<SubscribeReasonCode>> = vec![None; sub.filters.len()];
        let mut new_sys = Vec::new();
        let mut handled = 0usize;
        // Before the router holds the new ones (at most this many more), so
        // a publish never sees fewer subscriptions than the router holds.
        self.outbox
            .set_subscriptions(self.subs.len() + last.len().min(per_packet));
        for (i, f) in sub.filters.iter().enumerate() {
            if last.get(f.path.as_str()) != Some(&i) {
                continue;
            }
            handled += 1;
            codes[i] = Some(if handled > per_packet {
                self.shared.stats.count(Reason::TooManySubscriptions);
                quota
            } else {
                self.subscribe_one(f, sub_id, policy, &mut new_sys)
            });
        }
        if handled > per_packet {
            tracing::info!(client_id = %crate::stats::short(&self.client_id), filters = handled, max_subscriptions_per_packet = per_packet, "SUBSCRIBE with too many distinct filters; the rest refused");
        }
        let return_codes = sub
            .filters
            .iter()
            .zip(&codes)
            .map(|(f, c)| c.unwrap_or_else(|| codes[last[f.path.as_str()]].unwrap_or(quota)))
            .collect();
        self.send(
            Packet::SubAck(
                SubAck {
                    pkid: sub.pkid,
                    return_codes,
                },
                None,
            ),
            out,
        );
        self.outbox.set_subscriptions(self.subs.len());
        self.save(None, false);
        if !new_sys.is_empty() {
            let snapshot = self.shared.sys.borrow().clone();
            let only: HashSet<String> = new_sys.into_iter().collect();
            self.deliver_sys_filtered(&snapshot, true, out, &only);
        }
    }

    /// One filter of a SUBSCRIBE (see [`Session::on_subscribe`]).
    fn subscribe_one(
        &mut self,
        f: &rumqttd::protocol::Filter,
        sub_id: u32,
        policy: &Policy,
        new_sys: &mut Vec<String>,
    ) -> SubscribeReasonCode {
        let v5 = self.version == Version::V5;
        let limits = self.shared.cfg.topic_limits();
        let max_subs = self.shared.cfg.limits.max_subscriptions_per_client;
        let inner = crate::auth::shared_inner(&f.path);
        let known = self.subs.contains_key(&f.path) || self.sys_subs.contains(&f.path);
        let quota = if v5 {
            SubscribeReasonCode::QuotaExceeded
        } else {
            SubscribeReasonCode::Failure
        };
        if topic::validate_filter(inner, limits).is_err()
            || (f.path.starts_with("$share/") && inner == f.path)
        {
            self.shared.stats.count(Reason::TopicLimit);
            return if v5 {
                SubscribeReasonCode::TopicFilterInvalid
            } else {
                SubscribeReasonCode::Failure
            };
        }
        if !policy.may_subscribe(self.who(), &f.path) {
            self.shared.stats.count(Reason::AclSubscribe);
            tracing::info!(client_id = %crate::stats::short(&self.client_id), user = %crate::stats::who(self.user.as_deref()), filter = %crate::stats::short(&f.path), "subscription denied");
            // 0x80 in both versions: many v5 clients treat 0x87 here
            // as a broken SUBACK rather than a refusal.
            return SubscribeReasonCode::Failure;
        }
        if !known && self.subs.len() + self.sys_subs.len() >= max_subs {
            self.shared.stats.count(Reason::TooManySubscriptions);
            return quota;
        }
        if topic::is_system_filter(&f.path) {
            if self.sys_subs.insert(f.path.clone()) {
                self.shared.stats.subscriptions.fetch_add(1, Relaxed);
            }
            new_sys.push(f.path.clone());
            return SubscribeReasonCode::Success(QoS::AtMostOnce);
        }
        let granted = f.qos;
        let entry_opts = (v5 && f.nolocal, v5 && f.preserve_retain);
        let entry = Sub {
            outbox: self.outbox.clone(),
            qos: granted as u8,
            no_local: v5 && f.nolocal,
            retain_as_published: v5 && f.preserve_retain,
            id: sub_id,
        };
        match self
            .shared
            .router
            .subscribe(&f.path, entry, self.user.as_deref())
        {
            Err(SubscribeError::TableFull) => {
                self.shared.stats.count(Reason::FilterTableFull);
                tracing::warn!(client_id = %crate::stats::short(&self.client_id), filter = %crate::stats::short(&f.path), "filter table full (max_filters); subscription refused");
                quota
            }
            Err(SubscribeError::GroupOfAnotherUser) => {
                self.shared.stats.count(Reason::ShareOtherUser);
                tracing::warn!(client_id = %crate::stats::short(&self.client_id), user = %crate::stats::who(self.user.as_deref()), filter = %crate::stats::short(&f.path), "shared subscription group of another user; refused");
                SubscribeReasonCode::Failure
            }
            Ok(()) => {
                let g = super::Granted {
                    qos: granted,
                    no_local: entry_opts.0,
                    retain_as_published: entry_opts.1,
                    id: sub_id,
                };
                if self.subs.insert(f.path.clone(), g).is_none() {
                    self.shared.stats.subscriptions.fetch_add(1, Relaxed);
                }
                let send_retained = match f.retain_forward_rule {
                    RetainForwardRule::OnEverySubscribe => true,
                    RetainForwardRule::OnNewSubscribe => !known,
                    RetainForwardRule::Never => false,
                };
                if send_retained || !v5 {
                    self.queue_retained(&f.path, granted as u8, sub_id, policy);
                }
                SubscribeReasonCode::Success(granted)
            }
        }
    }

    /// Queues the retained messages `filter` matches that this client may
    /// read (the ACL applies to retained messages as to live ones), each
    /// at most once while it waits (see [`super::flight::Outflow::push_retained`]).
    fn queue_retained(&mut self, filter: &str, granted: u8, sub_id: u32, policy: &Policy) {
        let retained = self.shared.router.retained_for(filter);
        if retained.is_empty() {
            return;
        }
        let all = policy.reads_everything(self.who());
        let mut denied = 0;
        let readable: Vec<Arc<Message>> = retained
            .into_iter()
            .filter(|m| {
                let ok = all || policy.may_read(self.who(), m.topic_str());
                denied += u64::from(!ok);
                ok
            })
            .collect();
        self.shared.stats.count_n(Reason::AclRead, denied);
        let cap = self.shared.cfg.limits.max_retained_messages;
        let over = self.outflow.push_retained(
            readable.into_iter().map(|msg| Delivery {
                qos: msg.qos.min(granted),
                msg,
                retain: true,
                sub_ids: SubIds::One(sub_id),
            }),
            cap,
        );
        self.shared.stats.count_n(Reason::QueueFull, over);
    }

    /// An UNSUBSCRIBE: the router forgets the filters; one UNSUBACK.
    fn on_unsubscribe(&mut self, unsub: Unsubscribe, out: &mut BytesMut) {
        let mut reasons = Vec::with_capacity(unsub.filters.len());
        for f in unsub.filters {
            if self.subs.remove(&f).is_some() {
                self.shared.stats.subscriptions.fetch_sub(1, Relaxed);
                self.shared.router.unsubscribe(&f, self.gen);
                reasons.push(UnsubAckReason::Success);
            } else if self.sys_subs.remove(&f) {
                self.shared.stats.subscriptions.fetch_sub(1, Relaxed);
                reasons.push(UnsubAckReason::Success);
            } else {
                reasons.push(UnsubAckReason::NoSubscriptionExisted);
            }
        }
        // After the router forgot them: a publish never sees fewer
        // subscriptions than the router holds.
        self.outbox.set_subscriptions(self.subs.len());
        self.save(None, false);
        self.send(
            Packet::UnsubAck(
                UnsubAck {
                    pkid: unsub.pkid,
                    reasons,
                },
                None,
            ),
            out,
        );
    }

    /// Writes the `$SYS` values every `$SYS` filter of the session matches
    /// (on each refresh of the snapshot).
    pub(super) fn deliver_sys(
        &mut self,
        snapshot: &crate::shared::SysSnapshot,
        retain: bool,
        out: &mut BytesMut,
    ) {
        let filters = self.sys_subs.to_set();
        self.deliver_sys_filtered(snapshot, retain, out, &filters);
    }

    /// Writes the `$SYS` values matching `filters` (retained at SUBSCRIBE).
    fn deliver_sys_filtered(
        &mut self,
        snapshot: &crate::shared::SysSnapshot,
        retain: bool,
        out: &mut BytesMut,
        filters: &HashSet<String>,
    ) {
        // A client that does not read gets no more: its unread output stays
        // under the pending-write cap however many `$SYS` updates or
        // `$SYS` SUBSCRIBEs there are.
        if out.len() >= super::connection::MAX_PENDING_WRITE {
            self.shared.stats.count(Reason::SysBacklog);
            return;
        }
        for (t, v) in snapshot.iter() {
            if filters
                .iter()
                .any(|f| firehose::filter::topic_matches(f, t))
            {
                let p = Publish::new(Bytes::from(t.clone()), v.clone(), retain);
                let before = out.len();
                self.send(Packet::Publish(p, None), out);
                if out.len() > before {
                    self.shared.stats.publish_sent.fetch_add(1, Relaxed);
                }
            }
        }
    }
}

/// QoS and packet id of a PUBLISH at the front of `buf` (zeros otherwise).
fn publish_meta(buf: &[u8]) -> (u8, u16) {
    if buf.first().map(|b| b >> 4) != Some(3) {
        return (0, 0);
    }
    let qos = codec::encoded_qos(buf);
    if qos == 0 {
        return (0, 0);
    }
    match codec::encoded_pkid_offset(buf) {
        Some(off) => (qos, u16::from_be_bytes([buf[off], buf[off + 1]])),
        None => (qos, 0),
    }
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(..) => "CONNECT",
        Packet::ConnAck(..) => "CONNACK",
        Packet::SubAck(..) => "SUBACK",
        Packet::UnsubAck(..) => "UNSUBACK",
        Packet::PingResp(..) => "PINGRESP",
        _ => "other",
    }
}
