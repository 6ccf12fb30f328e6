//! `firehose-ansible`: Ansible playbook events onto the firehose, on the
//! shared publishing runtime (`firehose-bridge`), with the original
//! OpenStack infra plugin's topics and payloads.
//!
//! - `plugin/firehose.py`: the callback plugin (standard library only):
//!   JSON lines on a unix socket, never blocking the playbook.
//! - [`plugin`]: ships that file and the environment that enables it.
//! - `firehose::ansible` (the SDK): a plugin line as an event: topic, raw
//!   and CloudEvents payloads.
//! - [`socket`]: the sources: `serve` (a socket, until stopped) and `run`
//!   (one command's events, then exit with its code).
//! - [`config`]: the bridge's own flags and `[source]` table.

pub mod config;
pub mod plugin;
pub mod socket;
