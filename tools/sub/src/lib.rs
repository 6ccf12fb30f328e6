//! What `firehose-sub` prints for each event: mosquitto_sub's output
//! (payload, or `topic payload` with `-v`), the normalized event as JSON
//! (`--json`, `--pretty`), or a template (`--format`); and which events it
//! prints (`--type`, `--where`, `-R`). The binary only wires flags to these.

use firehose::reader::Event;
pub use firehose_expr::{normalized, ExprError, Input, Template, Where};

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
    Template(Box<Template>),
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
    /// `--raw`: a template's output as it is. Otherwise the terminal
    /// control characters in it (escape sequences an event's text could
    /// carry to retitle, recolour or rewrite a terminal) are dropped; tab
    /// and newline stay.
    pub raw: bool,
}

/// `text` without terminal control characters (C0 but tab and newline,
/// DEL, C1): what a template printed of an event's text cannot drive the
/// terminal it is printed on.
pub fn strip_controls(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .collect()
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
            Some(w) => w.test(&Input::new(ev)),
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
            // A template error becomes the text: one odd event never
            // stops the stream.
            Style::Template(f) => {
                let text = f
                    .render(Input::new(ev).json())
                    .unwrap_or_else(|e| format!("<format error: {e}>"));
                if self.raw {
                    text.into_bytes()
                } else {
                    strip_controls(&text).into_bytes()
                }
            }
        };
        if !self.no_eol {
            out.push(b'\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_in_event_text_never_reach_the_terminal() {
        let hostile = "fix \x1b]0;pwned\x07\x1b[2J\x1b[31mred\u{9b}31m\x7f done\tok\nnext";
        assert_eq!(
            strip_controls(hostile),
            "fix ]0;pwned[2J[31mred31m done\tok\nnext"
        );
        let ev = firehose::reader::decode(
            "gerrit/x/comment-added",
            br#"{"type":"comment-added","comment":"hi \u001b[2J there"}"#,
            false,
        );
        let mut p = Printer {
            style: Style::Template(Box::new(
                Template::new("{{ data.comment }}").expect("template"),
            )),
            types: Vec::new(),
            filter: None,
            skip_retained: false,
            no_eol: true,
            color: false,
            raw: false,
        };
        assert_eq!(p.render(&ev), b"hi [2J there");
        p.raw = true;
        assert_eq!(
            p.render(&ev),
            b"hi \x1b[2J there",
            "--raw prints it as it is"
        );
    }
}
