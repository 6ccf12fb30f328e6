//! What `firehose-sub` prints for each event: mosquitto_sub's output
//! (payload, or `topic payload` with `-v`), the normalized event as JSON
//! (`--json`, `--pretty`), or a template (`--format`); and which events it
//! prints (`--type`, `--where`, `-R`). The binary only wires flags to these.

use firehose::reader::Event;
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, unwrap_valr, Compiler, Ctx, ValT, Vars};
use jaq_json::Val;

/// A `--where` or `--format` that does not compile; says where.
#[derive(Debug, thiserror::Error)]
pub enum ExprError {
    #[error("--where {expr:?}: {reason}")]
    Where { expr: String, reason: String },
    #[error("--format {template:?}: {reason}")]
    Format { template: String, reason: String },
}

type JqFilter = jaq_core::Filter<data::JustLut<Val>>;

/// A compiled `--where` jq expression over the normalized event.
pub struct Where {
    filter: JqFilter,
}

impl Where {
    /// Compiles `expr` (jq syntax, with jq's standard library).
    pub fn new(expr: &str) -> Result<Where, ExprError> {
        let err = |reason: String| ExprError::Where {
            expr: expr.to_owned(),
            reason,
        };
        let program = File {
            code: expr,
            path: (),
        };
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader.load(&arena, program).map_err(|errs| {
            err(format!(
                "{:?}",
                errs.into_iter().map(|(_, e)| e).collect::<Vec<_>>()
            ))
        })?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| {
                err(format!(
                    "{:?}",
                    errs.into_iter().map(|(_, e)| e).collect::<Vec<_>>()
                ))
            })?;
        Ok(Where { filter })
    }

    /// True when the expression gives a true value (jq's truthiness: all
    /// but `false` and `null`) for `json`. An error is false.
    pub fn test(&self, json: &serde_json::Value) -> bool {
        let Ok(input) = jaq_json::read::parse_single(json.to_string().as_bytes()) else {
            return false;
        };
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut out = self.filter.id.run((ctx, input)).map(unwrap_valr);
        matches!(out.next(), Some(Ok(v)) if v.as_bool())
    }
}

/// A compiled `--format` template (minijinja, Jinja2 syntax) over the
/// normalized event: `{{ topic }}`, `{{ type }}`, `{{ data.change.subject }}`.
pub struct Format {
    env: minijinja::Environment<'static>,
}

impl Format {
    pub fn new(template: &str) -> Result<Format, ExprError> {
        let mut env = minijinja::Environment::new();
        env.add_template_owned("format", template.to_owned())
            .map_err(|e| ExprError::Format {
                template: template.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Format { env })
    }

    /// The text for one event (template errors become the error text, so
    /// one odd event never stops the stream).
    pub fn render(&self, ev: &Event) -> String {
        let ctx = normalized(ev);
        let ctx = minijinja::Value::from(minijinja::value::Serde(&ctx));
        match self.env.get_template("format").and_then(|t| t.render(ctx)) {
            Ok(s) => s,
            Err(e) => format!("<format error: {e}>"),
        }
    }
}

/// How events are printed.
pub enum Style {
    /// mosquitto_sub: the payload; `topic payload` with `verbose`.
    Mosquitto {
        verbose: bool,
    },
    /// The normalized event, one JSON object per line (or pretty).
    Json {
        pretty: bool,
    },
    Template(Box<Format>),
}

/// Which events are printed, and how.
pub struct Printer {
    pub style: Style,
    /// `--type`: keep only these event types (empty: all).
    pub types: Vec<String>,
    pub filter: Option<Where>,
    /// `-R`: skip retained messages (stale state).
    pub skip_retained: bool,
    /// `-N`: no newline after each event.
    pub no_eol: bool,
    /// Colour the topic (only on a terminal).
    pub color: bool,
}

impl Printer {
    /// Whether `ev` passes `-R`, `--type` and `--where`.
    pub fn wants(&self, ev: &Event) -> bool {
        if self.skip_retained && ev.retained {
            return false;
        }
        if !self.types.is_empty() && !self.types.contains(&ev.kind) {
            return false;
        }
        match &self.filter {
            Some(w) => w.test(&normalized(ev)),
            None => true,
        }
    }

    /// The bytes to print for `ev` (with its newline unless `-N`).
    pub fn render(&self, ev: &Event) -> Vec<u8> {
        let mut out = match &self.style {
            Style::Mosquitto { verbose } => {
                let mut v = Vec::new();
                if *verbose {
                    if self.color {
                        v.extend_from_slice(b"\x1b[36m");
                    }
                    v.extend_from_slice(ev.topic.as_bytes());
                    if self.color {
                        v.extend_from_slice(b"\x1b[0m");
                    }
                    v.push(b' ');
                }
                v.extend_from_slice(&ev.payload);
                v
            }
            Style::Json { pretty } => {
                let n = normalized(ev);
                let text = if *pretty {
                    serde_json::to_string_pretty(&n)
                } else {
                    serde_json::to_string(&n)
                };
                text.unwrap_or_default().into_bytes()
            }
            Style::Template(f) => f.render(ev).into_bytes(),
        };
        if !self.no_eol {
            out.push(b'\n');
        }
        out
    }
}

/// The normalized event as JSON: `{"topic", "id", "source", "type",
/// "time", "subject", "data", "retained"}`.
pub fn normalized(ev: &Event) -> serde_json::Value {
    serde_json::to_value(ev).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(topic: &str, payload: &str) -> Event {
        firehose::reader::decode(topic, payload.as_bytes(), false)
    }

    #[test]
    fn where_and_format_see_the_normalized_event() {
        let e = ev(
            "gerrit/openstack/nova/change-merged",
            r#"{"type":"change-merged","change":{"project":"openstack/nova","number":7,"subject":"Fix it"}}"#,
        );
        assert!(Where::new(r#".type == "gerrit.change-merged""#)
            .unwrap()
            .test(&normalized(&e)));
        assert!(!Where::new(r#".type == "gerrit.comment-added""#)
            .unwrap()
            .test(&normalized(&e)));
        assert!(Where::new(r#".data.change.number > 5"#)
            .unwrap()
            .test(&normalized(&e)));
        assert!(Where::new(".nope |").is_err());
        let f = Format::new("{{ type }} {{ subject }}: {{ data.change.subject }}").unwrap();
        assert_eq!(f.render(&e), "gerrit.change-merged 7: Fix it");
        assert!(Format::new("{{ unclosed").is_err());
    }
}
