//! Topic names and topic filters: validation and matching.
//!
//! The router matches filters itself, but the edge needs its own matcher for
//! three jobs the router cannot do for it: ACL rules (`topic`/`pattern` lines
//! are filters), `$SYS` delivery (the router never delivers a topic that
//! starts with `$`), and the limits on topic length and depth.

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("empty topic")]
    Empty,
    #[error("topic name contains a wildcard (+ or #)")]
    WildcardInName,
    #[error("topic contains a NUL character")]
    Nul,
    #[error("'#' must be the last level of a filter, alone")]
    BadMultiLevel,
    #[error("'+' must fill a whole level of a filter")]
    BadSingleLevel,
    #[error("topic is longer than {0} bytes")]
    TooLong(usize),
    #[error("topic has more than {0} levels")]
    TooDeep(usize),
}

/// Limits applied to every topic name and filter a client sends.
#[derive(Debug, Clone, Copy)]
pub struct TopicLimits {
    /// Longest topic in bytes (MQTT allows 65535).
    pub max_len: usize,
    /// Most `/`-separated levels.
    pub max_levels: usize,
}

impl Default for TopicLimits {
    fn default() -> Self {
        TopicLimits {
            max_len: 1024,
            max_levels: 32,
        }
    }
}

fn check_common(s: &str, limits: TopicLimits) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > limits.max_len {
        return Err(TopicError::TooLong(limits.max_len));
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    if s.split('/').count() > limits.max_levels {
        return Err(TopicError::TooDeep(limits.max_levels));
    }
    Ok(())
}

/// Checks a topic name from a PUBLISH or a will: no wildcards, within limits.
pub fn validate_name(topic: &str, limits: TopicLimits) -> Result<(), TopicError> {
    check_common(topic, limits)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter from a SUBSCRIBE or an ACL line.
pub fn validate_filter(filter: &str, limits: TopicLimits) -> Result<(), TopicError> {
    check_common(filter, limits)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !last) {
            return Err(TopicError::BadMultiLevel);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadSingleLevel);
        }
    }
    Ok(())
}

// Matching a topic against a filter is the SDK's one matcher,
// `firehose::filter::topic_matches(filter, topic)`, shared by every binary.

/// True for filters the edge serves itself rather than the router: every
/// filter whose first level starts with `$` except shared subscriptions.
pub fn is_system_filter(filter: &str) -> bool {
    filter.starts_with('$') && !filter.starts_with("$share/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let l = TopicLimits::default();
        assert!(validate_name("gerrit/openstack/nova/comment-added", l).is_ok());
        assert_eq!(validate_name("a/+/b", l), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a/#", l), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("", l), Err(TopicError::Empty));
        assert_eq!(validate_name("a\0b", l), Err(TopicError::Nul));
        let deep = vec!["x"; 40].join("/");
        assert_eq!(validate_name(&deep, l), Err(TopicError::TooDeep(32)));
        let long = "x".repeat(2000);
        assert_eq!(validate_name(&long, l), Err(TopicError::TooLong(1024)));
    }

    #[test]
    fn filters() {
        let l = TopicLimits::default();
        for ok in ["#", "+", "a/#", "a/+/b", "+/+", "/", "$SYS/#", "a//b"] {
            assert!(validate_filter(ok, l).is_ok(), "{ok}");
        }
        for bad in ["a/#/b", "a#", "a/b+", "++", "#/a"] {
            assert!(validate_filter(bad, l).is_err(), "{bad}");
        }
    }
}
