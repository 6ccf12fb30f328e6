//! The logins tests publish with, in one place: each bridge's user as
//! `deploy/broker.acl` names it (so a test can run against that ACL), and a
//! plain publisher for tests of the broker itself. One password for all:
//! tests that check a secret never reaches a log search for it.

/// The password every test login has.
pub const PASSWORD: &str = "bridge-pw";

/// A publisher with no bridge's name (broker tests, SDK and tool tests).
pub const PUBLISHER: (&str, &str) = ("bridge", PASSWORD);
/// firehose-gerrit's user (writes `gerrit/#`).
pub const GERRIT: (&str, &str) = ("gerrit-bridge", PASSWORD);
/// firehose-nova's user (writes `nova/#`).
pub const NOVA: (&str, &str) = ("nova-bridge", PASSWORD);
/// firehose-launchpad's user (writes `launchpad/#`).
pub const LAUNCHPAD: (&str, &str) = ("launchpad-bridge", PASSWORD);
/// firehose-ansible's user (writes `ansible/#`).
pub const ANSIBLE: (&str, &str) = ("ansible-bridge", PASSWORD);
/// firehose-subunit's user (writes `gearman-subunit/#`).
pub const SUBUNIT: (&str, &str) = ("subunit-bridge", PASSWORD);
