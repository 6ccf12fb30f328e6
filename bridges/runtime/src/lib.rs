//! The publishing runtime every Firehose bridge runs on.
//!
//! A bridge is a source (see [`source`]) plus this runtime: the runtime
//! connects to the broker ([`mqtt`]), keeps every event in the [`spool`]
//! until the broker acknowledged it, reconnects with [`backoff`], keeps the
//! retained status message and its will, serves [`metrics`], and writes
//! [`deadletter`]s. Configuration shared by all bridges is in [`config`].
//!
//! ```no_run
//! # async fn demo(cfg: firehose_bridge::config::Publish) -> Result<(), firehose_bridge::runtime::RuntimeError> {
//! use firehose_bridge::{runtime::Bridge, source::Event};
//! Bridge::new("demo", "0.1.0", cfg)
//!     .run(|ctx| async move {
//!         let ev = Event { topic: ctx.topic("demo/hello"), payload: "hi".into(), retain: false, ack: None };
//!         ctx.events.send(ev).await.map_err(|e| e.to_string())
//!     })
//!     .await
//! # }
//! ```

pub mod backoff;
pub mod cli;
pub mod config;
pub mod deadletter;
pub mod lines;
pub mod metrics;
pub mod mqtt;
pub mod print;
pub mod runtime;
pub mod source;
pub mod spool;
pub mod stats;

pub use runtime::{Bridge, PrintFormat};
pub use source::{Event, SourceContext};
