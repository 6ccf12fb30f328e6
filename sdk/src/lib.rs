//! The Firehose event model, shared by every bridge that publishes and every
//! program that subscribes.
//!
//! - [`topic`]: the topic names, compatible with the original firehose
//!   (`gerrit/<project>/<event-type>`, `nova/<deployment>/...`, ...).
//! - [`envelope`]: the CloudEvents 1.0 structured-JSON envelope, with ids
//!   derived from the source event so redundant bridges agree.
//! - [`status`]: the retained liveness message each bridge keeps on
//!   `firehose/status/<bridge>/<instance>`.
//! - [`gerrit`]: `gerrit stream-events` lines, parsed leniently across
//!   Gerrit versions.
//! - [`nova`]: nova notifications as they sit on RabbitMQ (oslo 2.0 envelope
//!   or bare), versioned or legacy payloads, service status.
//! - [`launchpad`]: Launchpad notifications with lpmqtt's fields.
//! - [`ansible`]: playbook events as the callback plugin sends them and as
//!   they are published.
//! - [`subunit`]: test-result runs (and their tests) as `firehose-subunit`
//!   publishes them; [`zuul`]: the reports Zuul's MQTT reporter publishes.
//! - [`reader`]: one MQTT message as a subscriber sees it: a normalized
//!   [`reader::Event`] whatever the payload mode, and the typed event.
//! - [`Client`] ([`client`]): the reconnecting subscriber; [`Filter`]
//!   ([`filter`]) builds what to subscribe to; [`liveness`] answers "is it
//!   up?" from the retained status topics.
//! - `history` (feature `history`): catching up from firehose-history,
//!   then live, with no gap and no duplicate.
//! - `logging` (feature `logging`): the log setup of every Firehose
//!   program (`FIREHOSE_LOG`).
//! - [`PayloadMode`]: CloudEvents, or byte-for-byte what the original
//!   publisher sent (for existing consumers).

#![deny(missing_docs)]

pub mod ansible;
pub mod backoff;
pub mod client;
pub mod envelope;
pub mod filter;
pub mod gerrit;
#[cfg(feature = "history")]
pub mod history;
pub mod launchpad;
pub mod liveness;
#[cfg(feature = "logging")]
pub mod logging;
pub mod metrics;
pub mod nova;
pub mod reader;
pub mod report;
pub mod secret;
pub mod status;
pub mod subunit;
pub mod tls;
pub mod topic;
pub mod url;
pub mod zuul;

pub use client::Client;
pub use envelope::CloudEvent;
pub use filter::Filter;

/// A typed event a bridge can publish: where it goes and both of its
/// payload forms. The bridge runtime picks the form `--payload` asks for,
/// so no bridge repeats that switch.
pub trait Publishable {
    /// The topic, before any `--base-topic`.
    fn topic(&self) -> String;
    /// The payload in raw mode: exactly what the original publisher sent.
    fn raw(&self) -> Vec<u8>;
    /// The CloudEvents envelope. `source` is the upstream's URI; `received`
    /// stands in when the event does not say when it happened.
    fn cloudevent(&self, source: &str, received: time::OffsetDateTime) -> CloudEvent;
}

/// What a bridge puts in the MQTT payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadMode {
    /// A CloudEvents 1.0 structured JSON envelope around the source event.
    #[default]
    Cloudevents,
    /// Exactly the bytes the original publisher (germqtt, lpmqtt, ...) sent.
    Raw,
}

impl std::str::FromStr for PayloadMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cloudevents" => Ok(PayloadMode::Cloudevents),
            "raw" => Ok(PayloadMode::Raw),
            other => Err(format!(
                "unknown payload mode {other:?}: use \"cloudevents\" or \"raw\""
            )),
        }
    }
}

impl std::fmt::Display for PayloadMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PayloadMode::Cloudevents => "cloudevents",
            PayloadMode::Raw => "raw",
        })
    }
}
