//! Targets: where notifications go. Each has its own bounded queue and a
//! task that delivers from it with retries and backoff, so a dead or slow
//! target never delays the others or the MQTT session; a full queue drops
//! its oldest notification and counts it.

use firehose::report::Chain;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firehose_expr::Template;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use crate::config::{BrokerConfig, ConfigError, TargetConfig, TargetKind};
use crate::stats::Stats;

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Failed(String),
    /// This event can never be delivered this way (its text holds a NUL
    /// for a command line, an illegal header value, a topic outside the
    /// target's prefix): failed at once, not retried, so it never holds
    /// the target's queue.
    #[error("cannot be delivered: {0}")]
    Impossible(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// The keys of the normalized event (what exec gets on stdin).
const EVENT_KEYS: [&str; 8] = [
    "topic", "id", "source", "type", "time", "subject", "data", "retained",
];

/// A rendered template, or the error as the text (one odd event must not
/// stop a notification).
fn render(t: &Template, note: &Value) -> String {
    t.render(note)
        .unwrap_or_else(|e| format!("<template error: {e}>"))
}

/// The target's own template for this text, else the rule's message.
fn own_or_message(t: &Option<Template>, note: &Value) -> String {
    match t {
        Some(t) => render(t, note),
        None => message(note),
    }
}

fn message(note: &Value) -> String {
    note.get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn compile(name: &str, t: &str) -> Result<Template, ConfigError> {
    Template::new(t).map_err(|e| ConfigError::Invalid(format!("target {name:?}: {e}")))
}

/// How a target delivers.
pub enum Sender {
    Exec {
        argv: Vec<Template>,
    },
    Webhook {
        client: reqwest::Client,
        url: String,
        put: bool,
        body: Option<Template>,
        headers: Vec<(String, Template)>,
        preset: Option<String>,
    },
    Smtp {
        transport: Box<lettre::AsyncSmtpTransport<lettre::Tokio1Executor>>,
        from: lettre::message::Mailbox,
        to: Vec<lettre::message::Mailbox>,
        subject: Template,
        body: Option<Template>,
        shown: String,
    },
    File {
        path: PathBuf,
        line: Option<Template>,
    },
    Mqtt {
        client: rumqttc::AsyncClient,
        topic: MqttTopic,
        payload: Option<Template>,
        retain: bool,
        qos: rumqttc::QoS,
    },
    Log,
}

impl Sender {
    /// Builds a target's sender (its templates compiled, an HTTP client, an
    /// SMTP transport, an MQTT client): everything that can be wrong in the
    /// configuration shows here, and nothing is started or sent, so
    /// `--check-config` and a reload build first and start only what all
    /// built. An MQTT target's connection comes back beside it, to be
    /// driven by [`Target::start`].
    pub fn build(
        t: &TargetConfig,
        broker: &BrokerConfig,
    ) -> Result<(Sender, Option<rumqttc::EventLoop>), ConfigError> {
        let name = t.name.as_str();
        let invalid = |m: String| ConfigError::Invalid(format!("target {name:?}: {m}"));
        let mut connection = None;
        let sender = match &t.kind {
            TargetKind::Exec { argv } => Sender::Exec {
                argv: argv
                    .iter()
                    .map(|a| compile(name, a))
                    .collect::<Result<_, _>>()?,
            },
            TargetKind::Webhook {
                url,
                method,
                body,
                headers,
                preset,
                ca,
            } => {
                let mut b = reqwest::Client::builder().timeout(t.timeout);
                if url.starts_with("https://") {
                    let tls = firehose::tls::client_config(ca.as_deref())
                        .map_err(|e| invalid(e.to_string()))?;
                    b = b.use_preconfigured_tls((*tls).clone());
                }
                Sender::Webhook {
                    client: b.build().map_err(|e| invalid(e.to_string()))?,
                    url: url.clone(),
                    put: method.eq_ignore_ascii_case("PUT"),
                    body: body.as_deref().map(|b| compile(name, b)).transpose()?,
                    headers: headers
                        .iter()
                        .map(|(k, v)| Ok((k.clone(), compile(name, v)?)))
                        .collect::<Result<_, ConfigError>>()?,
                    preset: preset.clone(),
                }
            }
            TargetKind::Smtp {
                host,
                port,
                security,
                username,
                password,
                password_file,
                from,
                to,
                subject,
                body,
                ca,
            } => {
                use lettre::transport::smtp::authentication::Credentials;
                use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
                let params = || -> Result<TlsParameters, ConfigError> {
                    let mut p = TlsParameters::builder(host.clone());
                    if let Some(ca) = ca {
                        let pem = std::fs::read(ca).map_err(|e| {
                            invalid(format!("cannot read CA {}: {e}", ca.display()))
                        })?;
                        p = p.add_root_certificate(
                            Certificate::from_pem(&pem).map_err(|e| invalid(e.to_string()))?,
                        );
                    }
                    p.build_rustls().map_err(|e| invalid(e.to_string()))
                };
                let (tls, default_port) = match security.as_str() {
                    "tls" => (Tls::Wrapper(params()?), 465),
                    "none" => (Tls::None, 25),
                    _ => (Tls::Required(params()?), 587),
                };
                let mut b =
                    lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(host)
                        .port(port.unwrap_or(default_port))
                        .tls(tls)
                        .timeout(Some(t.timeout));
                let pass = crate::config::password(password, password_file)?;
                if let Some(user) = username {
                    b = b.credentials(Credentials::new(user.clone(), pass.unwrap_or_default()));
                }
                let mailbox = |a: &str| {
                    a.parse::<lettre::message::Mailbox>()
                        .map_err(|e| invalid(format!("address {a:?}: {e}")))
                };
                Sender::Smtp {
                    transport: Box::new(b.build()),
                    from: mailbox(from)?,
                    to: to.iter().map(|a| mailbox(a)).collect::<Result<_, _>>()?,
                    subject: compile(name, subject)?,
                    body: body.as_deref().map(|b| compile(name, b)).transpose()?,
                    shown: format!("{host}:{}", port.unwrap_or(default_port)),
                }
            }
            TargetKind::File { path, line } => Sender::File {
                path: path.clone(),
                line: line.as_deref().map(|l| compile(name, l)).transpose()?,
            },
            TargetKind::Mqtt {
                topic,
                url,
                username,
                password,
                password_file,
                retain,
                qos,
                payload,
            } => {
                let mut b = firehose::Client::builder(url.as_deref().unwrap_or(&broker.url))
                    .client_id(&format!("firehose-notify-{name}-{:08x}", rand_u32()));
                let (user, pass, pass_file) = if url.is_some() {
                    (username, password, password_file)
                } else {
                    (&broker.username, &broker.password, &broker.password_file)
                };
                if let Some(u) = user {
                    let p = crate::config::password(pass, pass_file)?.unwrap_or_default();
                    b = b.credentials(u, &p);
                }
                if let Some(ca) = &broker.ca {
                    b = b.ca(ca);
                }
                let opts = b.mqtt_options().map_err(|e| invalid(e.to_string()))?;
                let (client, ev) = rumqttc::AsyncClient::new(opts, 1000);
                connection = Some(ev);
                Sender::Mqtt {
                    client,
                    topic: MqttTopic {
                        template: compile(name, topic)?,
                        prefix: topic_prefix(topic).to_owned(),
                    },
                    payload: payload.as_deref().map(|p| compile(name, p)).transpose()?,
                    retain: *retain,
                    qos: if *qos == 0 {
                        rumqttc::QoS::AtMostOnce
                    } else {
                        rumqttc::QoS::AtLeastOnce
                    },
                }
            }
            TargetKind::Log => Sender::Log,
        };
        Ok((sender, connection))
    }

    /// The webhook's body and content type.
    fn webhook_body(
        body: &Option<Template>,
        preset: &Option<String>,
        note: &Value,
    ) -> (String, &'static str) {
        match preset.as_deref() {
            Some("matrix") => (
                serde_json::json!({"msgtype": "m.text", "body": own_or_message(body, note)})
                    .to_string(),
                "application/json",
            ),
            Some(_) => (
                serde_json::json!({"text": own_or_message(body, note)}).to_string(),
                "application/json",
            ),
            None => match body {
                Some(t) => (render(t, note), "text/plain; charset=utf-8"),
                None => (event_json(note), "application/json"),
            },
        }
    }

    /// One delivery attempt.
    pub async fn send(&self, note: &Value, timeout: Duration) -> Result<(), SendError> {
        let fail = |e: String| SendError::Failed(e);
        let attempt = async {
            match self {
                Sender::Exec { argv } => exec(argv, note).await,
                Sender::Webhook {
                    client,
                    url,
                    put,
                    body,
                    headers,
                    preset,
                } => {
                    let (body, ctype) = Sender::webhook_body(body, preset, note);
                    let mut req = if *put {
                        client.put(url)
                    } else {
                        client.post(url)
                    };
                    req = req.header("content-type", ctype);
                    for (k, v) in headers {
                        let value = render(v, note);
                        let value =
                            reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                                SendError::Impossible(format!(
                                    "header {k}: the event's text is not a legal header value"
                                ))
                            })?;
                        req = req.header(k.as_str(), value);
                    }
                    // Errors never show the URL: a webhook's path is often
                    // its secret (a Slack or Matrix hook token).
                    let shown = shown_url(url);
                    let resp = req
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| fail(format!("{shown}: {}", e.without_url())))?;
                    if !resp.status().is_success() {
                        return Err(fail(format!("{shown} answered {}", resp.status())));
                    }
                    Ok(())
                }
                Sender::Smtp {
                    transport,
                    from,
                    to,
                    subject,
                    body,
                    ..
                } => {
                    use lettre::AsyncTransport;
                    let mut m = lettre::Message::builder()
                        .from(from.clone())
                        .subject(render(subject, note).replace(['\r', '\n'], " "));
                    for a in to {
                        m = m.to(a.clone());
                    }
                    let text = own_or_message(body, note);
                    let mail = m
                        .header(lettre::message::header::ContentType::TEXT_PLAIN)
                        .body(text)
                        .map_err(|e| fail(e.to_string()))?;
                    transport
                        .send(mail)
                        .await
                        .map_err(|e| fail(e.to_string()))?;
                    Ok(())
                }
                Sender::File { path, line } => {
                    let mut text = own_or_message(line, note);
                    text.push('\n');
                    let mut f = tokio::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .await
                        .map_err(|e| fail(format!("{}: {e}", path.display())))?;
                    // tokio's File hands the write to a blocking thread and
                    // returns at once: only `flush` waits until the line is
                    // in the file, which is what "sent" promises.
                    f.write_all(text.as_bytes())
                        .await
                        .map_err(|e| fail(format!("{}: {e}", path.display())))?;
                    f.flush()
                        .await
                        .map_err(|e| fail(format!("{}: {e}", path.display())))
                }
                Sender::Mqtt {
                    client,
                    topic,
                    payload,
                    retain,
                    qos,
                } => {
                    let body = own_or_message(payload, note);
                    let topic = mqtt_topic(topic, note)?;
                    client
                        .publish(topic, *qos, *retain, body)
                        .await
                        .map_err(|e| fail(e.to_string()))
                }
                Sender::Log => {
                    tracing::info!(
                        target: "firehose_notify::log",
                        rule = note.get("rule").and_then(serde_json::Value::as_str).unwrap_or(""),
                        topic = note.get("topic").and_then(serde_json::Value::as_str).unwrap_or(""),
                        message = %message(note),
                        "notification"
                    );
                    Ok(())
                }
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| SendError::Timeout(timeout))?
    }

    /// What `--dry-run` prints instead of sending.
    pub fn describe(&self, note: &Value) -> String {
        match self {
            Sender::Exec { argv } => {
                let args: Vec<String> = argv.iter().map(|a| render(a, note)).collect();
                format!("exec {args:?} with the event on stdin")
            }
            Sender::Webhook {
                url,
                put,
                body,
                headers,
                preset,
                ..
            } => {
                let (body, _) = Sender::webhook_body(body, preset, note);
                let hs: Vec<String> = headers
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", render(v, note)))
                    .collect();
                // `--dry-run` shows the operator the whole URL (stdout, not
                // the logs).
                format!(
                    "{} {url} headers {hs:?} body {body}",
                    if *put { "PUT" } else { "POST" }
                )
            }
            Sender::Smtp {
                to,
                subject,
                body,
                shown,
                ..
            } => {
                let to: Vec<String> = to.iter().map(|a| a.to_string()).collect();
                let text = own_or_message(body, note);
                format!(
                    "mail via {shown} to {} subject {:?} body {text:?}",
                    to.join(", "),
                    render(subject, note)
                )
            }
            Sender::File { path, line } => format!(
                "append to {}: {}",
                path.display(),
                own_or_message(line, note)
            ),
            Sender::Mqtt {
                topic,
                payload,
                retain,
                ..
            } => format!(
                "publish to {}{}: {}",
                mqtt_topic(topic, note).unwrap_or_else(|e| e.to_string()),
                if *retain { " (retained)" } else { "" },
                own_or_message(payload, note)
            ),
            Sender::Log => format!("log: {}", message(note)),
        }
    }
}

