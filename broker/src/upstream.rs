//! `--upstream URL`: a read-only mirror edge. The broker subscribes to
//! everything on a core broker (`#`, which never matches `$SYS`) as an
//! MQTT 5 client with retain-as-published, and publishes what arrives
//! through its own router, retained state included; its own clients may
//! only read. Readers spread over many edges (DNS, a load balancer) while
//! the bridges publish to the core once.
//!
//! The edge keeps a session on the core (an hour), so a short outage of
//! the edge loses nothing; on every (re)connection it subscribes again,
//! which makes the core send its retained messages again: the edge's
//! retained state is re-synced (a retained message deleted on the core
//! while the edge was away stays until it is replaced).

use firehose::report::Chain;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use firehose::backoff::Backoff;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, RetainForwardRule};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};

use crate::config::Upstream;
use crate::shared::Internal;

/// Why the upstream settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("--upstream")]
    Url(#[from] firehose::url::UrlError),
    #[error("--upstream must be mqtt:// or mqtts:// (got {0}://)")]
    Scheme(String),
    #[error("--upstream-ca")]
    Tls(#[from] firehose::tls::TlsError),
    #[error("--upstream-password-file {path}: cannot read it")]
    Password {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The client options for the core (`up.url` is set).
pub fn options(up: &Upstream) -> Result<MqttOptions, UpstreamError> {
    let url = up.url.as_deref().unwrap_or("");
    let e = firehose::url::parse(url, firehose::url::MQTT_SCHEMES, firehose::url::MQTT_FORM)?;
    let tls = match e.scheme.as_str() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => return Err(UpstreamError::Scheme(other.to_owned())),
    };
    let id = format!("firehose-edge-{}", firehose::status::hostname());
    let mut o = MqttOptions::new(id, e.host.clone(), e.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(3600));
    o.set_max_packet_size(Some(16 * 1024 * 1024));
    let password = match &up.password_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|source| UpstreamError::Password {
                    path: p.display().to_string(),
                    source,
                })?
                .lines()
                .next()
                .unwrap_or("")
                .to_owned(),
        ),
        None => e.password.clone(),
    };
    if let Some(user) = &e.user {
        o.set_credentials(user.clone(), password.unwrap_or_default());
    }
    if tls {
        let cfg = firehose::tls::client_config(up.ca.as_deref())?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(cfg)));
    }
    Ok(o)
}

/// Mirrors the core until shutdown.
pub(crate) async fn run(broker: Internal, opts: MqttOptions, shown: String) {
    let (client, mut ev) = AsyncClient::new(opts, 64);
    let mut shutdown = broker.shutdown();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let polled = tokio::select! {
            _ = shutdown.changed() => {
                let _ = client.disconnect().await;
                return;
            }
            p = ev.poll() => p,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                broker.stats().upstream_connected.store(1, Relaxed);
                tracing::info!(upstream = %shown, session_present = ack.session_present, "connected to the upstream broker; mirroring #");
                // Every time: the core sends its retained messages again.
                let mut f = Filter::new("#", QoS::ExactlyOnce);
                f.preserve_retain = true;
                f.retain_forward_rule = RetainForwardRule::OnEverySubscribe;
                if let Err(e) = client.subscribe_many([f]).await {
                    tracing::error!(error = %Chain(&e), "upstream: cannot subscribe");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                broker.stats().upstream_messages.fetch_add(1, Relaxed);
                // As published on the core (the edge subscribes at QoS 2).
                let qos = match p.qos {
                    QoS::AtMostOnce => 0,
                    QoS::AtLeastOnce => 1,
                    QoS::ExactlyOnce => 2,
                };
                broker.publish(p.topic, p.payload, qos, p.retain);
            }
            Ok(_) => {}
            Err(e) => {
                broker.stats().upstream_connected.store(0, Relaxed);
                let delay = backoff.next_delay();
                tracing::warn!(upstream = %shown, error = %Chain(&e), retry_in = ?delay, "upstream broker unreachable; retrying");
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
