//! `firehose-history`: the thin binary over the library (flags, logging,
//! signals).

use firehose::report::Chain;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use firehose_history::api::{self, Api};
use firehose_history::config::File;
use firehose_history::ingest;
use firehose_history::stats::Stats;
use firehose_history::store::Store;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser, Debug)]
#[command(
    name = "firehose-history",
    version,
    about = "Keeps every Firehose event in SQLite or PostgreSQL and answers questions about the past over HTTP",
    long_about = "Keeps every Firehose event and answers questions about the past.\n\n\
        It subscribes to the broker with a persistent session at QoS 1 and acknowledges each \
        event only once it is committed, so a restart (of firehose-history or of the broker) \
        loses nothing; events are keyed by their id, so a redundant bridge's copy or a \
        redelivery is counted, not stored twice. A slow database never slows the bus: the \
        broker keeps what is not acknowledged yet in this session's own queue.\n\n\
        The API (read-only, anonymous, JSON; docs/history.md): GET /v1/events?topic=&type=&subject=&since=&until=&from=&to=&q=&limit=&after=, \
        GET /v1/events/<id>, GET /metrics.\n\n\
        Settings come from --config (TOML: [broker] [store] [http]), then FIREHOSE_HISTORY_* \
        variables, then flags.",
    after_help = "Examples:\n  firehose-broker --demo &\n  firehose-history --broker mqtt://127.0.0.1\n  firehose-history query events --type 'nova.instance.*' --since 2h\n  firehose-history query subject <instance uuid>\n  firehose-history query timings --type 'nova.*'\n  curl 'http://127.0.0.1:8090/v1/events?type=nova.instance.*&since=2h'\n  firehose-history --config /etc/firehose/history.toml --check-config"
)]
struct Cli {
    /// The configuration file (TOML); flags and variables override it.
    #[arg(long, env = "FIREHOSE_HISTORY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The broker: mqtt://, mqtts://, ws://, wss:// (user and password may be in it).
    #[arg(long, env = "FIREHOSE_HISTORY_BROKER", value_name = "URL")]
    broker: Option<String>,
    /// The store: sqlite:PATH (default: history.db in $STATE_DIRECTORY,
    /// $XDG_STATE_HOME/firehose or ~/.local/state/firehose) or
    /// postgres://USER@HOST/DB.
    #[arg(long, env = "FIREHOSE_HISTORY_DB", value_name = "URL")]
    db: Option<String>,
    /// Where the API listens (default 127.0.0.1:8090), or `none`.
    #[arg(long, env = "FIREHOSE_HISTORY_HTTP", value_name = "ADDR")]
    http: Option<String>,
    /// A topic filter to store (repeat for several; default #). $SYS is never stored.
    #[arg(long = "filter", value_name = "FILTER")]
    filters: Vec<String>,
    /// A $share group: several ingesters into one PostgreSQL split the events, each stored once.
    #[arg(long, value_name = "GROUP")]
    share: Option<String>,
    /// The topic levels Zuul's MQTT reporter publishes under (default zuul): its
    /// reports there are stored typed zuul.buildset.<action>.
    #[arg(long, env = "FIREHOSE_ZUUL_ROOT", value_name = "LEVELS")]
    zuul_root: Option<String>,
    /// The persistent session's client id (default firehose-history).
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// Purge events received longer ago than this (30d, 12h; default: keep all).
    #[arg(long, env = "FIREHOSE_HISTORY_KEEP", value_name = "DURATION")]
    keep: Option<String>,
    /// Past this size, purge the oldest events (20GiB, 512MiB).
    #[arg(long, env = "FIREHOSE_HISTORY_MAX_BYTES", value_name = "SIZE")]
    max_bytes: Option<String>,
    /// How often retention runs (default 60s).
    #[arg(long, value_name = "DURATION")]
    purge_every: Option<String>,
    /// A file holding the broker password (first line; mode 0600 or 0640).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Check the settings (and open the database, creating or migrating its
    /// schema) and exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Ask a running firehose-history (Stacky's questions): a table, or --json.
    Query {
        /// Its API (its --http).
        #[arg(
            long,
            env = "FIREHOSE_HISTORY_URL",
            default_value = "http://127.0.0.1:8090",
            value_name = "URL"
        )]
        url: String,
        /// The API's JSON instead of a table (events: one per line).
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        what: What,
    },
}