/// A webhook URL as logs may show it: scheme, host and port; the path and
/// query (where hook tokens live) and any credentials left out.
pub fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let path = if u.path().len() > 1 || u.query().is_some() {
                "/…"
            } else {
                ""
            };
            format!(
                "{}://{}{port}{path}",
                u.scheme(),
                u.host_str().unwrap_or("")
            )
        }
        Err(_) => "<webhook url>".into(),
    }
}

/// The literal text a topic template starts with, up to its first
/// template tag: what every topic the target publishes must start with.
pub fn topic_prefix(template: &str) -> &str {
    let end = template
        .find("{{")
        .into_iter()
        .chain(template.find("{%"))
        .min();
    &template[..end.unwrap_or(template.len())]
}

/// The rendered topic of an mqtt target, if it stays where the target
/// was configured to publish: under its template's literal prefix, with
/// no wildcard, NUL or empty level the event's text could smuggle in.
fn mqtt_topic(topic: &MqttTopic, note: &Value) -> Result<String, SendError> {
    let t = render(&topic.template, note);
    let rest = t.strip_prefix(topic.prefix.as_str());
    let bad = match rest {
        None => Some("it does not start with the configured prefix"),
        Some(r) if r.contains(['+', '#', '\0']) => {
            Some("the event's text put a wildcard or NUL in it")
        }
        Some(r) if !topic.prefix.is_empty() && r.split('/').any(str::is_empty) => {
            Some("the event's text left a level empty")
        }
        _ if t.is_empty() || t.starts_with('$') || t.len() > 65_535 => {
            Some("it is not a topic this target may publish")
        }
        _ => None,
    };
    match bad {
        Some(why) => Err(SendError::Impossible(format!(
            "topic {:?}: {why} (prefix {:?})",
            t.chars().take(120).collect::<String>(),
            topic.prefix
        ))),
        None => Ok(t),
    }
}

