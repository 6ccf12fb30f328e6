//! `firehose-nova`: flags, config file, logging; the work is in the library.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use firehose_bridge::cli::{CommonArgs, Info, Plan, ReplayArgs};
use firehose_bridge::replay::Replay;
use firehose_bridge::BoxedSource;
use firehose_nova::config::{NovaArgs, NovaConfig};
use firehose_nova::source::{Bodies, Consumer};

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
        ([[source.deployments]] tables). --replay FILE publishes a JSON-lines file of \
        bodies as they sit on RabbitMQ instead, then exits.\n\n\
        Logs go to stderr; FIREHOSE_LOG (e.g. debug, or info,lapin=debug) sets what is shown.",
    after_help = "Example (each line short enough not to wrap, so it copies as is):\n  firehose-nova --amqp amqp://firehose@rabbit.example.org/%2f \\\n    --amqp-password-file /etc/firehose/amqp.pass --deployment cell1 \\\n    --broker mqtt://nova@127.0.0.1 --password-file /etc/firehose/nova.pass"
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    replay: ReplayArgs,
    #[command(flatten)]
    nova: NovaArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let info = Info {
        name: "nova",
        version: env!("CARGO_PKG_VERSION"),
        log: "info,lapin=warn,amq_protocol=warn",
    };
    firehose_bridge::cli::main(info, cli.common, |mut src: NovaConfig, _| {
        src.apply(&cli.nova)?;
        plan(src, cli.replay.replay, cli.nova.deployment.clone())
    })
}

/// One consumer per deployment, or a replay under one deployment's name
/// (which needs only the name: no AMQP URL, no password file).
fn plan(
    src: NovaConfig,
    replay: Option<String>,
    deployment: Option<String>,
) -> Result<Plan<BoxedSource>> {
    if let Some(path) = replay {
        let name = match (deployment, src.deployments.as_slice()) {
            (Some(name), _) => name,
            (None, [d]) => d.name.clone(),
            _ => bail!("--replay publishes under one deployment: give its name with --deployment NAME (no --amqp needed)"),
        };
        firehose::topic::check_configured("deployment", &name, true)?;
        let bodies = Bodies {
            deployment: name.clone(),
            source_uri: format!("replay:{path}"),
            max_body_bytes: src.max_body_bytes,
        };
        return Ok(Plan {
            sources: vec![BoxedSource::new(Replay::new(
                path,
                src.max_body_bytes,
                bodies,
            ))],
            describe: format!("replay as deployment {name}"),
        });
    }
    let deployments = src.resolve()?;
    let names: Vec<String> = deployments
        .iter()
        .map(|d| format!("{} ({})", d.name, d.display))
        .collect();
    Ok(Plan {
        sources: deployments
            .into_iter()
            .map(|deployment| {
                BoxedSource::new(Consumer {
                    deployment,
                    max_body_bytes: src.max_body_bytes,
                })
            })
            .collect(),
        describe: format!("deployments: {}", names.join(", ")),
    })
}
