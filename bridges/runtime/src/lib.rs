//! The publishing runtime every Firehose bridge runs on.
//!
//! A bridge is a source (see [`source`]) plus this runtime: the runtime
//! connects to the broker ([`mqtt`]), keeps every event in the [`spool`]
//! until the broker acknowledged it, reconnects with [`backoff`], keeps the
//! retained status message and its will, serves [`metrics`], and writes
//! [`deadletter`]s. Configuration shared by all bridges is in [`config`].
//!
//! A source implements [`Source`]: connect, read, [`SourceContext::publish`]
//! each event; the runtime retries it with backoff, tracks its state for the
//! status message and stops it on SIGTERM. [`cli::main`] is the `main` every
//! bridge binary shares.
//!
//! ```no_run
//! use firehose_bridge::{ResultExt, Source, SourceContext, SourceError};
//!
//! /// Publishes the lines of a file, once.
//! struct Demo;
//!
//! impl Source for Demo {
//!     fn name(&self) -> String {
//!         "demo".into()
//!     }
//!     async fn run(&mut self, ctx: &SourceContext) -> Result<(), SourceError> {
//!         let text = tokio::fs::read_to_string("events.jsonl").await.fatal("events.jsonl")?;
//!         ctx.connected();
//!         for line in text.lines() {
//!             if let Ok(ev) = firehose::gerrit::GerritEvent::parse(line.as_bytes()) {
//!                 ctx.publish(&ev, "file:events.jsonl", None).await?;
//!             }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # async fn demo(cfg: firehose_bridge::config::Publish) -> Result<(), firehose_bridge::runtime::RuntimeError> {
//! firehose_bridge::Bridge::new("demo", "0.1.0", cfg).run(vec![Demo]).await
//! # }
//! ```

pub mod ack;
pub mod cli;
pub mod config;
pub mod deadletter;
mod ledger;
pub mod lines;
pub mod mqtt;
pub mod print;
pub mod replay;
pub mod runtime;
pub mod source;
pub mod spool;
pub mod stats;
/// Every URL a bridge is given is read by the SDK's parser.
pub use firehose::{backoff, url};

pub use ack::{Acks, Batch, BatchStatus};
pub use print::PrintFormat;
pub use runtime::Bridge;
pub use source::{BoxedSource, Event, ResultExt, Source, SourceContext, SourceError};
