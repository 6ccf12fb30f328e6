//! `firehose-ansible`'s own options, as flags or the `[source]` table.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Flags for the ansible source.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Ansible")]
pub struct AnsibleArgs {
    /// Largest plugin line accepted; longer ones are dead-lettered [default: 16 MiB].
    #[arg(long, value_name = "BYTES")]
    pub max_line_bytes: Option<usize>,
}

/// The `[source]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnsibleConfig {
    /// The socket `serve` listens on (`--socket`).
    pub socket: Option<PathBuf>,
    pub max_line_bytes: usize,
}

impl Default for AnsibleConfig {
    fn default() -> Self {
        AnsibleConfig {
            socket: None,
            max_line_bytes: 16 * 1024 * 1024,
        }
    }
}

impl AnsibleConfig {
    /// Lets flags override the file.
    pub fn apply(&mut self, a: &AnsibleArgs, socket: Option<&PathBuf>) {
        if let Some(n) = a.max_line_bytes {
            self.max_line_bytes = n;
        }
        if let Some(s) = socket {
            self.socket = Some(s.clone());
        }
    }
}
