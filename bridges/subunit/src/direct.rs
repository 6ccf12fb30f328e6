//! The direct sources: a finished stream (`--file PATH`, `-` for stdin)
//! and a wrapped test run (`run -- stestr run`), each published as one
//! run message. A stream that is not subunit v2 is dead-lettered and its
//! run published as `failed` with the reason, as the original worker
//! reported a stream it could not store.

use std::io::Read;
use std::path::PathBuf;

use firehose::subunit::{RunStatus, SubunitRun, SubunitTest};
use firehose_bridge::cli::{split_command, CommandExit};
use firehose_bridge::{Batch, ResultExt, Source, SourceContext, SourceError};
use serde_json::{json, Map, Value};

use crate::summary::{summarize, Summary};
use crate::v2::Status;

/// What a run message says about the build, besides the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Build {
    /// The topic's levels before the project.
    pub base: String,
    pub project: String,
    pub change: String,
    pub build_uuid: String,
    pub source_url: String,
    /// The build's other fields (CloudEvents `data.build`).
    pub fields: Map<String, Value>,
}

/// Which finished tests get a message of their own, beside the run's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PerTest {
    /// None: the run message only (the original's one message per run).
    #[default]
    None,
    /// `fail` and `uxsuccess`: what made the run fail.
    Failures,
    /// Every finished test.
    All,
}

impl std::str::FromStr for PerTest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(PerTest::None),
            "failures" => Ok(PerTest::Failures),
            "all" => Ok(PerTest::All),
            other => Err(format!("--per-test {other:?}: use failures, all or none")),
        }
    }
}

impl PerTest {
    fn wants(self, s: Status) -> bool {
        match self {
            PerTest::None => false,
            PerTest::Failures => matches!(s, Status::Fail | Status::UxSuccess),
            PerTest::All => true,
        }
    }
}

/// How a stream becomes messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    /// Each kept traceback or reason, at most (its tail).
    pub detail_bytes: usize,
    /// Failed tests listed in the summary, at most.
    pub max_failures: usize,
    /// Which tests get a message of their own.
    pub per_test: PerTest,
}

/// What one stream is published as: its tests' messages (when asked
/// for), then its run's, and why the stream was bad, if it was.
#[derive(Debug)]
pub struct Messages {
    pub run: SubunitRun,
    pub tests: Vec<SubunitTest>,
    pub bad: Option<crate::v2::ParseError>,
}

/// The summary as CloudEvents `data` carries it.
pub fn summary_json(s: &Summary, shape: Shape) -> Map<String, Value> {
    let failures: Vec<Value> = s
        .tests
        .iter()
        .filter(|t| matches!(t.status, Status::Fail | Status::UxSuccess))
        .take(shape.max_failures)
        .map(|t| {
            json!({
                "id": t.id,
                "status": t.status.name(),
                "duration_s": t.duration_s,
                "details": t.details,
                "truncated": t.truncated,
            })
        })
        .collect();
    let mut m = Map::new();
    m.insert("counts".into(), json!(s.counts));
    m.insert("tests".into(), json!(s.total()));
    m.insert("failed_tests".into(), json!(s.failed()));
    m.insert("duration_s".into(), json!(s.duration_s()));
    m.insert("failures".into(), Value::Array(failures));
    m
}

/// The messages for one stream: the run, `success` with its summary or
/// `failed` with why (the caller dead-letters the stream), and a message
/// per test as `shape.per_test` asks.
pub fn messages(build: &Build, stream: &[u8], shape: Shape) -> Messages {
    let mut run = SubunitRun {
        base: build.base.clone(),
        project: build.project.clone(),
        change: build.change.clone(),
        status: RunStatus::Success,
        build_uuid: if build.build_uuid.is_empty() {
            // The same stream published twice is the same build.
            firehose::envelope::stable_id("subunit-stream", stream)
        } else {
            build.build_uuid.clone()
        },
        source_url: build.source_url.clone(),
        fields: build.fields.clone(),
        summary: None,
    };
    match summarize(stream, shape.detail_bytes) {
        Ok(s) => {
            run.summary = Some(summary_json(&s, shape));
            let run_id = run.id();
            let tests = s
                .tests
                .iter()
                .enumerate()
                .filter(|(_, t)| shape.per_test.wants(t.status))
                .map(|(index, t)| SubunitTest {
                    base: run.base.clone(),
                    project: run.project.clone(),
                    change: run.change.clone(),
                    build_uuid: run.build_uuid.clone(),
                    run_id: run_id.clone(),
                    index,
                    test_id: t.id.clone(),
                    status: t.status.name().to_owned(),
                    duration_s: t.duration_s,
                    finished: t.finished,
                    details: t
                        .details
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect(),
                    truncated: t.truncated,
                })
                .collect();
            Messages {
                run,
                tests,
                bad: None,
            }
        }
        Err(e) => {
            run.status = RunStatus::Failed;
            let mut m = Map::new();
            m.insert("error".into(), json!(e.to_string()));
            run.summary = Some(m);
            Messages {
                run,
                tests: Vec::new(),
                bad: Some(e),
            }
        }
    }
}

