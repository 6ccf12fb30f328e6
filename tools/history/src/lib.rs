//! `firehose-history`: keeps every Firehose event and answers questions
//! about the past (StackTach's "what happened to instance X", gerrit's
//! events-log, EventStreams' catch-up).
//!
//! - [`ingest`]: a persistent QoS 1 session; each delivery is acknowledged
//!   only once it is committed (nothing lost, nothing stored twice).
//! - [`fields`]: one message as stored: the SDK's normalized event, its key
//!   and the indexed fields (deployment, instance, request, project,
//!   change, bug, playbook).
//! - [`store`]: one schema and one query layer over SQLite and PostgreSQL;
//!   [`codec`]: payloads kept compressed, read back byte for byte.
//! - [`query`]: the API's parameters, read strictly, into SQL.
//! - [`api`]: the read-only HTTP API (pages, one subject's life, the
//!   stream); [`timings`]: StackTach's `.start`/`.end` figures; [`stats`]:
//!   the counters.
//! - [`retention`]: `--keep` and `--max-bytes`, purged in the background.
//! - [`ask`]: `firehose-history query ...`, the API's answers as tables.
//! - [`config`]: the file, environment and flags.

pub mod api;
pub mod ask;
pub mod codec;
pub mod config;
pub mod fields;
pub mod ingest;
pub mod query;
pub mod retention;
pub mod stats;
pub mod store;
pub mod timings;
