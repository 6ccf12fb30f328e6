//! `firehose-ansible`: subcommands and flags; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use firehose_ansible::config::{AnsibleArgs, AnsibleConfig};
use firehose_ansible::plugin;
use firehose_ansible::socket::{Run, Serve};
use firehose_bridge::cli::{CommandExit, CommonArgs, Info, Plan};
use firehose_bridge::BoxedSource;

#[derive(Parser, Debug)]
#[command(
    name = "firehose-ansible",
    version,
    about = "Publish Ansible playbook events onto the Firehose MQTT bus",
    long_about = "Publish Ansible playbook events onto the Firehose MQTT bus.\n\n\
        A callback plugin (standard library Python, shipped inside this binary) writes play \
        starts, task results (ok, changed, failed, skipped, unreachable, async, loop items) and \
        stats as JSON lines to a unix socket; this bridge publishes them on \
        ansible/playbook/<play uuid>/... as the original OpenStack infra plugin did. The \
        plugin never slows or breaks a playbook: with no bridge listening, or a slow one, it \
        warns once and drops events. Results of no_log tasks never leave it.\n\n\
        Logs go to stderr; FIREHOSE_LOG (e.g. debug) sets what is shown.",
    after_help = "Examples:\n  firehose-ansible run --broker mqtt://ansible@127.0.0.1 \\\n    --password-file /etc/firehose/ansible.pass -- ansible-playbook site.yml\n\n  firehose-ansible serve --socket /run/firehose/ansible.sock \\\n    --broker mqtt://ansible@127.0.0.1 --password-file /etc/firehose/ansible.pass\n  export ANSIBLE_CALLBACK_PLUGINS=$(firehose-ansible plugin-path)\n  export ANSIBLE_CALLBACKS_ENABLED=firehose\n  export FIREHOSE_ANSIBLE_SOCKET=/run/firehose/ansible.sock"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run one command (an ansible-playbook) with the plugin enabled,
    /// publish its events, wait until the broker has them all (bounded by
    /// --flush-timeout), and exit with the command's own exit code.
    Run {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        ansible: AnsibleArgs,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Publish whatever plugins write to a unix socket, until stopped.
    Serve {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        ansible: AnsibleArgs,
        /// The socket to listen on (FIREHOSE_ANSIBLE_SOCKET for the plugin).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Install the callback plugin and print its directory, for
    /// ANSIBLE_CALLBACK_PLUGINS.
    PluginPath {
        /// Where to put it [default: $XDG_DATA_HOME/firehose/ansible or
        /// ~/.local/share/firehose/ansible].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

const INFO: Info = Info {
    name: "ansible",
    version: env!("CARGO_PKG_VERSION"),
    log: "info",
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = firehose_bridge::cli::init_logging(INFO.log) {
        eprintln!("firehose-ansible: {}", firehose::report::error_chain(&e));
        return ExitCode::from(2);
    }
    match cli.cmd {
        Cmd::PluginPath { dir } => plugin_path(dir),
        Cmd::Serve {
            common,
            ansible,
            socket,
        } => {
            let r = firehose_bridge::cli::run(INFO, common, |mut src: AnsibleConfig, _| {
                src.apply(&ansible, socket.as_ref());
                let Some(path) = src.socket.clone() else {
                    return Err("serve needs --socket PATH (or socket in [source])".to_owned());
                };
                Ok(Plan {
                    describe: format!("socket {}", path.display()),
                    sources: vec![BoxedSource::new(Serve {
                        path,
                        max_line_bytes: src.max_line_bytes,
                    })],
                })
            });
            firehose_bridge::cli::exit("firehose-ansible", r)
        }
        Cmd::Run {
            common,
            ansible,
            command,
        } => {
            let exit = CommandExit::default();
            let exit2 = exit.clone();
            let r = firehose_bridge::cli::run(INFO, common, |mut src: AnsibleConfig, _| {
                src.apply(&ansible, None);
                let dir = tempfile::Builder::new()
                    .prefix("firehose-ansible-")
                    .tempdir()
                    .map_err(|e| format!("a private directory for the socket: {e}"))?;
                Ok::<_, String>(Plan {
                    describe: format!("run {}", command.join(" ")),
                    sources: vec![BoxedSource::new(Run {
                        command,
                        max_line_bytes: src.max_line_bytes,
                        dir,
                        exit: exit2,
                    })],
                })
            });
            firehose_bridge::cli::exit_as_command("firehose-ansible", r, exit.get())
        }
    }
}

/// `plugin-path`: installs the plugin, prints the directory.
fn plugin_path(dir: Option<PathBuf>) -> ExitCode {
    let Some(dir) = dir.or_else(plugin::default_dir) else {
        eprintln!("firehose-ansible: no HOME or XDG_DATA_HOME: pass --dir DIR");
        return ExitCode::FAILURE;
    };
    match plugin::install(&dir) {
        Ok(d) => {
            println!("{}", d.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "firehose-ansible: writing the plugin into {}: {e}",
                dir.display()
            );
            ExitCode::FAILURE
        }
    }
}
