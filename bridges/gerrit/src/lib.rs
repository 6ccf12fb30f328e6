//! `firehose-gerrit`: Gerrit's `stream-events` over SSH onto the firehose,
//! on the shared publishing runtime (`firehose-bridge`).
//!
//! - [`ssh`]: connect, check the host key, log in, run the command.
//! - [`source`]: lines to events (`gerrit/<project>/<type>`), dead letters,
//!   reconnects; `--replay` of a JSON-lines file.
//! - [`config`]: the bridge's own flags and `[source]` table.

pub mod config;
pub mod source;
pub mod ssh;
