//! The Gearman worker, as a source: registers `push-subunit` on one
//! server, takes one job at a time as the original subunit2sql worker did,
//! and completes it only once the broker has acknowledged its message (a
//! job whose message is not delivered is never completed: the connection
//! is dropped and gearmand gives the job to a worker again).
//!
//! A job's arguments are the original's JSON: `{"source_url", "retry",
//! "event": {"fields": {...}}}` (or `"@fields"`), the fields carrying
//! `build_status`, `build_uuid`, `build_change`, `project` and the build's
//! other metadata. An `ABORTED` build is completed with no message. A
//! stream that cannot be fetched is published as `failed` and the job
//! ends in WORK_EXCEPTION with the reason; one that is not subunit v2 is
//! dead-lettered, published as `failed`, and the job ends in WORK_FAIL.
//! A failed job's reason is sent just before as WORK_WARNING: WORK_FAIL has
//! no data, and gearmand turns WORK_EXCEPTION into WORK_FAIL for clients
//! that did not ask for exceptions.

use std::time::Duration;

use firehose_bridge::{Acks, BatchStatus, ResultExt, Source, SourceContext, SourceError};
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::direct::{publish, Build, Shape};
use crate::fetch::Fetcher;
use crate::gearman::{request, response, Kind, Response};

/// The function the original worker registered.
pub const FUNCTION: &[u8] = b"push-subunit";

/// One Gearman server's worker.
pub struct Worker {
    /// `HOST:PORT`.
    pub server: String,
    /// The topic's levels before the project.
    pub topic_root: String,
    pub shape: Shape,
    pub fetcher: std::sync::Arc<Fetcher>,
    pub client_id: String,
}

/// What a job asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub source_url: String,
    pub fields: Map<String, Value>,
}

