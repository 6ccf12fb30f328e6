//! `firehose-launchpad`: Launchpad notification mail onto the firehose, on
//! the shared publishing runtime (`firehose-bridge`), compatible with
//! lpmqtt's topics and payloads.
//!
//! - [`mail`]: which mail is an event, lpmqtt's fields, topic, payloads.
//! - [`imap`]: the live source: an IMAP folder (TLS, STARTTLS), IDLE or
//!   polling; a mail is marked seen (or moved, or deleted) only after the
//!   broker acknowledged its event.
//! - [`files`]: backfill from a maildir or an mbox, then exit.
//! - [`config`]: the bridge's own flags and `[source]` table.

pub mod config;
pub mod dkim;
pub mod files;
pub mod imap;
pub mod mail;
