//! The harness every Firehose integration test shares: start the real
//! binaries (`firehose-broker`, the bridges) on loopback ports they pick
//! themselves, find real client tools and services (failing with an install
//! hint when one is missing, never skipping), and speak raw MQTT for the
//! bad-input cases.

pub mod broker;
pub mod certs;
pub mod dovecot;
pub mod history;
pub mod logins;
pub mod mosquitto;
pub mod postgres;
pub mod process;
pub mod rabbitmq;
pub mod raw;
pub mod receivers;
pub mod samples;
pub mod sshd;
pub mod subscriber;

pub use broker::*;
pub use certs::*;
pub use dovecot::*;
pub use history::*;
pub use mosquitto::*;
pub use postgres::*;
pub use process::*;
pub use rabbitmq::*;
pub use raw::*;
pub use receivers::*;
pub use samples::*;
pub use sshd::*;
pub use subscriber::*;
