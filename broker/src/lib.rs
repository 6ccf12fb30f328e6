//! `firehose-broker`: the public MQTT event bus of the Firehose suite.
//!
//! rumqttd's protocol codecs parse MQTT 3.1.1 and 5 packets; everything
//! else is ours (see `ARCHITECTURE.md`):
//!
//! - `transport`: listeners, TLS, websocket upgrade, HTTP endpoints;
//! - `codec`: framing and validation of every packet before rumqttd sees it;
//! - `auth`: mosquitto password and ACL files;
//! - `session`: one task per client session (in-flight, will, takeover);
//! - `router`: subscriptions, retained messages, fan-out into outboxes;
//! - `outbox`: a session's bounded queue and the publisher pushback;
//! - `message`: a shared published message and its wire form;
//! - `stats`: counters for `$SYS`, `/metrics` and the web page;
//! - `store`: `--persistence`: the log that survives restarts and crashes;
//! - `shared`: the state below every connection and session;
//! - `server`: wires it all together.

mod admission;
mod auth;
mod codec;
mod config;
mod connect;
mod demo;
mod gate;
mod message;
mod origin;
mod outbox;
mod router;
mod server;
mod session;
mod shared;
mod stats;
mod store;
mod topic;
mod transport;
mod upstream;

// What the binary needs, and nothing else: every module is private to the
// crate, so the compiler tells an unused item from a used one.
pub use auth::passwd::{check_private, PasswdError};
pub use auth::PasswordFile;
pub use config::{Args, Command, Config, RunArgs};
pub use server::{Broker, StartError};
pub use stats::CLIENTS;
pub use transport::Kind;