#[derive(Subcommand, Debug)]
enum What {
    /// Events, oldest first: by topic filter, type, subject, time, text,
    /// indexed field.
    Events {
        /// An MQTT topic filter (gerrit/+/patchset-created, nova/#).
        #[arg(long)]
        topic: Option<String>,
        /// A type, or a prefix ending in * (nova.instance.*).
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
        #[arg(long)]
        subject: Option<String>,
        /// Received since: an RFC 3339 time, a duration back (2h) or a cursor.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Received until (same forms).
        #[arg(long, value_name = "WHEN")]
        until: Option<String>,
        /// The event's own time from / to (RFC 3339 or a duration back).
        #[arg(long, value_name = "WHEN")]
        from: Option<String>,
        #[arg(long, value_name = "WHEN")]
        to: Option<String>,
        /// Text the payload contains.
        #[arg(long)]
        text: Option<String>,
        /// An indexed field: deployment, instance, request, project, change,
        /// bug or playbook (repeatable), e.g. --field instance=UUID.
        #[arg(long = "field", value_name = "NAME=VALUE")]
        fields: Vec<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One event, whole.
    Show { id: String },
    /// Every event of one instance, request, change, bug or playbook, in
    /// its own time order, with the gaps.
    Subject { subject: String },
    /// StackTach's timings: count, min, p50, p95, max, mean per operation.
    Timings {
        /// A type prefix (nova.instance.*).
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        #[arg(long, value_name = "WHEN")]
        until: Option<String>,
    },
}

/// The question a `query` subcommand asks.
fn question(what: What) -> anyhow::Result<firehose_history::ask::Question> {
    use firehose_history::ask::Question;
    let pairs = |list: Vec<(&str, Option<String>)>| -> Vec<(String, String)> {
        list.into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect()
    };
    Ok(match what {
        What::Events {
            topic,
            kind,
            subject,
            since,
            until,
            from,
            to,
            text,
            fields,
            limit,
        } => {
            let mut params = pairs(vec![
                ("topic", topic),
                ("type", kind),
                ("subject", subject),
                ("since", since),
                ("until", until),
                ("from", from),
                ("to", to),
                ("q", text),
            ]);
            for f in fields {
                let (k, v) = f.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!("--field {f:?}: give NAME=VALUE, e.g. --field instance=UUID")
                })?;
                params.push((k.to_owned(), v.to_owned()));
            }
            params.push(("limit".into(), limit.clamp(1, 1000).to_string()));
            Question::Events { params, max: limit }
        }
        What::Show { id } => Question::Show { id },
        What::Subject { subject } => Question::Subject { subject },
        What::Timings { kind, since, until } => Question::Timings {
            params: pairs(vec![("type", kind), ("since", since), ("until", until)]),
        },
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = firehose::logging::init("info") {
        eprintln!("firehose-history: {}", firehose::report::error_chain(&e));
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("firehose-history: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "firehose-history: {}",
                firehose::report::error_chain(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn merged(cli: &Cli) -> anyhow::Result<File> {
    let mut f = match &cli.config {
        Some(p) => File::read(p)?,
        None => File::default(),
    };
    if let Some(b) = &cli.broker {
        f.broker.url = Some(b.clone());
    }
    if let Some(d) = &cli.db {
        f.store.db = Some(d.clone());
    }
    if let Some(h) = &cli.http {
        f.http.listen = Some(h.clone());
    }
    if !cli.filters.is_empty() {
        f.broker.filters = Some(cli.filters.clone());
    }
    if let Some(s) = &cli.share {
        f.broker.share = Some(s.clone());
    }
    if let Some(s) = &cli.session {
        f.broker.session = Some(s.clone());
    }
    if let Some(z) = &cli.zuul_root {
        f.broker.zuul_root = Some(z.clone());
    }
    if let Some(k) = &cli.keep {
        f.store.keep = Some(k.clone());
    }
    if let Some(m) = &cli.max_bytes {
        f.store.max_bytes = Some(m.clone());
    }
    if let Some(p) = &cli.purge_every {
        f.store.purge_every = Some(p.clone());
    }
    if let Some(p) = &cli.password_file {
        f.broker.password_file = Some(p.clone());
    }
    Ok(f)
}

async fn run(mut cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Query { url, json, what }) = cli.command.take() {
        let text = firehose_history::ask::ask(&url, &question(what)?, json).await?;
        print!("{text}");
        return Ok(());
    }
    let settings = merged(&cli)?.settings()?;
    let store = Store::open(&settings.db)
        .await
        .with_context(|| format!("--db {}", firehose::url::redact(&settings.db)))?;
    let events = store.count().await?;
    if cli.check_config {
        println!(
            "firehose-history: settings are good; {} holds {events} events",
            firehose::url::redact(&settings.db)
        );
        return Ok(());
    }
    tracing::info!(db = %firehose::url::redact(&settings.db), events, "store open");
    let stats = Arc::new(Stats::default());
    if let Some(addr) = settings.http {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --http {addr}"))?;
        let addr = listener.local_addr().unwrap_or(addr);
        tracing::info!(%addr, "api listening");
        let app = api::router(Api {
            store: store.clone(),
            stats: stats.clone(),
        });
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %Chain(&e), "the api stopped");
            }
        });
    }
    tokio::spawn(firehose_history::retention::run(
        store.clone(),
        stats.clone(),
        settings.retention,
    ));
    let mut term = signal(SignalKind::terminate()).context("signals")?;
    let mut int = signal(SignalKind::interrupt()).context("signals")?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping: committing what has arrived");
    };
    ingest::run(settings.ingest, store, stats.clone(), stop).await?;
    tracing::info!(
        stored = stats.stored.load(std::sync::atomic::Ordering::Relaxed),
        duplicates = stats.duplicates.load(std::sync::atomic::Ordering::Relaxed),
        "stopped"
    );
    Ok(())
}