/// An mqtt target's topic template and its literal prefix.
pub struct MqttTopic {
    template: Template,
    prefix: String,
}

/// The normalized event alone (no notify extras), as one JSON document.
fn event_json(note: &Value) -> String {
    let mut ev = serde_json::Map::new();
    for k in EVENT_KEYS {
        ev.insert(k.into(), note.get(k).cloned().unwrap_or(Value::Null));
    }
    Value::Object(ev).to_string()
}

/// Runs the program: the event on stdin, the common fields in the
/// environment; a non-zero exit is a failure.
async fn exec(argv: &[Template], note: &Value) -> Result<(), SendError> {
    use std::process::Stdio;
    let args: Vec<String> = argv.iter().map(|a| render(a, note)).collect();
    let Some((prog, rest)) = args.split_first() else {
        return Err(SendError::Failed("argv is empty".into()));
    };
    let s = |k: &str| match note.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    };
    // A NUL cannot be in a command line or the environment: no retry helps.
    if let Some(i) = args.iter().position(|a| a.contains('\0')) {
        return Err(SendError::Impossible(format!(
            "argument {i} holds a NUL byte from the event's text"
        )));
    }
    for key in [
        "topic", "id", "source", "type", "time", "subject", "retained", "message", "rule",
    ] {
        if s(key).contains('\0') {
            return Err(SendError::Impossible(format!(
                "the event's {key} holds a NUL byte (it goes in the environment)"
            )));
        }
    }
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(rest)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (var, key) in [
        ("FIREHOSE_TOPIC", "topic"),
        ("FIREHOSE_ID", "id"),
        ("FIREHOSE_SOURCE", "source"),
        ("FIREHOSE_TYPE", "type"),
        ("FIREHOSE_TIME", "time"),
        ("FIREHOSE_SUBJECT", "subject"),
        ("FIREHOSE_RETAINED", "retained"),
        ("FIREHOSE_MESSAGE", "message"),
        ("FIREHOSE_RULE", "rule"),
    ] {
        cmd.env(var, s(key));
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| SendError::Failed(format!("cannot run {prog}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A program that does not read its stdin is fine.
        let _ = stdin.write_all(event_json(note).as_bytes()).await;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| SendError::Failed(format!("{prog}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err.lines().last().unwrap_or("").chars().take(200).collect();
        Err(SendError::Failed(format!(
            "{prog} exited with {}: {tail}",
            out.status
        )))
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u32
}

/// A target: its sender, its queue and the task that delivers from it.
pub struct Target {
    pub name: String,
    sender: Arc<Sender>,
    queue: Arc<Queue>,
}

struct Queue {
    items: Mutex<VecDeque<Arc<Value>>>,
    max: usize,
    ready: Notify,
    /// Set at shutdown: deliver what is queued, then stop.
    closing: AtomicBool,
    /// Set when the queue is empty and closing.
    done: Notify,
}

impl Target {
    /// Starts the target's delivery task (and its MQTT connection) with
    /// what [`Sender::build`] made.
    pub fn start(
        cfg: &TargetConfig,
        built: (Sender, Option<rumqttc::EventLoop>),
        stats: Arc<Stats>,
    ) -> Target {
        let (sender, connection) = built;
        if let Some(mut ev) = connection {
            let shown = cfg.name.clone();
            tokio::spawn(async move {
                let mut backoff = firehose::backoff::Backoff::default();
                loop {
                    match ev.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                            backoff.reset()
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let delay = backoff.next_delay();
                            tracing::warn!(target_name = %shown, error = %Chain(&e), retry_in = ?delay, "mqtt target: connection lost; reconnecting");
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
            });
        }
        let sender = Arc::new(sender);
        let queue = Arc::new(Queue {
            items: Mutex::new(VecDeque::new()),
            max: cfg.queue,
            ready: Notify::new(),
            closing: AtomicBool::new(false),
            done: Notify::new(),
        });
        tokio::spawn(deliver(
            cfg.name.clone(),
            sender.clone(),
            queue.clone(),
            cfg.attempts,
            cfg.timeout,
            stats,
        ));
        Target {
            name: cfg.name.clone(),
            sender,
            queue,
        }
    }

    /// Queues a notification; a full queue drops its oldest (counted).
    pub fn push(&self, note: Arc<Value>, stats: &Stats) {
        let dropped = {
            let mut q = self.queue.items.lock().unwrap_or_else(|e| e.into_inner());
            q.push_back(note);
            if q.len() > self.queue.max {
                q.pop_front();
                true
            } else {
                false
            }
        };
        if dropped {
            stats.count_target(&self.name, |c| c.dropped += 1);
            tracing::warn!(target_name = %self.name, queue = self.queue.max, "target queue full; dropped the oldest notification");
        }
        self.queue.ready.notify_one();
    }

    /// What `--dry-run` prints for this target.
    pub fn describe(&self, note: &Value) -> String {
        format!("[{}] {}", self.name, self.sender.describe(note))
    }

    /// Delivers what is queued (each attempt bounded by the target's
    /// timeout), then stops; gives up at `deadline`.
    pub async fn close(&self, deadline: tokio::time::Instant) {
        self.queue.closing.store(true, Ordering::Release);
        let done = self.queue.done.notified();
        self.queue.ready.notify_one();
        let pending = self.queue.items.lock().map(|q| q.len()).unwrap_or(0);
        if pending > 0 {
            tracing::info!(target_name = %self.name, pending, "delivering queued notifications before exit");
        }
        if tokio::time::timeout_at(deadline, done).await.is_err() {
            let left = self.queue.items.lock().map(|q| q.len()).unwrap_or(0);
            tracing::warn!(target_name = %self.name, left, "gave up delivering at exit");
        }
    }
}

/// The delivery loop of one target: one notification at a time, each
/// tried `attempts` times with backoff (1 s, doubling, at most 60 s).
async fn deliver(
    name: String,
    sender: Arc<Sender>,
    queue: Arc<Queue>,
    attempts: u32,
    timeout: Duration,
    stats: Arc<Stats>,
) {
    loop {
        let next = queue
            .items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        let Some(note) = next else {
            if queue.closing.load(Ordering::Acquire) {
                queue.done.notify_waiters();
                return;
            }
            queue.ready.notified().await;
            continue;
        };
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=attempts {
            match sender.send(&note, timeout).await {
                Ok(()) => {
                    stats.count_target(&name, |c| c.sent += 1);
                    tracing::debug!(target_name = %name, rule = note.get("rule").and_then(serde_json::Value::as_str).unwrap_or(""), "sent");
                    break;
                }
                Err(e @ SendError::Impossible(_)) => {
                    stats.count_target(&name, |c| c.failed += 1);
                    tracing::error!(target_name = %name, error = %Chain(&e), "notification failed; not retried (no attempt can deliver this event)");
                    break;
                }
                Err(e)
                    if attempt == attempts
                        || queue.closing.load(Ordering::Acquire) && attempt >= 2 =>
                {
                    stats.count_target(&name, |c| c.failed += 1);
                    tracing::error!(target_name = %name, attempts = attempt, error = %Chain(&e), "notification failed; giving up");
                    break;
                }
                Err(e) => {
                    stats.count_target(&name, |c| c.retried += 1);
                    tracing::warn!(target_name = %name, attempt, error = %Chain(&e), retry_in = ?delay, "notification failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(message: &str, subject: &str) -> Value {
        serde_json::json!({"topic": "gerrit/x", "message": message, "subject": subject, "rule": "r"})
    }

    #[test]
    fn webhook_urls_are_shown_without_their_secret_parts() {
        assert_eq!(
            shown_url("https://hooks.slack.com/services/T0/B0/s3cr3t"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            shown_url("http://u:p@10.0.0.1:8080/?token=x"),
            "http://10.0.0.1:8080/…"
        );
        assert_eq!(shown_url("http://127.0.0.1:9/"), "http://127.0.0.1:9");
    }

    #[test]
    fn an_mqtt_target_publishes_only_under_its_prefix() {
        let t = |tpl: &str| MqttTopic {
            template: Template::new(tpl).unwrap(),
            prefix: topic_prefix(tpl).to_owned(),
        };
        let alerts = t("alerts/{{ subject }}");
        assert_eq!(alerts.prefix, "alerts/");
        assert_eq!(
            mqtt_topic(&alerts, &note("m", "nova/1")).unwrap(),
            "alerts/nova/1"
        );
        for bad in ["a/#", "+", "x//y", "", "a\0b"] {
            assert!(
                matches!(
                    mqtt_topic(&alerts, &note("m", bad)),
                    Err(SendError::Impossible(_))
                ),
                "{bad:?}"
            );
        }
        let open = t("{{ subject }}");
        assert!(matches!(
            mqtt_topic(&open, &note("m", "$SYS/broker/x")),
            Err(SendError::Impossible(_))
        ));
    }

    #[tokio::test]
    async fn a_nul_in_a_command_line_fails_at_once() {
        let argv = vec![
            Template::new("/bin/true").unwrap(),
            Template::new("{{ message }}").unwrap(),
        ];
        let e = exec(&argv, &note("a\0b", "s")).await.unwrap_err();
        assert!(matches!(e, SendError::Impossible(_)), "{e}");
        let argv = vec![Template::new("/bin/true").unwrap()];
        let e = exec(&argv, &note("ok", "s\0")).await.unwrap_err();
        assert!(e.to_string().contains("subject holds a NUL"), "{e}");
        assert!(exec(&argv, &note("ok", "s")).await.is_ok());
    }
}
