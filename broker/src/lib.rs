//! `firehose-broker`: the public MQTT event bus of the Firehose suite.
//!
//! The rumqttd router does the routing; everything on the network side of
//! it is ours (see `ARCHITECTURE.md`):
//!
//! - [`transport`]: listeners, TLS, websocket upgrade, HTTP endpoints;
//! - [`codec`]: framing and validation of every packet before rumqttd sees it;
//! - [`auth`]: mosquitto password and ACL files;
//! - [`session`]: one task per client session (queue, in-flight, will, takeover);
//! - [`router`]: the embedded router and the pooled links to it;
//! - [`stats`]: counters for `$SYS`, `/metrics` and the web page;
//! - [`server`]: wires it all together.

pub mod auth;
pub mod codec;
pub mod config;
pub mod connect;
pub mod router;
pub mod server;
pub mod session;
pub mod stats;
pub mod topic;
pub mod transport;

pub use config::Config;
pub use server::Broker;
pub use transport::Kind;
