//! `firehose-subunit`: test results onto the firehose, on the shared
//! publishing runtime (`firehose-bridge`), with the original
//! `gearman-subunit` worker's topics and payloads.
//!
//! - [`v2`]: the subunit v2 packet format, parsed (pure, fuzzed).
//! - [`summary`]: one run's counts, span, tests and failures (pure).
//! - [`gearman`]: the Gearman worker protocol's framing (pure).
//! - `firehose::subunit` (the SDK): a run as an event: topic, raw and
//!   CloudEvents payloads.
//! - [`direct`]: the sources: a finished stream (`--file`) and a wrapped
//!   test command (`run -- stestr run`).
//! - [`worker`]: the Gearman worker (`push-subunit`, the original's
//!   jobs), completing a job only after the broker's PUBACK; [`fetch`]:
//!   its streams over HTTP.
//! - [`config`]: the bridge's own flags and `[source]` table.

pub mod config;
pub mod direct;
pub mod fetch;
pub mod gearman;
pub mod summary;
pub mod v2;
pub mod worker;
