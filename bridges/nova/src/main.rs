//! `firehose-nova`: flags, config file, logging; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use firehose_bridge::config::{load_file, FileConfig, PublishArgs};
use firehose_bridge::{Bridge, PrintFormat};
use firehose_nova::config::{NovaArgs, NovaConfig};
use firehose_nova::source::{self, Nova};

#[derive(Parser, Debug)]
#[command(
    name = "firehose-nova",
    version,
    about = "Publish OpenStack nova notifications from RabbitMQ onto the Firehose MQTT bus",
    long_about = "Publish OpenStack nova notifications from RabbitMQ onto the Firehose MQTT bus.\n\n\
        Reads from its own queue (firehose.<deployment>) bound to nova's exchange, so other \
        consumers keep getting every message, and publishes each notification on \
        nova/<deployment>/<event type with dots as levels>, as a CloudEvents envelope or, \
        with --payload raw, the inner oslo message. A message is acked on RabbitMQ only after \
        the MQTT broker acknowledged it. service.* notifications also keep a retained \
        nova/<deployment>/service/<binary>/<host> saying up or down.\n\n\
        One deployment from flags, or several (cells, regions) from --config \
        ([[source.deployments]] tables).",
    after_help = "Example (each line short enough not to wrap, so it copies as is):\n  firehose-nova --amqp amqp://firehose@rabbit.example.org/%2f \\\n    --amqp-password-file /etc/firehose/amqp.pass --deployment cell1 \\\n    --broker mqtt://nova@127.0.0.1 --password-file /etc/firehose/nova.pass"
)]
struct Cli {
    /// TOML config file with [publish] and [source] tables.
    #[arg(long, env = "FIREHOSE_NOVA_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration and the files it names, then exit.
    #[arg(long)]
    check_config: bool,
    /// Print the normalized events to stdout (json or yaml) instead of publishing them.
    #[arg(long, value_name = "FORMAT")]
    print: Option<PrintFormat>,
    #[command(flatten)]
    nova: NovaArgs,
    #[command(flatten)]
    publish: PublishArgs,
}

fn main() -> ExitCode {
    firehose_bridge::cli::init_logging("info,lapin=warn,amq_protocol=warn");
    firehose_bridge::cli::exit("firehose-nova", run(Cli::parse()))
}

fn run(cli: Cli) -> Result<()> {
    let mut file: FileConfig<NovaConfig> = match &cli.config {
        Some(p) => load_file(p)?,
        None => FileConfig::default(),
    };
    file.publish.apply(&cli.publish);
    file.source.apply(&cli.nova)?;
    let publish = file.publish.resolve("nova")?;
    let deployments = file.source.resolve()?;
    if cli.check_config {
        let names: Vec<String> = deployments
            .iter()
            .map(|d| format!("{} ({})", d.name, d.display))
            .collect();
        println!(
            "firehose-nova: configuration OK (broker {}, deployments: {})",
            publish.url,
            names.join(", ")
        );
        return Ok(());
    }
    let nova = Nova {
        deployments,
        max_body_bytes: file.source.max_body_bytes,
    };
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let mut bridge = Bridge::new("nova", env!("CARGO_PKG_VERSION"), publish);
    if let Some(format) = cli.print {
        bridge = bridge.print_only(format);
    }
    rt.block_on(bridge.run(move |ctx| source::run(ctx, nova)))?;
    Ok(())
}
