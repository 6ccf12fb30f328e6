//! `firehose-gerrit`'s own options: the `--gerrit` flags and the `[source]`
//! table of its config file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Flags for the gerrit source.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Gerrit")]
pub struct GerritArgs {
    /// Gerrit's SSH address: ssh://USER@HOST[:PORT] (port 29418 by default).
    #[arg(long, value_name = "URL")]
    pub gerrit: Option<String>,
    /// Private key to log in with (OpenSSH format, no passphrase, mode 0600).
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,
    /// known_hosts file to check the host key against [default: ~/.ssh/known_hosts].
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Accept only this host key (as `ssh-keygen -lf` prints it: SHA256:...).
    #[arg(long, value_name = "SHA256:...")]
    pub host_key_fingerprint: Option<String>,
    /// Do not check the host key at all. For development only.
    #[arg(long)]
    pub insecure_accept_host_key: bool,
    /// Largest event line accepted; longer ones are dead-lettered.
    #[arg(long, value_name = "BYTES")]
    pub max_line_bytes: Option<usize>,
}

/// The `[source]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GerritConfig {
    pub gerrit: Option<String>,
    pub ssh_key: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub host_key_fingerprint: Option<String>,
    pub insecure_accept_host_key: bool,
    pub max_line_bytes: usize,
    /// The command to run (Gerrit's; a test server may differ).
    pub command: String,
}

impl Default for GerritConfig {
    fn default() -> Self {
        GerritConfig {
            gerrit: None,
            ssh_key: None,
            known_hosts: None,
            host_key_fingerprint: None,
            insecure_accept_host_key: false,
            max_line_bytes: 4 * 1024 * 1024,
            command: "gerrit stream-events".to_owned(),
        }
    }
}

impl GerritConfig {
    /// Lets flags override the file.
    pub fn apply(&mut self, a: &GerritArgs) {
        if a.gerrit.is_some() {
            self.gerrit.clone_from(&a.gerrit);
        }
        if a.ssh_key.is_some() {
            self.ssh_key.clone_from(&a.ssh_key);
        }
        if a.known_hosts.is_some() {
            self.known_hosts.clone_from(&a.known_hosts);
        }
        if a.host_key_fingerprint.is_some() {
            self.host_key_fingerprint
                .clone_from(&a.host_key_fingerprint);
        }
        self.insecure_accept_host_key |= a.insecure_accept_host_key;
        if let Some(n) = a.max_line_bytes {
            self.max_line_bytes = n;
        }
    }
}
