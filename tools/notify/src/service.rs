//! The running process: subscribes to what the rules need, turns events
//! into notifications, hands them to the targets' queues (or prints them
//! with `--dry-run`), ends throttle windows, reloads on SIGHUP and delivers
//! what is queued before it exits.

use firehose::report::Chain;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{Config, ConfigError};
use crate::rules::{Dispatch, Engine};
use crate::stats::Stats;
use crate::targets::{Sender, Target};

/// Why the service stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("broker")]
    Client(#[from] firehose::client::ClientError),
    #[error("replaying [broker] since")]
    History(#[from] firehose::history::HistoryError),
    #[error("cannot listen for metrics on {addr}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("signals: {0}")]
    Signal(std::io::Error),
}

/// How the service runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The file, for SIGHUP reloads.
    pub path: PathBuf,
    /// Print what would be sent instead of sending.
    pub dry_run: bool,
    /// Serve Prometheus metrics here.
    pub metrics: Option<std::net::SocketAddr>,
    /// At exit, how long the targets may take to deliver what is queued.
    pub drain: Duration,
}

/// How often throttle windows are checked.
const TICK: Duration = Duration::from_millis(250);

/// Rules and targets of one configuration.
struct Loaded {
    cfg: Config,
    engine: Engine,
    targets: Vec<Target>,
}

/// Compiles every rule and builds every target of `cfg` without starting
/// anything: what `--check-config` runs, and the first half of a (re)load.
pub fn check(cfg: &Config) -> Result<(), ConfigError> {
    build(cfg, &Arc::new(Stats::new(&[]))).map(|_| ())
}

/// The rules and the targets' senders, built.
fn build(cfg: &Config, stats: &Arc<Stats>) -> Result<(Engine, Vec<Built>), ConfigError> {
    let engine = Engine::new(cfg, stats.clone())?;
    let built = cfg
        .targets
        .iter()
        .map(|t| Sender::build(t, &cfg.broker))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((engine, built))
}

/// What [`Sender::build`] returns.
type Built = (Sender, Option<rumqttc::EventLoop>);

impl Loaded {
    /// Builds everything first, so a bad file starts nothing.
    fn new(cfg: Config, stats: &Arc<Stats>) -> Result<Loaded, ConfigError> {
        let (engine, built) = build(&cfg, stats)?;
        let targets = cfg
            .targets
            .iter()
            .zip(built)
            .map(|(t, b)| Target::start(t, b, stats.clone()))
            .collect();
        Ok(Loaded {
            cfg,
            engine,
            targets,
        })
    }

    fn dispatch(&self, d: Vec<Dispatch>, dry_run: bool, stats: &Stats) {
        for Dispatch { target, note } in d {
            let Some(t) = self.targets.get(target) else {
                continue;
            };
            if dry_run {
                println!("{}", t.describe(&note));
            } else {
                t.push(note, stats);
            }
        }
    }

    async fn close(&self, drain: Duration) {
        let deadline = tokio::time::Instant::now() + drain;
        futures_util::future::join_all(self.targets.iter().map(|t| t.close(deadline))).await;
    }
}

fn now_rfc3339() -> String {
    firehose::envelope::rfc3339(time::OffsetDateTime::now_utc())
}

/// Connects with `[broker]`'s settings.
async fn connect(cfg: &Config) -> Result<firehose::Client, ServiceError> {
    let b = &cfg.broker;
    let mut builder = firehose::Client::builder(&b.url)
        .decoder(firehose::reader::Decoder::new().zuul_root(&b.zuul_root));
    let pass = crate::config::password(&b.password, &b.password_file)?;
    match (&b.username, pass) {
        (Some(user), pass) => builder = builder.credentials(user, &pass.unwrap_or_default()),
        // The user is the URL's (mqtt://notify@host), the password a file's.
        (None, Some(pass)) => builder = builder.password(&pass),
        (None, None) => {}
    }
    if let Some(ca) = &b.ca {
        builder = builder.ca(ca);
    }
    let id = b
        .client_id
        .clone()
        .unwrap_or_else(|| "firehose-notify".into());
    builder = if b.session {
        builder.session(&id).qos(1)
    } else {
        builder.client_id(&format!("{id}-{:08x}", std::process::id()))
    };
    Ok(builder.connect().await?)
}

/// Where a start replays from: firehose-history's URL and `since`.
struct Replay<'a> {
    history: &'a str,
    since: &'a str,
}