/// Publishes one stream's message; dead-letters a bad stream and says
/// why it was bad.
pub(crate) async fn publish(
    ctx: &SourceContext,
    build: &Build,
    stream: &[u8],
    shape: Shape,
    source: &str,
    batch: Option<&Batch>,
) -> Result<Option<String>, SourceError> {
    let m = messages(build, stream, shape);
    let bad = m.bad.map(|e| e.to_string());
    if let Some(e) = &bad {
        ctx.malformed_whole("subunit", e, stream);
    }
    for t in &m.tests {
        ctx.publish(t, source, batch).await?;
    }
    if !m.tests.is_empty() {
        tracing::info!(tests = m.tests.len(), "published per-test messages");
    }
    send(ctx, &m.run, stream.len(), source, batch).await?;
    Ok(bad)
}

/// Publishes a run whose stream could not be had, as `failed`.
pub(crate) async fn publish_failed(
    ctx: &SourceContext,
    build: &Build,
    reason: &str,
    source: &str,
    batch: Option<&Batch>,
) -> Result<(), SourceError> {
    let mut run = messages(build, b"", Shape::default()).run;
    run.status = RunStatus::Failed;
    let mut m = Map::new();
    m.insert("error".into(), json!(reason));
    run.summary = Some(m);
    send(ctx, &run, 0, source, batch).await
}

async fn send(
    ctx: &SourceContext,
    run: &SubunitRun,
    bytes: usize,
    source: &str,
    batch: Option<&Batch>,
) -> Result<(), SourceError> {
    tracing::info!(
        topic = %ctx.topic(&firehose::Publishable::topic(run)),
        status = run.status.as_str(),
        bytes,
        "publishing a run"
    );
    ctx.publish(run, source, batch).await
}

/// Reads at most `max` bytes; more is an error that names the flag.
fn read_capped(mut r: impl Read, max: usize, what: &str) -> Result<Vec<u8>, SourceError> {
    let mut buf = Vec::new();
    r.by_ref()
        .take(max as u64 + 1)
        .read_to_end(&mut buf)
        .fatal(format!("reading {what}"))?;
    if buf.len() > max {
        return Err(SourceError::Fatal {
            context: what.to_owned(),
            source: format!("larger than --max-stream-bytes {max}").into(),
        });
    }
    Ok(buf)
}

/// `--file PATH|-`: one finished stream.
pub struct File {
    /// `None`: standard input.
    pub path: Option<PathBuf>,
    pub build: Build,
    pub shape: Shape,
    pub max_bytes: usize,
}

impl Source for File {
    fn name(&self) -> String {
        self.path
            .as_ref()
            .map_or("stdin".into(), |p| p.display().to_string())
    }

    async fn run(&mut self, ctx: &SourceContext) -> Result<(), SourceError> {
        let (stream, source) = match &self.path {
            Some(p) => (
                read_capped(
                    std::fs::File::open(p).fatal(format!("--file {}", p.display()))?,
                    self.max_bytes,
                    &format!("--file {}", p.display()),
                )?,
                format!("file://{}", p.display()),
            ),
            None => (
                read_capped(std::io::stdin().lock(), self.max_bytes, "standard input")?,
                "file:///dev/stdin".to_owned(),
            ),
        };
        ctx.connected();
        publish(ctx, &self.build, &stream, self.shape, &source, None)
            .await
            .map(drop)
    }
}

/// `run -- COMMAND`: runs a test command, publishes its results, and
/// keeps its exit code for the bridge's own.
///
/// The stream is the command's standard output when that is subunit v2
/// (`stestr run --subunit`, `python -m subunit.run`); otherwise the output
/// is passed through, and for `stestr` the stream is what `stestr last
/// --subunit` gives afterwards, in the same directory.
pub struct Run {
    pub command: Vec<String>,
    pub build: Build,
    pub shape: Shape,
    pub max_bytes: usize,
    /// The command's exit code, once it exited (128 + signal if killed).
    pub exit: CommandExit,
}

impl Source for Run {
    fn name(&self) -> String {
        self.command.first().cloned().unwrap_or_default()
    }

    async fn run(&mut self, ctx: &SourceContext) -> Result<(), SourceError> {
        if self.exit.get().is_some() {
            return Ok(());
        }
        let (program, args) =
            split_command(&self.command, "firehose-subunit run [flags] -- stestr run")?;
        ctx.connected();
        tracing::info!(command = %self.command.join(" "), "running");
        let out = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::inherit())
            .stderr(std::process::Stdio::inherit())
            .output()
            .await
            .fatal(format!("running {program}"))?;
        let code = self.exit.set(out.status);
        tracing::info!(command = %program, exit_code = code, "command finished");
        let stream = if out.stdout.first() == Some(&0xB3) {
            out.stdout
        } else {
            use std::io::Write;
            let _ = std::io::stdout().write_all(&out.stdout);
            let is_stestr = std::path::Path::new(program)
                .file_name()
                .is_some_and(|n| n == "stestr");
            if !is_stestr {
                return Err(SourceError::Fatal {
                    context: format!("run {program}"),
                    source: "its output is not a subunit v2 stream: have it write one to standard output (stestr run --subunit, python -m subunit.run)".into(),
                });
            }
            let last = tokio::process::Command::new(program)
                .args(["last", "--subunit"])
                .output()
                .await
                .fatal(format!("running {program} last --subunit"))?;
            last.stdout
        };
        if stream.len() > self.max_bytes {
            return Err(SourceError::Fatal {
                context: format!("run {program}"),
                source: format!(
                    "its stream is larger than --max-stream-bytes {}",
                    self.max_bytes
                )
                .into(),
            });
        }
        publish(
            ctx,
            &self.build,
            &stream,
            self.shape,
            &format!("exec:{program}"),
            None,
        )
        .await
        .map(drop)
    }
}
