//! The nova source: one consumer per deployment, each on its own queue
//! bound to nova's exchange (so every other consumer still gets every
//! message), each reconnecting on its own.
//!
//! A message is acked on RabbitMQ only when the broker has acknowledged
//! everything made from it (the event, and a service's retained state). Until
//! then it counts against the channel's prefetch, so while the broker is away
//! consumption pauses at `prefetch` messages and nothing is acked or dropped.
//! Bodies that are not notifications are dead-lettered, then acked so they
//! never loop.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firehose::nova::Notification;
use firehose::PayloadMode;
use firehose_bridge::backoff::Backoff;
use firehose_bridge::{Event, SourceContext};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::oneshot;

use crate::config::Deployment;

/// Every deployment this process bridges.
pub struct Nova {
    pub deployments: Vec<Deployment>,
    pub max_body_bytes: usize,
}

/// Per-deployment connection state, folded into the bridge's one upstream
/// state: connected only when every deployment is.
#[derive(Clone, Default)]
struct States(Arc<Mutex<BTreeMap<String, Option<String>>>>);

impl States {
    fn set(&self, ctx: &SourceContext, name: &str, error: Option<String>) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(name.to_owned(), error);
        let down: Vec<String> = m
            .iter()
            .filter_map(|(n, e)| e.as_ref().map(|e| format!("{n}: {e}")))
            .collect();
        if down.is_empty() {
            ctx.connected();
        } else {
            ctx.disconnected(down.join("; "));
        }
    }
}

