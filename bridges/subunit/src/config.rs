//! `firehose-subunit`'s own options, as flags or the `[source]` table.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::direct::{Build, PerTest, Shape};

/// Flags for the subunit sources.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Subunit")]
pub struct SubunitArgs {
    /// The topic's levels before the project [default: gearman-subunit/<hostname>,
    /// the original worker's].
    #[arg(long, value_name = "LEVELS")]
    pub topic_root: Option<String>,
    /// The project (`openstack/nova`): the topic's next levels.
    #[arg(long)]
    pub project: Option<String>,
    /// The change number: the topic's last level.
    #[arg(long)]
    pub change: Option<String>,
    /// The build's uuid [default: one derived from the stream].
    #[arg(long)]
    pub build_uuid: Option<String>,
    /// Where the stream can be fetched [default: file://PATH or exec:PROGRAM].
    #[arg(long, value_name = "URL")]
    pub source_url: Option<String>,
    /// A build field for CloudEvents `data.build` (repeatable): build_name=tempest.
    #[arg(long = "field", value_name = "KEY=VALUE")]
    pub fields: Vec<String>,
    /// Each failure's traceback (or skip reason) kept, at most: its last bytes [default: 4096].
    #[arg(long, value_name = "BYTES")]
    pub traceback_bytes: Option<usize>,
    /// Failed tests listed in a run message, at most [default: 100].
    #[arg(long, value_name = "N")]
    pub max_failures: Option<usize>,
    /// Which tests also get a message of their own, on <run topic>/tests/<status>
    /// (subunit.test.fail, ...; CloudEvents payload only) [default: none].
    #[arg(long, value_name = "failures|all|none")]
    pub per_test: Option<PerTest>,
    /// The largest stream read [default: 256 MiB].
    #[arg(long, value_name = "BYTES")]
    pub max_stream_bytes: Option<usize>,
    /// How long fetching one job's stream may take, in seconds [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub fetch_timeout: Option<u64>,
}

/// The `[source]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubunitConfig {
    pub topic_root: Option<String>,
    pub project: Option<String>,
    pub change: Option<String>,
    pub fields: Map<String, Value>,
    pub traceback_bytes: usize,
    pub max_failures: usize,
    pub per_test: PerTest,
    pub max_stream_bytes: usize,
    /// `worker`: the Gearman servers, `HOST:PORT` (`--gearman`).
    pub gearman: Vec<String>,
    pub fetch_timeout_secs: u64,
}

impl Default for SubunitConfig {
    fn default() -> Self {
        SubunitConfig {
            topic_root: None,
            project: None,
            change: None,
            fields: Map::new(),
            traceback_bytes: 4096,
            max_failures: 100,
            per_test: PerTest::None,
            max_stream_bytes: 256 * 1024 * 1024,
            gearman: Vec::new(),
            fetch_timeout_secs: 60,
        }
    }
}

/// What the `[source]` table and the flags cannot be run with; each says
/// what to give instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubunitConfigError {
    #[error("--field {0:?}: give KEY=VALUE")]
    Field(String),
    #[error("--per-test needs --payload cloudevents: the original's raw payload has one message per run (use --per-test none)")]
    PerTestRaw,
    #[error("give --project (the topic's project levels, e.g. openstack/nova)")]
    NoProject,
    #[error("give --change (the change number, the topic's last level)")]
    NoChange,
    #[error("{flag} {value:?}: topic levels, without + # or a leading or trailing /")]
    Levels { flag: &'static str, value: String },
}

impl SubunitConfig {
    /// Lets flags override the file (a `--field` without `=` is refused),
    /// then refuses what `payload` cannot carry ([`SubunitConfig::check`]).
    pub fn apply(
        &mut self,
        a: &SubunitArgs,
        payload: firehose::PayloadMode,
    ) -> Result<(), SubunitConfigError> {
        let set = |slot: &mut Option<String>, v: &Option<String>| {
            if v.is_some() {
                *slot = v.clone();
            }
        };
        set(&mut self.topic_root, &a.topic_root);
        set(&mut self.project, &a.project);
        set(&mut self.change, &a.change);
        for f in &a.fields {
            let (k, v) = f
                .split_once('=')
                .ok_or_else(|| SubunitConfigError::Field(f.clone()))?;
            self.fields
                .insert(k.to_owned(), Value::String(v.to_owned()));
        }
        if let Some(n) = a.traceback_bytes {
            self.traceback_bytes = n;
        }
        if let Some(n) = a.max_failures {
            self.max_failures = n;
        }
        if let Some(p) = a.per_test {
            self.per_test = p;
        }
        if let Some(n) = a.max_stream_bytes {
            self.max_stream_bytes = n;
        }
        if let Some(n) = a.fetch_timeout {
            self.fetch_timeout_secs = n;
        }
        self.check(payload)
    }

    /// The topic's levels before the project: `--topic-root`, else the
    /// original's `gearman-subunit/<hostname>`.
    pub fn topic_root(&self) -> String {
        self.topic_root.clone().unwrap_or_else(|| {
            format!(
                "{}/{}",
                firehose::subunit::FAMILY,
                firehose::topic::level(&firehose_bridge::config::hostname())
            )
        })
    }

    /// How streams become messages.
    pub fn shape(&self) -> Shape {
        Shape {
            detail_bytes: self.traceback_bytes,
            max_failures: self.max_failures,
            per_test: self.per_test,
        }
    }

    /// Refuses what the payload mode cannot carry: per-test messages have
    /// no raw form (the original sent one message per run).
    fn check(&self, payload: firehose::PayloadMode) -> Result<(), SubunitConfigError> {
        if self.per_test != PerTest::None && payload == firehose::PayloadMode::Raw {
            return Err(SubunitConfigError::PerTestRaw);
        }
        Ok(())
    }

    /// The build a direct run reports; `project` and `change` are needed
    /// for the topic.
    pub fn build(&self, a: &SubunitArgs, source_url: String) -> Result<Build, SubunitConfigError> {
        let project = self.project.clone().ok_or(SubunitConfigError::NoProject)?;
        let change = self.change.clone().ok_or(SubunitConfigError::NoChange)?;
        for (flag, v) in [("--project", &project), ("--change", &change)] {
            if v.is_empty() || v.contains(['+', '#']) || v.starts_with('/') || v.ends_with('/') {
                return Err(SubunitConfigError::Levels {
                    flag,
                    value: v.clone(),
                });
            }
        }
        let base = self.topic_root();
        Ok(Build {
            base,
            project,
            change,
            build_uuid: a.build_uuid.clone().unwrap_or_default(),
            source_url,
            fields: self.fields.clone(),
        })
    }
}
