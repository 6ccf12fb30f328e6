//! Errors as one line for people: `context: error: cause`, each part once.
//!
//! Our error types name their cause once, as `source()`, never also in
//! their message: [`error_chain`] walks `source()` and joins the parts.
//! Some libraries (rumqttc's `Mqtt state: {0}`, for one) do print their
//! cause in their own message as well; a part that the line already ends
//! with (`...: <cause>`) is that repeat, and is left out. Nothing else is:
//! a cause whose words merely appear earlier is still printed. Every
//! binary of the suite prints its last error through [`error_chain`].

/// An error and its causes, `a: b: c`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        // The part before printed this cause itself (a library's
        // `"...: {0}"` over its source): once is enough.
        let repeat = out.len() > s.len() + 2
            && out.ends_with(&s)
            && out[..out.len() - s.len()].ends_with(": ");
        if !repeat && !s.is_empty() {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// [`error_chain`] as a `Display`, for log fields:
/// `tracing::warn!(error = %Chain(&e), "...")`.
pub struct Chain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&error_chain(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}")]
    struct Read {
        path: String,
        source: std::io::Error,
    }

    /// A library that prints its cause in its message too.
    #[derive(Debug, thiserror::Error)]
    #[error("state: {0}")]
    struct Doubled(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("reading /x/no such file")]
    struct Named(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("starting")]
    struct Outer(#[source] Read);

    #[test]
    fn each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Outer(Read {
            path: "/x".into(),
            source: io,
        });
        assert_eq!(error_chain(&e), "starting: cannot read /x: no such file");
    }

    #[test]
    fn a_library_that_repeats_its_cause_is_printed_once() {
        let io = std::io::Error::other("broken pipe");
        assert_eq!(error_chain(&Doubled(io)), "state: broken pipe");
    }

    #[test]
    fn a_cause_whose_words_appear_earlier_is_still_printed() {
        let io = std::io::Error::other("no such file");
        assert_eq!(
            error_chain(&Named(io)),
            "reading /x/no such file: no such file"
        );
    }
}