/// Runs every deployment's consumer until the bridge stops.
pub async fn run(ctx: SourceContext, nova: Nova) -> Result<(), String> {
    let states = States::default();
    for d in &nova.deployments {
        states
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(d.name.clone(), Some("not connected yet".into()));
    }
    let mut tasks = Vec::new();
    for d in nova.deployments {
        tasks.push(tokio::spawn(consume(
            ctx.clone(),
            d,
            states.clone(),
            nova.max_body_bytes,
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// One deployment: connect, consume, and on any failure back off and retry.
async fn consume(ctx: SourceContext, d: Deployment, states: States, max_body: usize) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut shutdown = ctx.shutdown.clone();
    loop {
        if ctx.stopping() {
            return;
        }
        let result = tokio::select! {
            r = session(&ctx, &d, &states, max_body, &mut backoff) => r,
            _ = shutdown.changed() => return,
        };
        if ctx.stopping() {
            return;
        }
        let why = match result {
            Ok(()) => "consumer cancelled by RabbitMQ".to_owned(),
            Err(e) => e,
        };
        tracing::warn!(deployment = %d.name, amqp = %d.display, error = %why, attempt = backoff.attempts() + 1, "RabbitMQ connection lost or refused; reconnecting");
        states.set(&ctx, &d.name, Some(why));
        ctx.reconnecting();
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One connection's life. Returns why it ended.
async fn session(
    ctx: &SourceContext,
    d: &Deployment,
    states: &States,
    max_body: usize,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let conn = Connection::connect(&d.uri, ConnectionProperties::default())
        .await
        .map_err(|e| format!("connecting to {}: {e}", d.display))?;
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| format!("opening a channel: {e}"))?;
    channel
        .basic_qos(d.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| format!("basic.qos: {e}"))?;
    // Nova declares its exchange (not durable, as oslo.messaging does by
    // default); we only check it is there unless told otherwise.
    let exchange_opts = ExchangeDeclareOptions {
        passive: !d.declare_exchange,
        durable: false,
        ..Default::default()
    };
    channel
        .exchange_declare(
            d.exchange.as_str().into(),
            d.exchange_kind.clone(),
            exchange_opts,
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            if d.declare_exchange {
                format!("declaring exchange {:?}: {e}", d.exchange)
            } else {
                format!(
                    "exchange {:?} not found ({e}); nova creates it when it first notifies, or set declare_exchange = true",
                    d.exchange
                )
            }
        })?;
    let queue_opts = QueueDeclareOptions {
        durable: d.durable,
        auto_delete: d.auto_delete,
        ..Default::default()
    };
    channel
        .queue_declare(d.queue.as_str().into(), queue_opts, FieldTable::default())
        .await
        .map_err(|e| format!("declaring queue {:?}: {e}", d.queue))?;
    for key in &d.routing_keys {
        channel
            .queue_bind(
                d.queue.as_str().into(),
                d.exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                format!(
                    "binding {:?} to {:?} with {key:?}: {e}",
                    d.queue, d.exchange
                )
            })?;
    }
    let mut consumer = channel
        .basic_consume(
            d.queue.as_str().into(),
            format!("firehose-nova-{}", d.name).as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("consuming from {:?}: {e}", d.queue))?;
    tracing::info!(deployment = %d.name, amqp = %d.display, exchange = %d.exchange, queue = %d.queue, routing_keys = ?d.routing_keys, prefetch = d.prefetch, "consuming nova notifications");
    states.set(ctx, &d.name, None);
    backoff.reset();
    let source_uri = format!("{}#{}", d.display, d.exchange);
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.map_err(|e| format!("consumer: {e}"))?;
        if !handle(ctx, d, &channel, &source_uri, delivery, max_body).await {
            return Ok(());
        }
    }
    Ok(())
}

/// Turns one delivery into events (acked on RabbitMQ once the broker has
/// them) or a dead letter (acked at once). False when the runtime stopped.
async fn handle(
    ctx: &SourceContext,
    d: &Deployment,
    channel: &Channel,
    source_uri: &str,
    delivery: Delivery,
    max_body: usize,
) -> bool {
    let body = &delivery.data;
    let parsed = if body.len() > max_body {
        Err(format!(
            "body of {} bytes is over max_body_bytes ({max_body})",
            body.len()
        ))
    } else {
        Notification::parse(body).map_err(|e| e.to_string())
    };
    let n = match parsed {
        Ok(n) => n,
        Err(reason) => {
            ctx.malformed("nova", &format!("{}: {reason}", d.name), body, body.len());
            if let Some(dlx) = &d.dead_letter_exchange {
                let sent = channel
                    .basic_publish(
                        dlx.as_str().into(),
                        delivery.routing_key.clone(),
                        BasicPublishOptions::default(),
                        body,
                        BasicProperties::default(),
                    )
                    .await;
                if let Err(e) = sent {
                    tracing::error!(deployment = %d.name, exchange = %dlx, error = %e, "cannot publish to the dead-letter exchange");
                }
            }
            let _ = delivery.ack(BasicAckOptions::default()).await;
            return true;
        }
    };
    let payload = match ctx.payload {
        PayloadMode::Raw => n.text().as_bytes().to_vec(),
        PayloadMode::Cloudevents => n
            .to_cloudevent(source_uri, time::OffsetDateTime::now_utc())
            .to_json(),
    };
    let mut acks = Vec::with_capacity(2);
    let (tx, rx) = oneshot::channel();
    acks.push(rx);
    let event = Event {
        topic: ctx.topic(&n.topic(&d.name)),
        payload: payload.into(),
        retain: false,
        ack: Some(tx),
    };
    if ctx.events.send(event).await.is_err() {
        return false;
    }
    if let Some(status) = n.service_status() {
        let (tx, rx) = oneshot::channel();
        acks.push(rx);
        let retained = Event {
            topic: ctx.topic(&status.topic(&d.name)),
            payload: status.to_json().into(),
            retain: true,
            ack: Some(tx),
        };
        if ctx.events.send(retained).await.is_err() {
            return false;
        }
    }
    // Ack on RabbitMQ after the PUBACKs; requeue if an event was lost.
    let acker = delivery.acker;
    let name = d.name.clone();
    tokio::spawn(async move {
        let mut delivered = true;
        for rx in acks {
            delivered &= rx.await.is_ok();
        }
        let r = if delivered {
            acker.ack(BasicAckOptions::default()).await
        } else {
            acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await
        };
        if let Err(e) = r {
            // The channel is gone: RabbitMQ redelivers the message.
            tracing::debug!(deployment = %name, error = %e, "ack not sent; RabbitMQ will redeliver");
        }
    });
    true
}
