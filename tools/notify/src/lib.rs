//! `firehose-notify`: mqttwarn's model on the Firehose SDK. Rules pick
//! events (topic filters, event type, a jq expression), render a message
//! (a Jinja template over the normalized event) and hand it to named
//! targets (exec, webhook, smtp, file, mqtt, log), each with its own queue
//! and retries. Dedup and throttle keep redundant bridges and bursts from
//! flooding anyone.
//!
//! - [`config`]: the TOML file, checked before anything starts.
//! - [`rules`]: matching, messages, dedup, throttle and summaries.
//! - [`targets`]: delivery, one queue and task per target.
//! - [`service`]: the running process (subscriptions, reload, shutdown).
//! - [`import`]: converts a mqttwarn `.ini` to our TOML.
//! - [`stats`]: counts for `--metrics` and the log.

pub mod config;
pub mod import;
pub mod rules;
pub mod service;
pub mod stats;
pub mod targets;
