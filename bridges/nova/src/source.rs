//! The nova source: one consumer per deployment (each a [`Source`] of its
//! own, so the runtime reconnects each on its own and the status names the
//! one that is down), each on its own queue bound to nova's exchange (so
//! every other consumer still gets every message).
//!
//! A message is acked on RabbitMQ only when the broker has acknowledged
//! everything made from it (the event, and a service's retained state): each
//! delivery is one [`Batch`](firehose_bridge::Batch) tagged with its acker,
//! and the consume loop acks (or requeues) as batches settle. Until then it
//! counts against the channel's prefetch, so while the broker is away
//! consumption pauses at `prefetch` messages and nothing is acked or
//! dropped. Bodies that are not notifications are dead-lettered, then acked
//! so they never loop.

use firehose::nova::Notification;
use firehose::report::Chain;
use firehose_bridge::replay::LineHandler;
use firehose_bridge::{Acks, BatchStatus, ResultExt, Source, SourceContext, SourceError};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, BasicProperties, Channel, Connection, ConnectionBuilder, ConnectionProperties};

use crate::config::Deployment;

/// One deployment's consumer.
pub struct Consumer {
    pub deployment: Deployment,
    pub max_body_bytes: usize,
}

/// Turns notification bodies into events: shared by the consumer and
/// `--replay` (a JSON-lines file of bodies as they sit on RabbitMQ).
pub struct Bodies {
    pub deployment: String,
    /// The CloudEvents `source`: the AMQP URL (no password) and exchange.
    pub source_uri: String,
    pub max_body_bytes: usize,
}

impl Bodies {
    /// Publishes what one body holds, with `batch` when its upstream acks
    /// on delivery. `Ok(false)`: not a notification (dead-lettered).
    async fn publish(
        &self,
        ctx: &SourceContext,
        body: &[u8],
        batch: Option<&firehose_bridge::Batch>,
    ) -> Result<bool, SourceError> {
        let parsed = if body.len() > self.max_body_bytes {
            Err(format!(
                "body of {} bytes is over max_body_bytes ({})",
                body.len(),
                self.max_body_bytes
            ))
        } else {
            Notification::parse(body).map_err(|e| e.to_string())
        };
        let n = match parsed {
            Ok(n) => n,
            Err(reason) => {
                let reason = format!("{}: {reason}", self.deployment);
                ctx.malformed("nova", &reason, body, body.len());
                return Ok(false);
            }
        };
        ctx.publish(&n.in_deployment(&self.deployment), &self.source_uri, batch)
            .await?;
        if let Some(status) = n.service_status() {
            // For alerting: 1 up, 0 down; a deleted service leaves.
            let labels = [
                ("deployment", self.deployment.as_str()),
                ("binary", status.binary.as_str()),
                ("host", status.host.as_str()),
            ];
            let up = (!status.deleted).then_some(i64::from(status.state() == "up"));
            ctx.stats.set_gauge("nova_service_up", &labels, up);
            ctx.retain(&status.topic(&self.deployment), status.to_json(), batch)
                .await?;
        }
        Ok(true)
    }
}

/// One captured AMQP delivery (see [`Bodies::line`]).
#[derive(serde::Deserialize)]
struct Capture {
    #[allow(dead_code)]
    routing_key: String,
    body: String,
}

impl LineHandler for Bodies {
    fn kind(&self) -> &'static str {
        "nova"
    }

    /// A line is a body as it sits on RabbitMQ, or a capture of one
    /// delivery (`{"exchange", "routing_key", "body", ...}`, the form of the
    /// repository's fixtures and of queue dumps): its `body` is published.
    async fn line(&mut self, ctx: &SourceContext, line: Vec<u8>) -> Result<(), SourceError> {
        match serde_json::from_slice::<Capture>(&line) {
            Ok(c) => self.publish(ctx, c.body.as_bytes(), None).await.map(|_| ()),
            Err(_) => self.publish(ctx, &line, None).await.map(|_| ()),
        }
    }
}

impl Source for Consumer {
    fn name(&self) -> String {
        self.deployment.name.clone()
    }

    async fn run(&mut self, ctx: &SourceContext) -> Result<(), SourceError> {
        let d = &self.deployment;
        let conn = ConnectionBuilder::new()
            .lost("lapin runtime")?
            .with_uri(d.uri.clone())
            .with_tls_config(d.tls.clone())
            .with_properties(ConnectionProperties::default())
            .connect()
            .await
            .lost(format!("connecting to {}", d.display))?;
        let channel = setup(&conn, d).await?;
        let mut consumer = channel
            .basic_consume(
                d.queue.as_str().into(),
                format!("firehose-nova-{}", d.name).as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .lost(format!("consuming from {:?}", d.queue))?;
        tracing::info!(deployment = %d.name, amqp = %d.display, exchange = %d.exchange, queue = %d.queue, routing_keys = ?d.routing_keys, prefetch = d.prefetch, "consuming nova notifications");
        ctx.connected();
        let bodies = Bodies {
            deployment: d.name.clone(),
            source_uri: format!("{}#{}", d.display, d.exchange),
            max_body_bytes: self.max_body_bytes,
        };
        let mut acks: Acks<Acker> = Acks::new();
        // lapin reports a dead connection in its log but does not always
        // end the consumer stream: look at the connection's state too.
        let mut alive = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut shutdown = ctx.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    // Take nothing more; ack what the broker already has.
                    while acks.pending() > 0 {
                        let (acker, status) = acks.next().await;
                        settle(d, acker, status).await?;
                    }
                    // A graceful close waits for RabbitMQ's close-ok, which
                    // comes after it has processed every ack sent before it;
                    // dropping the connection could cut the last acks off
                    // and have those messages delivered twice. Deliveries
                    // taken but not handled go back to the queue. Bounded:
                    // a connection dying right now may never answer.
                    let bye = conn.close(200, "firehose-nova stopping".into());
                    match tokio::time::timeout(CLOSE_TIMEOUT, bye).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => tracing::warn!(deployment = %d.name, %error, "closing the AMQP connection"),
                        Err(_) => tracing::warn!(deployment = %d.name, "no close-ok from RabbitMQ; the last acks may be lost (those messages come again)"),
                    }
                    return Err(SourceError::Stopped);
                }
                _ = alive.tick() => {
                    if !conn.status().connected() || !channel.status().connected() {
                        return Err(SourceError::Ended(format!("the connection to {} is gone", d.display)));
                    }
                }
                delivery = consumer.next() => {
                    let Some(delivery) = delivery else {
                        return Err(SourceError::Ended("consumer cancelled by RabbitMQ".into()));
                    };
                    let delivery = delivery.lost("consumer")?;
                    handle(ctx, d, &channel, &bodies, &acks, delivery).await?;
                }
                (acker, status) = acks.next() => settle(d, acker, status).await?,
            }
        }
    }
}

