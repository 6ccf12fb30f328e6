//! `firehose-sub`: mosquitto_sub's flags and output, on the Firehose SDK
//! (reconnects by itself), plus `--type`, `--where`, `--format`, `--json`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use firehose::client::ConnectionState;
use firehose::{Client, Filter};
use firehose_sub::{Printer, Style, Template, Where};

#[derive(Parser, Debug)]
#[command(
    name = "firehose-sub",
    version,
    disable_help_flag = true,
    about = "Subscribe to the Firehose: mosquitto_sub's flags, plus typed filters and templates",
    long_about = "Subscribe to the Firehose: mosquitto_sub's flags and output, plus typed filters \
        and templates.\n\n\
        Every event is also read as one normalized JSON shape whatever the bridge's payload mode: \
        {\"topic\", \"id\", \"source\", \"type\", \"time\", \"subject\", \"data\", \"retained\"}, \
        with type as in CloudEvents (gerrit.comment-added, nova.compute.instance.create.end, \
        launchpad.bug, ansible.task.failed, subunit.run.success, zuul.buildset.failure, \
        firehose.status). --type, --where, --format and \
        --json all see that shape. It reconnects by itself when the broker goes away.\n\n\
        Exit codes as mosquitto_sub: 0 after -C messages, 27 when -W expires, 1 when the \
        broker cannot be reached at start.",
    after_help = "Examples:\n  firehose-sub -h firehose.example.org -t 'gerrit/#' -v\n  firehose-sub -t '#' --where '.type == \"gerrit.change-merged\"' --format '{{ topic }}'\n  firehose-sub -L wss://firehose.example.org/mqtt -t 'nova/#' --json --pretty"
)]
struct Cli {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Broker host.
    #[arg(short = 'h', long, default_value = "localhost")]
    host: String,
    /// Broker port [default: 1883, or 8883 with --cafile].
    #[arg(short = 'p', long)]
    port: Option<u16>,
    /// Broker URL instead of -h/-p: mqtt://, mqtts://, ws://, wss://
    /// [USER[:PASS]@]HOST[:PORT][/PATH]
    #[arg(short = 'L', long, value_name = "URL")]
    url: Option<String>,
    /// Topic filter to subscribe to (repeatable).
    #[arg(short = 't', long = "topic", value_name = "FILTER")]
    topics: Vec<String>,
    /// Print `topic payload` instead of the payload.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Exit after this many messages.
    #[arg(short = 'C', long, value_name = "COUNT")]
    count: Option<u64>,
    /// Exit after this many seconds (code 27, as mosquitto_sub).
    #[arg(short = 'W', long, value_name = "SECONDS")]
    timeout: Option<u64>,
    #[arg(short = 'u', long)]
    username: Option<String>,
    #[arg(short = 'P', long = "pw")]
    password: Option<String>,
    /// CA certificate(s) (PEM) for mqtts:// and wss:// (implies TLS with -h).
    #[arg(long, value_name = "FILE")]
    cafile: Option<PathBuf>,
    /// QoS of the subscriptions.
    #[arg(short = 'q', long, default_value_t = 0)]
    qos: u8,
    /// Keep the session on the broker (needs -i): what arrives while away
    /// is delivered on return.
    #[arg(short = 'c', long = "disable-clean-session")]
    persistent: bool,
    /// Client id.
    #[arg(short = 'i', long = "id")]
    id: Option<String>,
    /// No newline after each message.
    #[arg(short = 'N')]
    no_eol: bool,
    /// Do not print retained messages (stale state).
    #[arg(short = 'R')]
    no_retained: bool,
    /// Print only retained messages, then exit at the first live one.
    #[arg(long)]
    retained_only: bool,
    /// Only events of this type (repeatable), e.g. gerrit.comment-added.
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// Only events for which this jq expression is true, e.g.
    /// '.data.change.project == "openstack/nova"'.
    #[arg(long = "where", value_name = "EXPR")]
    filter: Option<String>,
    /// Print each event with this template (Jinja2 syntax):
    /// '{{ type }} {{ subject }} {{ data.change.subject }}'.
    #[arg(long, value_name = "TEMPLATE")]
    format: Option<String>,
    /// With --format: print the template's output as it is. By default
    /// terminal control characters (escape sequences) in it are dropped,
    /// so an event's text cannot drive your terminal.
    #[arg(long)]
    raw: bool,
    /// First print what firehose-history stored since then (an RFC 3339
    /// time, a duration back like 2h, or a cursor), then go on live: no
    /// gap, no duplicate. Needs --history.
    #[arg(long, value_name = "WHEN", requires = "history")]
    since: Option<String>,
    /// firehose-history's API, for --since (e.g. http://127.0.0.1:8090).
    #[arg(long, value_name = "URL", env = "FIREHOSE_HISTORY_URL")]
    history: Option<String>,
    /// The topic levels Zuul's MQTT reporter publishes under: its reports
    /// there are typed zuul.buildset.<action> (e.g. --type zuul.buildset.failure).
    #[arg(long, value_name = "LEVELS", env = "FIREHOSE_ZUUL_ROOT", default_value = firehose::zuul::ROOT)]
    zuul_root: String,
    /// Print the normalized event, one JSON object per line.
    #[arg(long)]
    json: bool,
    /// With --json: indented.
    #[arg(long)]
    pretty: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("firehose-sub: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<u8, String> {
    let style = match (&cli.format, cli.json) {
        (Some(t), _) => Style::Template(Box::new(
            Template::new(t).map_err(|e| format!("--format: {e}"))?,
        )),
        (None, true) => Style::Json { pretty: cli.pretty },
        (None, false) => Style::Mosquitto {
            verbose: cli.verbose,
        },
    };
    let printer = Printer {
        style,
        types: cli.types.clone(),
        filter: match &cli.filter {
            Some(e) => Some(Where::new(e).map_err(|e| format!("--where: {e}"))?),
            None => None,
        },
        skip_retained: cli.no_retained,
        no_eol: cli.no_eol,
        raw: cli.raw,
        color: std::io::stdout().is_terminal(),
    };
    let mut topics = cli.topics.clone();
    let url = match &cli.url {
        Some(u) => {
            // mosquitto_sub's -L carries the topic as its path.
            if let Some((base, topic)) = split_topic(u) {
                topics.push(topic);
                base
            } else {
                u.clone()
            }
        }
        None => {
            let tls = cli.cafile.is_some();
            let port = cli.port.unwrap_or(if tls { 8883 } else { 1883 });
            let scheme = if tls { "mqtts" } else { "mqtt" };
            let host = if cli.host.contains(':') {
                format!("[{}]", cli.host)
            } else {
                cli.host.clone()
            };
            format!("{scheme}://{host}:{port}")
        }
    };
    if topics.is_empty() {
        return Err("no topic: give at least one -t FILTER (e.g. -t '#')".into());
    }
    for t in &topics {
        firehose::filter::check(t).map_err(|e| format!("-t {e}"))?;
    }
    if cli.persistent && cli.id.is_none() {
        return Err("-c (a persistent session) needs -i ID".into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let mut b = Client::builder(&url)
            .qos(cli.qos)
            .decoder(firehose::reader::Decoder::new().zuul_root(&cli.zuul_root));
        if let (Some(u), p) = (&cli.username, &cli.password) {
            b = b.credentials(u, p.as_deref().unwrap_or_default());
        }
        if let Some(ca) = &cli.cafile {
            b = b.ca(ca);
        }
        b = match (&cli.id, cli.persistent) {
            (Some(id), true) => b.session(id),
            (Some(id), false) => b.client_id(id),
            _ => b,
        };
        let client = b.connect().await.map_err(|e| e.to_string())?;
        // Like mosquitto_sub: a broker that cannot be reached at start is
        // an error; later drops are reconnected.
        let mut state = client.state();
        let first = tokio::time::timeout(
            Duration::from_secs(15),
            state.wait_for(|s| *s != ConnectionState::Connecting),
        )
        .await
        .ok()
        .and_then(|r| r.ok().map(|s| s.clone()));
        match first {
            Some(ConnectionState::Up) => {}
            Some(ConnectionState::Down(why)) => {
                return Err(format!("cannot connect to {}: {why}", redact(&url)))
            }
            _ => return Err(format!("cannot connect to {}: no answer", redact(&url))),
        }
        drop(state);
        let mut subs = Vec::new();
        for t in &topics {
            subs.push(match (&cli.since, &cli.history) {
                (Some(since), Some(history)) => {
                    firehose::history::subscribe_since(&client, t, history, since)
                        .await
                        .map_err(|e| format!("--since: {}", firehose::report::error_chain(&e)))?
                }
                _ => client
                    .subscribe(Filter::topic(t))
                    .await
                    .map_err(|e| e.to_string())?,
            });
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        for mut s in subs {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(ev) = s.next().await {
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let deadline = cli
            .timeout
            .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
        let mut printed = 0u64;
        let mut out = std::io::stdout().lock();
        loop {
            let ev = match deadline {
                Some(d) => match tokio::time::timeout_at(d, rx.recv()).await {
                    Ok(ev) => ev,
                    Err(_) => return Ok(27),
                },
                None => rx.recv().await,
            };
            let Some(ev) = ev else { return Ok(0) };
            if cli.retained_only && !ev.retained {
                return Ok(0);
            }
            if !printer.wants(&ev) {
                continue;
            }
            if out
                .write_all(&printer.render(&ev))
                .and_then(|_| out.flush())
                .is_err()
            {
                // stdout closed (a pipe into head): done.
                return Ok(0);
            }
            printed += 1;
            if cli.count.is_some_and(|c| printed >= c) {
                client.disconnect().await;
                return Ok(0);
            }
        }
    })
}

/// `mqtt://host:1883/gerrit/%23` → (`mqtt://host:1883`, `gerrit/#`).
fn split_topic(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme.starts_with("ws") {
        return None;
    }
    let (authority, path) = rest.split_once('/')?;
    if path.is_empty() {
        return None;
    }
    let topic = firehose::url::decode(path);
    Some((format!("{scheme}://{authority}"), topic))
}

fn redact(url: &str) -> String {
    firehose::url::redact(url)
}