/// One event stream per topic filter, merged; each message comes with the
/// index of the filter it arrived on. With `replay`, each stream begins
/// with what the history stored since then.
async fn subscribe(
    client: &firehose::Client,
    topics: &[String],
    replay: Option<Replay<'_>>,
) -> Result<BoxStream<'static, (usize, firehose::reader::Event)>, ServiceError> {
    let mut streams = Vec::new();
    for (i, t) in topics.iter().enumerate() {
        let sub = match &replay {
            Some(r) => firehose::history::subscribe_since(client, t, r.history, r.since).await?,
            None => client.subscribe(firehose::Filter::topic(t)).await?,
        };
        streams.push(sub.map(move |ev| (i, ev)).boxed());
    }
    Ok(stream::select_all(streams).boxed())
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(cfg: Config, opts: Options) -> Result<(), ServiceError> {
    let stats = Arc::new(Stats::new(
        &cfg.targets
            .iter()
            .map(|t| t.name.clone())
            .collect::<Vec<_>>(),
    ));
    if let Some(addr) = opts.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServiceError::Metrics { addr, source })?;
        tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "metrics listening");
        let stats = stats.clone();
        tokio::spawn(firehose::metrics::serve(listener, move || stats.render()));
    }
    let mut loaded = Loaded::new(cfg, &stats)?;
    let client = connect(&loaded.cfg).await?;
    let mut topics = loaded.engine.topics();
    let replay = match (&loaded.cfg.broker.history, &loaded.cfg.broker.since) {
        (Some(history), Some(since)) => Some(Replay { history, since }),
        _ => None,
    };
    if let Some(r) = &replay {
        tracing::info!(history = %firehose::url::redact(r.history), since = r.since, "replaying from the history, then live");
    }
    let mut events = subscribe(&client, &topics, replay).await?;
    tracing::info!(
        broker = %firehose::url::redact(&loaded.cfg.broker.url),
        rules = loaded.cfg.rules.len(),
        targets = loaded.targets.len(),
        topics = ?topics,
        dry_run = opts.dry_run,
        "firehose-notify started"
    );
    let mut hup = signal(SignalKind::hangup()).map_err(ServiceError::Signal)?;
    let mut term = signal(SignalKind::terminate()).map_err(ServiceError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServiceError::Signal)?;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            next = events.next() => {
                let Some((i, ev)) = next else {
                    tracing::error!("the client stopped");
                    break;
                };
                // Overlapping filters deliver the same message once per
                // filter: only the first filter that matches counts it.
                if topics[..i].iter().any(|f| firehose::filter::topic_matches(f, &ev.topic)) {
                    continue;
                }
                stats.events.fetch_add(1, Relaxed);
                let d = loaded.engine.process(&ev, Instant::now(), &now_rfc3339());
                loaded.dispatch(d, opts.dry_run, &stats);
            }
            _ = tick.tick() => {
                let d = loaded.engine.expire(Instant::now(), &now_rfc3339());
                loaded.dispatch(d, opts.dry_run, &stats);
            }
            _ = hup.recv() => {
                match reload(&opts, &loaded, &stats) {
                    Ok(new) => {
                        let old = std::mem::replace(&mut loaded, new);
                        let wanted = loaded.engine.topics();
                        if wanted != topics {
                            match subscribe(&client, &wanted, None).await {
                                Ok(s) => {
                                    events = s;
                                    topics = wanted;
                                }
                                Err(e) => tracing::error!(error = %Chain(&e), "reload: subscribing to the new topics failed; keeping the old ones"),
                            }
                        }
                        // The old targets deliver what they hold, in the background.
                        let drain = opts.drain;
                        tokio::spawn(async move { old.close(drain).await });
                        tracing::info!(rules = loaded.cfg.rules.len(), targets = loaded.targets.len(), "configuration reloaded");
                    }
                    Err(e) => tracing::error!(error = %Chain(&e), path = %opts.path.display(), "reload failed; keeping the running configuration"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Stop reading (what was not taken stays on the broker for a
    // persistent session), then deliver what the targets hold.
    drop(events);
    client.disconnect().await;
    loaded.close(opts.drain).await;
    tracing::info!(
        events = stats.events.load(Relaxed),
        "firehose-notify stopped"
    );
    Ok(())
}

/// Reads the file again; the broker section cannot change without a
/// restart (the session would be lost).
fn reload(opts: &Options, running: &Loaded, stats: &Arc<Stats>) -> Result<Loaded, ConfigError> {
    let cfg = Config::load(&opts.path)?;
    if cfg.broker != running.cfg.broker {
        tracing::warn!("reload: [broker] changed; it takes effect at the next restart");
    }
    let mut cfg = cfg;
    cfg.broker = running.cfg.broker.clone();
    Loaded::new(cfg, stats)
}
