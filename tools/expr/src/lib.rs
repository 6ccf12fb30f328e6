//! Expressions over the Firehose's normalized event, for readers that do
//! not write code: a jq filter that says whether an event is wanted
//! ([`Where`], via jaq) and a Jinja template that says what to print or
//! send ([`Template`], via minijinja).
//!
//! Both see one shape whatever the bridge's payload mode (what
//! `firehose-sub --json` prints): `{"topic", "id", "source", "type",
//! "time", "subject", "data", "retained"}`, plus any extra fields the
//! caller adds with [`Input::with`]. An event is converted once into an
//! [`Input`] and then tested and rendered by any number of expressions.
//!
//! ```
//! use firehose_expr::{Input, Template, Where};
//! let ev = firehose::reader::decode(
//!     "gerrit/openstack/nova/change-merged",
//!     br#"{"type":"change-merged","change":{"project":"openstack/nova","number":7,"subject":"Fix"}}"#,
//!     false,
//! );
//! let input = Input::new(&ev);
//! assert!(Where::new(r#".type == "gerrit.change-merged""#).unwrap().test(&input));
//! let t = Template::new("{{ subject }}: {{ data.change.subject }}").unwrap();
//! assert_eq!(t.render(input.json()).unwrap(), "7: Fix");
//! ```

use firehose::reader::Event;
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, unwrap_valr, Compiler, Ctx, ValT, Vars};
use jaq_json::Val;

/// An expression that does not compile; says what and where.
#[derive(Debug, thiserror::Error)]
pub enum ExprError {
    /// A jq expression that does not compile.
    #[error("jq expression {expr:?}: {reason}")]
    Where {
        /// The expression as given.
        expr: String,
        /// The compiler's errors.
        reason: String,
    },
    /// A template that does not parse.
    #[error("template {template:?}: {reason}")]
    Template {
        /// The template as given.
        template: String,
        /// minijinja's error.
        reason: String,
    },
}

/// One event as expressions see it: its JSON, and jq's value of it built
/// once, on the first [`Where::test`].
pub struct Input {
    json: serde_json::Value,
    jq: std::cell::OnceCell<Option<Val>>,
}

impl Input {
    /// The normalized event.
    pub fn new(ev: &Event) -> Input {
        Input::from_json(normalized(ev))
    }

    /// Any JSON object (a normalized event with extra fields, a test).
    pub fn from_json(json: serde_json::Value) -> Input {
        Input {
            json,
            jq: std::cell::OnceCell::new(),
        }
    }

    /// Adds a top-level field (e.g. `payload`, `received`) for templates
    /// and filters.
    pub fn with(mut self, key: &str, value: serde_json::Value) -> Input {
        if let Some(m) = self.json.as_object_mut() {
            m.insert(key.to_owned(), value);
        }
        self.jq = std::cell::OnceCell::new();
        self
    }

    fn jq(&self) -> Option<&Val> {
        self.jq
            .get_or_init(|| jaq_json::read::parse_single(self.json.to_string().as_bytes()).ok())
            .as_ref()
    }

    /// The JSON every expression sees.
    pub fn json(&self) -> &serde_json::Value {
        &self.json
    }
}

/// The normalized event as JSON: `{"topic", "id", "source", "type",
/// "time", "subject", "data", "retained"}`.
pub fn normalized(ev: &Event) -> serde_json::Value {
    serde_json::to_value(ev).unwrap_or(serde_json::Value::Null)
}

type JqFilter = jaq_core::Filter<data::JustLut<Val>>;

/// A compiled jq expression: is this event wanted?
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

    /// True when the expression's first output is true in jq's sense
    /// (anything but `false` and `null`). An error is false.
    pub fn test(&self, input: &Input) -> bool {
        let Some(val) = input.jq().cloned() else {
            return false;
        };
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut out = self.filter.id.run((ctx, val)).map(unwrap_valr);
        matches!(out.next(), Some(Ok(v)) if v.as_bool())
    }
}

/// A compiled Jinja template (minijinja, with Python's string methods):
/// `{{ topic }}`, `{{ type }}`, `{{ data.change.subject }}`,
/// `{{ topic.split('/')[1] }}`.
pub struct Template {
    env: minijinja::Environment<'static>,
}

impl Template {
    /// Parses `source`.
    pub fn new(source: &str) -> Result<Template, ExprError> {
        let mut env = minijinja::Environment::new();
        // Python's string and dict methods (`topic.split('/')`,
        // `s.startswith(...)`, `d.items()`), as Jinja users expect.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_template_owned("t", source.to_owned())
            .map_err(|e| ExprError::Template {
                template: source.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Template { env })
    }

    /// The text for one event ([`Input::json`], or any JSON object), or
    /// why not (an undefined filter, a type error).
    pub fn render(&self, json: &serde_json::Value) -> Result<String, RenderError> {
        let ctx = minijinja::Value::from(minijinja::value::Serde(json));
        self.env
            .get_template("t")
            .and_then(|t| t.render(ctx))
            .map_err(RenderError)
    }
}

/// A template that could not be rendered for one event: minijinja's
/// error, as it says it.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct RenderError(minijinja::Error);

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(topic: &str, payload: &str) -> Event {
        firehose::reader::decode(topic, payload.as_bytes(), false)
    }

    #[test]
    fn where_and_templates_see_the_normalized_event() {
        let e = Input::new(&ev(
            "gerrit/openstack/nova/change-merged",
            r#"{"type":"change-merged","change":{"project":"openstack/nova","number":7,"subject":"Fix it"}}"#,
        ));
        assert!(Where::new(r#".type == "gerrit.change-merged""#)
            .unwrap()
            .test(&e));
        assert!(!Where::new(r#".type == "gerrit.comment-added""#)
            .unwrap()
            .test(&e));
        assert!(Where::new(r#".data.change.number > 5"#).unwrap().test(&e));
        assert!(Where::new(".nope |").is_err());
        let f = Template::new("{{ type }} {{ subject }}: {{ data.change.subject }}").unwrap();
        assert_eq!(
            f.render(e.json()).unwrap(),
            "gerrit.change-merged 7: Fix it"
        );
        assert!(Template::new("{{ unclosed").is_err());
    }

    #[test]
    fn extra_fields() {
        let e = Input::new(&ev("x/y", "hello")).with("payload", "hello".into());
        assert_eq!(
            Template::new("{{ topic }} {{ payload }}")
                .unwrap()
                .render(e.json())
                .unwrap(),
            "x/y hello"
        );
        assert!(Where::new(r#".payload == "hello""#).unwrap().test(&e));
    }
}
