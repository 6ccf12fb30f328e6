//! Errors as one line for people: `context: error: cause`, each part once.
//!
//! Our error types and many libraries put their cause in their own message
//! *and* return it as `source()`, so printing the whole chain (anyhow's
//! `{:#}`) says "No such file or directory" twice. Every binary of the
//! suite prints its last error through [`error_chain`].

/// An error and its causes, `a: b: c`, leaving out a cause whose text the
/// line already holds.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct Read {
        path: String,
        source: std::io::Error,
    }

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
}