/// Why a job's arguments are not the original's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("the job's arguments are not JSON: {0}")]
    Json(String),
    #[error("the job's arguments have no {0}")]
    Missing(&'static str),
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads a job's arguments; `Ok(None)` for an aborted build.
pub fn parse_job(args: &[u8]) -> Result<Option<Job>, JobError> {
    let v: Value = serde_json::from_slice(args).map_err(|e| JobError::Json(e.to_string()))?;
    let source_url = text(v.get("source_url")).ok_or(JobError::Missing("source_url"))?;
    let event = v.get("event").ok_or(JobError::Missing("event"))?;
    let mut fields = event
        .get("fields")
        .or_else(|| event.get("@fields"))
        .and_then(Value::as_object)
        .cloned()
        .ok_or(JobError::Missing("event.fields"))?;
    if fields.remove("build_status").and_then(|s| text(Some(&s))) == Some("ABORTED".into()) {
        return Ok(None);
    }
    Ok(Some(Job { source_url, fields }))
}

impl Worker {
    fn build(&self, job: &Job) -> Build {
        let f = |k: &str| text(job.fields.get(k)).unwrap_or_default();
        let mut fields = job.fields.clone();
        for k in ["project", "build_change", "build_uuid"] {
            fields.remove(k);
        }
        Build {
            base: self.topic_root.clone(),
            // The project keeps its slashes: `openstack/nova` is two levels.
            project: firehose::topic::level(f("project").trim_matches('/')),
            change: firehose::topic::level(&f("build_change")),
            build_uuid: f("build_uuid"),
            source_url: job.source_url.clone(),
            fields,
        }
    }
}

/// A connection to gearmand: writes requests, reads responses.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn send(&mut self, kind: Kind, args: &[&[u8]]) -> Result<(), SourceError> {
        self.stream
            .write_all(&request(kind, args))
            .await
            .lost("writing to gearmand")
    }

    async fn recv(&mut self) -> Result<Response, SourceError> {
        loop {
            if let Some((r, used)) = response(&self.buf).fatal("reading gearmand")? {
                self.buf.drain(..used);
                return Ok(r);
            }
            let mut chunk = [0u8; 8192];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .lost("reading gearmand")?;
            if n == 0 {
                return Err(SourceError::Ended("gearmand closed the connection".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

impl Source for Worker {
    fn name(&self) -> String {
        self.server.clone()
    }

    async fn run(&mut self, ctx: &SourceContext) -> Result<(), SourceError> {
        let stream =
            tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&self.server))
                .await
                .map_err(|_| "timed out")
                .lost(format!("connecting to gearmand {}", self.server))?
                .lost(format!("connecting to gearmand {}", self.server))?;
        let mut conn = Conn {
            stream,
            buf: Vec::new(),
        };
        conn.send(Kind::SetClientId, &[self.client_id.as_bytes()])
            .await?;
        conn.send(Kind::CanDo, &[FUNCTION]).await?;
        ctx.connected();
        tracing::info!(server = %self.server, function = "push-subunit", "registered with gearmand");
        let source = format!("gearman://{}", self.server);
        let mut acks: Acks<()> = Acks::new();
        loop {
            conn.send(Kind::GrabJob, &[]).await?;
            let r = conn.recv().await?;
            match r.kind {
                Kind::NoJob => {
                    conn.send(Kind::PreSleep, &[]).await?;
                    // Wait for NOOP (work arrived); anything else is read
                    // as the same wake-up.
                    conn.recv().await?;
                }
                Kind::JobAssign => {
                    let args = r.args(3);
                    let handle = args.first().copied().unwrap_or_default().to_vec();
                    let body = args.get(2).copied().unwrap_or_default();
                    let (kind, data) = self.job(ctx, &source, &mut acks, body).await?;
                    let h: &[u8] = &handle;
                    // WORK_FAIL carries no data, and gearmand passes
                    // WORK_EXCEPTION on only to clients that asked for
                    // exceptions (others get WORK_FAIL): a failure's reason
                    // goes first as the job's WORK_WARNING, which every
                    // client gets.
                    if kind != Kind::WorkComplete && !data.is_empty() {
                        conn.send(Kind::WorkWarning, &[h, data.as_bytes()]).await?;
                    }
                    match kind {
                        Kind::WorkFail => conn.send(Kind::WorkFail, &[h]).await?,
                        k => conn.send(k, &[h, data.as_bytes()]).await?,
                    }
                }
                Kind::Error => {
                    let args = r.args(2);
                    return Err(SourceError::Ended(format!(
                        "gearmand says: {}",
                        String::from_utf8_lossy(args.get(1).copied().unwrap_or_default())
                    )));
                }
                _ => {}
            }
        }
    }
}

impl Worker {
    /// Does one job: what to answer gearmand with (WORK_COMPLETE,
    /// WORK_EXCEPTION with its reason, WORK_FAIL), once the broker has the
    /// run's message. A message not delivered ends the connection instead.
    async fn job(
        &self,
        ctx: &SourceContext,
        source: &str,
        acks: &mut Acks<()>,
        body: &[u8],
    ) -> Result<(Kind, String), SourceError> {
        let job = match parse_job(body) {
            Ok(Some(j)) => j,
            Ok(None) => {
                tracing::info!("an aborted build: completed with no message");
                return Ok((Kind::WorkComplete, String::new()));
            }
            Err(e) => {
                ctx.malformed("gearman", &e.to_string(), body, body.len());
                return Ok((Kind::WorkException, e.to_string()));
            }
        };
        let build = self.build(&job);
        if build.project.is_empty() || build.change.is_empty() {
            let why = "the job's fields have no project or build_change (the topic's levels)";
            ctx.malformed("gearman", why, body, body.len());
            return Ok((Kind::WorkException, why.into()));
        }
        let batch = acks.batch(());
        let answer = match self.fetcher.stream(&job.source_url).await {
            Ok(stream) => {
                match publish(ctx, &build, &stream, self.shape, source, Some(&batch)).await? {
                    None => (Kind::WorkComplete, String::new()),
                    Some(reason) => (Kind::WorkFail, reason),
                }
            }
            Err(e) => {
                let reason = firehose::report::error_chain(&e);
                tracing::warn!(error = %reason, "cannot fetch the stream; publishing the run as failed");
                crate::direct::publish_failed(ctx, &build, &reason, source, Some(&batch)).await?;
                (Kind::WorkException, reason)
            }
        };
        drop(batch);
        match acks.next().await {
            ((), BatchStatus::Delivered) => Ok(answer),
            ((), status) => Err(SourceError::Ended(format!(
                "the run's message was not delivered ({status:?}): leaving the job to gearmand"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_read_as_the_original_worker_read_them() {
        let j = parse_job(
            br#"{"source_url": "http://logs/x/testrepository.subunit", "retry": false,
                "event": {"fields": {"build_status": "SUCCESS", "build_uuid": "u1",
                "build_change": 12, "project": "openstack/nova", "build_queue": "gate"}}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(j.source_url, "http://logs/x/testrepository.subunit");
        assert_eq!(j.fields["build_queue"], "gate");
        assert!(!j.fields.contains_key("build_status"));
        let at =
            parse_job(br#"{"source_url": "u", "event": {"@fields": {"build_status": "FAILURE"}}}"#);
        assert!(matches!(at, Ok(Some(_))), "the @fields spelling");
        let aborted =
            parse_job(br#"{"source_url": "u", "event": {"fields": {"build_status": "ABORTED"}}}"#);
        assert_eq!(aborted, Ok(None));
        assert_eq!(
            parse_job(br#"{"event": {}}"#),
            Err(JobError::Missing("source_url"))
        );
        assert!(matches!(parse_job(b"nope"), Err(JobError::Json(_))));
    }
}