/// Declares what the deployment needs: prefetch, the exchange (or checks
/// it exists), our queue and its bindings.
async fn setup(conn: &Connection, d: &Deployment) -> Result<Channel, SourceError> {
    let channel = conn.create_channel().await.lost("opening a channel")?;
    channel
        .basic_qos(d.prefetch, BasicQosOptions::default())
        .await
        .lost("basic.qos")?;
    // Nova declares its exchange (not durable, as oslo.messaging does by
    // default); we only check it is there unless told otherwise.
    let exchange_opts = ExchangeDeclareOptions {
        passive: !d.declare_exchange,
        durable: false,
        ..Default::default()
    };
    let what = if d.declare_exchange {
        format!("declaring exchange {:?}", d.exchange)
    } else {
        format!(
            "exchange {:?} not found (nova creates it when it first notifies, or set declare_exchange = true)",
            d.exchange
        )
    };
    channel
        .exchange_declare(
            d.exchange.as_str().into(),
            d.exchange_kind.clone(),
            exchange_opts,
            FieldTable::default(),
        )
        .await
        .lost(what)?;
    let queue_opts = QueueDeclareOptions {
        durable: d.durable,
        auto_delete: d.auto_delete,
        ..Default::default()
    };
    channel
        .queue_declare(d.queue.as_str().into(), queue_opts, FieldTable::default())
        .await
        .lost(format!("declaring queue {:?}", d.queue))?;
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
            .lost(format!(
                "binding {:?} to {:?} with {key:?}",
                d.queue, d.exchange
            ))?;
    }
    Ok(channel)
}

/// Turns one delivery into events, acked on RabbitMQ once the broker has
/// them all (see [`settle`]), or into a dead letter, acked at once.
async fn handle(
    ctx: &SourceContext,
    d: &Deployment,
    channel: &Channel,
    bodies: &Bodies,
    acks: &Acks<Acker>,
    delivery: Delivery,
) -> Result<(), SourceError> {
    let batch = acks.batch(delivery.acker);
    if bodies.publish(ctx, &delivery.data, Some(&batch)).await? {
        return Ok(());
    }
    if let Some(dlx) = &d.dead_letter_exchange {
        let sent = channel
            .basic_publish(
                dlx.as_str().into(),
                delivery.routing_key.clone(),
                BasicPublishOptions::default(),
                &delivery.data,
                BasicProperties::default(),
            )
            .await;
        if let Err(e) = sent {
            tracing::error!(deployment = %d.name, exchange = %dlx, error = %Chain(&e), "cannot publish to the dead-letter exchange");
        }
    }
    // Nothing published: dropping the batch settles it as delivered, so
    // the bad body is acked and never loops.
    Ok(())
}

/// Acks a message whose events all reached the broker; requeues one that
/// lost an event; rejects (without requeue) one the broker refused. An ack
/// that gets no answer means the connection is gone (lapin does not always
/// say so at once): the consumer reconnects, and RabbitMQ redelivers.
async fn settle(d: &Deployment, acker: Acker, status: BatchStatus) -> Result<(), SourceError> {
    let sent = async {
        match status {
            BatchStatus::Delivered => acker.ack(BasicAckOptions::default()).await,
            BatchStatus::Failed => {
                acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await
            }
            // The broker refused it (dead-lettered by the runtime): requeued
            // it would loop; dropped here, or routed to the queue's own DLX.
            BatchStatus::Rejected => {
                acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: false,
                    })
                    .await
            }
        }
    };
    match tokio::time::timeout(ACK_TIMEOUT, sent).await {
        // false: the acker was already used or its channel poisoned; the
        // message will come again, nothing to do here.
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(SourceError::Lost {
            context: format!("acking on {}", d.display),
            source: Box::new(e),
        }),
        Err(_) => Err(SourceError::Ended(format!(
            "no answer to an ack within {ACK_TIMEOUT:?}: the connection to {} is gone",
            d.display
        ))),
    }
}

/// How long a closing connection waits for RabbitMQ's close-ok (within the
/// runtime's 3 s for a source to settle at shutdown).
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long an ack may take before the connection is taken for dead.
const ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
