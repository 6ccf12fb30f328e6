//! mosquitto-compatible ACL files.
//!
//! Syntax (mosquitto.conf(5), `acl_file`): `topic [read|write|readwrite|deny]
//! <filter>`, `user <name>`, `pattern [read|write|readwrite|deny] <filter>`
//! with `%u` (user name) and `%c` (client id). `topic` lines before the first
//! `user` line apply to anonymous clients; `pattern` lines apply to everyone.
//! A `deny` rule that matches wins over any grant.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::topic;

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receive messages (and subscribe).
    Read,
    /// Publish (and set a will).
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    fn allows(self, a: Access) -> bool {
        matches!(
            (self, a),
            (Grant::ReadWrite, _) | (Grant::Read, Access::Read) | (Grant::Write, Access::Write)
        )
    }
}

#[derive(Debug, Clone)]
struct Rule {
    grant: Grant,
    filter: String,
}

/// Errors in an ACL file, naming the file and line.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("cannot read ACL file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default)]
pub struct AclFile {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

/// The identity an ACL decision is made for.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    /// Authenticated user name; `None` for anonymous clients.
    pub user: Option<&'a str>,
    /// The client id the client connected with.
    pub client_id: &'a str,
}

impl AclFile {
    /// Parses ACL text; `path` only names errors.
    pub fn parse(text: &str, path: &Path) -> Result<AclFile, AclError> {
        let mut acl = AclFile::default();
        let mut current: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: String| AclError::Syntax {
                path: path.to_owned(),
                line: i + 1,
                reason,
            };
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` needs a name".into()));
                    }
                    current = Some(rest.to_owned());
                    acl.users.entry(rest.to_owned()).or_default();
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest).map_err(err)?;
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else if let Some(u) = &current {
                        acl.users.entry(u.clone()).or_default().push(rule);
                    } else {
                        acl.anonymous.push(rule);
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown keyword {other:?} (expected topic, user or pattern)"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// Reads and parses an ACL file.
    pub fn load(path: &Path) -> Result<AclFile, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
            path: path.to_owned(),
            source,
        })?;
        AclFile::parse(&text, path)
    }

    fn rules<'s>(
        &'s self,
        who: Who<'s>,
    ) -> impl Iterator<Item = (Grant, std::borrow::Cow<'s, str>)> + 's {
        let direct: &[Rule] = match who.user {
            None => &self.anonymous,
            Some(u) => self.users.get(u).map(Vec::as_slice).unwrap_or(&[]),
        };
        let direct = direct
            .iter()
            .map(|r| (r.grant, std::borrow::Cow::Borrowed(r.filter.as_str())));
        let patterns = self.patterns.iter().filter_map(move |r| {
            if r.filter.contains("%u") && who.user.is_none() {
                return None;
            }
            let f = r
                .filter
                .replace("%u", who.user.unwrap_or(""))
                .replace("%c", who.client_id);
            // A substituted name with wildcards must not widen the rule.
            if (r.filter.contains("%u") || r.filter.contains("%c"))
                && (who.user.unwrap_or("").contains(['+', '#'])
                    || who.client_id.contains(['+', '#']))
            {
                return None;
            }
            Some((r.grant, std::borrow::Cow::Owned(f)))
        });
        direct.chain(patterns)
    }

    /// May `who` publish to (Write) or receive from (Read) this topic name?
    pub fn check_topic(&self, who: Who<'_>, topic_name: &str, access: Access) -> bool {
        let mut granted = false;
        for (grant, filter) in self.rules(who) {
            if firehose::filter::topic_matches(&filter, topic_name) {
                if grant == Grant::Deny {
                    return false;
                }
                granted |= grant.allows(access);
            }
        }
        granted
    }

    /// May `who` subscribe to this filter? A grant must cover the whole
    /// filter (its wildcards taken literally), and no deny rule may match it.
    pub fn check_subscribe(&self, who: Who<'_>, filter: &str) -> bool {
        self.check_topic(who, filter, Access::Read)
    }

    /// True when `who` may read every topic with no exception, so that the
    /// per-message read check can be skipped.
    pub fn reads_everything(&self, who: Who<'_>) -> bool {
        let mut all = false;
        for (grant, filter) in self.rules(who) {
            if grant == Grant::Deny {
                return false;
            }
            if filter == "#" && grant.allows(Access::Read) {
                all = true;
            }
        }
        all
    }
}

fn parse_rule(rest: &str) -> Result<Rule, String> {
    let (first, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let (grant, filter) = match first {
        "read" => (Grant::Read, tail.trim()),
        "write" => (Grant::Write, tail.trim()),
        "readwrite" => (Grant::ReadWrite, tail.trim()),
        "deny" => (Grant::Deny, tail.trim()),
        _ => (Grant::ReadWrite, rest),
    };
    if filter.is_empty() {
        return Err("missing topic filter".into());
    }
    let probe = filter.replace("%u", "u").replace("%c", "c");
    topic::validate_filter(
        &probe,
        topic::TopicLimits {
            max_len: 65535,
            max_levels: 1024,
        },
    )
    .map_err(|e| format!("bad topic filter {filter:?}: {e}"))?;
    Ok(Rule {
        grant,
        filter: filter.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIREHOSE: &str = "\
# anyone may read
topic read #
topic read $SYS/#

user gerrit
topic readwrite gerrit/#
topic readwrite firehose/status/gerrit/#

user admin
topic #
topic deny secret/#

pattern write clients/%u/#
pattern read private/%c/#
";

    fn anon(c: &str) -> Who<'_> {
        Who {
            user: None,
            client_id: c,
        }
    }
    fn user<'a>(u: &'a str, c: &'a str) -> Who<'a> {
        Who {
            user: Some(u),
            client_id: c,
        }
    }

    #[test]
    fn anonymous_reads_only() {
        let acl = AclFile::parse(FIREHOSE, Path::new("acl")).unwrap();
        assert!(acl.check_topic(anon("x"), "gerrit/a/b", Access::Read));
        assert!(!acl.check_topic(anon("x"), "gerrit/a/b", Access::Write));
        assert!(acl.check_subscribe(anon("x"), "#"));
        assert!(acl.check_subscribe(anon("x"), "$SYS/broker/#"));
        assert!(!acl.check_topic(anon("x"), "clients/x/a", Access::Write));
        assert!(acl.check_topic(anon("c1"), "private/c1/a", Access::Read));
    }

    #[test]
    fn users_and_patterns() {
        let acl = AclFile::parse(FIREHOSE, Path::new("acl")).unwrap();
        assert!(acl.check_topic(
            user("gerrit", "g"),
            "gerrit/openstack/nova/x",
            Access::Write
        ));
        assert!(!acl.check_topic(user("gerrit", "g"), "nova/x", Access::Write));
        assert!(!acl.check_topic(user("Gerrit", "g"), "gerrit/x", Access::Write));
        assert!(acl.check_topic(user("bob", "b"), "clients/bob/x", Access::Write));
        assert!(!acl.check_topic(user("bob", "b"), "clients/eve/x", Access::Write));
        assert!(acl.check_topic(user("admin", "a"), "x/y", Access::Write));
        assert!(!acl.check_topic(user("admin", "a"), "secret/y", Access::Read));
        assert!(!acl.check_subscribe(user("admin", "a"), "secret/#"));
        assert!(!acl.reads_everything(user("admin", "a")));
        assert!(acl.check_subscribe(user("gerrit", "g"), "gerrit/+/x"));
        assert!(!acl.check_subscribe(user("gerrit", "g"), "#"));
    }

    #[test]
    fn wildcards_in_names_do_not_widen_patterns() {
        let acl = AclFile::parse("pattern write clients/%c/#\n", Path::new("acl")).unwrap();
        assert!(!acl.check_topic(anon("#"), "clients/other/x", Access::Write));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = AclFile::parse("topic read #\nbogus x\n", Path::new("acl")).unwrap_err();
        assert!(e.to_string().starts_with("acl:2:"), "{e}");
        let e = AclFile::parse("topic read a/#/b\n", Path::new("acl")).unwrap_err();
        assert!(e.to_string().contains("acl:1"), "{e}");
    }
}
