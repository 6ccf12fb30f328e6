//! `firehose-broker`: the public MQTT event bus of the Firehose suite.
//!
//! rumqttd's protocol codecs parse MQTT 3.1.1 and 5 packets; everything
//! else is ours (see `ARCHITECTURE.md`):
//!
//! - [`transport`]: listeners, TLS, websocket upgrade, HTTP endpoints;
//! - [`codec`]: framing and validation of every packet before rumqttd sees it;
//! - [`auth`]: mosquitto password and ACL files;
//! - [`session`]: one task per client session (in-flight, will, takeover);
//! - [`router`]: subscriptions, retained messages, fan-out into outboxes;
//! - [`outbox`]: a session's bounded queue and the publisher pushback;
//! - [`message`]: a shared published message and its wire form;
//! - [`stats`]: counters for `$SYS`, `/metrics` and the web page;
//! - [`store`]: `--persistence`: the log that survives restarts and crashes;
//! - [`server`]: wires it all together.

mod admission;
pub mod auth;
pub mod codec;
pub mod config;
pub mod connect;
pub mod demo;
mod gate;
pub mod message;
pub mod outbox;
pub mod router;
pub mod server;
pub mod session;
pub mod stats;
pub mod store;
pub mod topic;
pub mod transport;
pub mod upstream;

pub use config::Config;
pub use server::Broker;
pub use transport::Kind;
