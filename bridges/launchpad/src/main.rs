//! `firehose-launchpad`: flags and config; the work is in the library.

use std::process::ExitCode;

use clap::Parser;
use firehose_bridge::cli::{CommonArgs, Info, Plan};
use firehose_bridge::BoxedSource;
use firehose_launchpad::config::{Input, LaunchpadArgs, LaunchpadConfig};
use firehose_launchpad::files::{Maildir, Mbox};
use firehose_launchpad::imap::ImapSource;

#[derive(Parser, Debug)]
#[command(
    name = "firehose-launchpad",
    version,
    about = "Publish Launchpad notification mail onto the Firehose MQTT bus",
    long_about = "Publish Launchpad notification mail onto the Firehose MQTT bus.\n\n\
        Watches an IMAP folder (IDLE, or polling) for unseen mail from Launchpad and publishes \
        each on launchpad/<project>/<event-type>/<bug-number> as lpmqtt did: --payload raw is \
        lpmqtt's JSON dict, the default CloudEvents envelope adds every task of the bug. A mail \
        is marked seen (or moved, or deleted: --after) only once the broker acknowledged its \
        event; other mail is never touched. Mail that is from Launchpad but unreadable goes whole \
        to the dead-letter file. --maildir DIR and --mbox FILE publish a backlog, then exit.\n\n\
        Settings come from --config (TOML: [publish] and [source] tables), then flags. Logs go \
        to stderr; FIREHOSE_LOG (e.g. debug) sets what is shown.",
    after_help = "Example (each line short enough not to wrap, so it copies as is):\n  firehose-launchpad --imap imaps://lp-bugs@mail.example.org/INBOX \\\n    --imap-password-file /etc/firehose/imap.pass \\\n    --broker mqtt://launchpad@127.0.0.1 \\\n    --password-file /etc/firehose/launchpad.pass"
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    launchpad: LaunchpadArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let info = Info {
        name: "launchpad",
        version: env!("CARGO_PKG_VERSION"),
        log: "info",
    };
    firehose_bridge::cli::main(info, cli.common, |mut src: LaunchpadConfig, _| {
        src.apply(&cli.launchpad);
        let (source, describe) = match src.resolve()? {
            Input::Imap(a) => {
                let d = format!(
                    "imap {} (after: {})",
                    a.display,
                    String::from(a.after.clone())
                );
                (BoxedSource::new(ImapSource::new(*a)), d)
            }
            Input::Maildir(dir) => {
                let d = format!("maildir {}", dir.display());
                let maildir = Maildir {
                    dir,
                    screen: src.screen()?,
                };
                (BoxedSource::new(maildir), d)
            }
            Input::Mbox(path) => {
                let d = format!("mbox {path}");
                let mbox = Mbox {
                    path,
                    screen: src.screen()?,
                };
                (BoxedSource::new(mbox), d)
            }
        };
        Ok::<_, firehose_launchpad::config::ConfigError>(Plan {
            sources: vec![source],
            describe,
        })
    })
}
