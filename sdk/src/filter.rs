//! What to subscribe to: builders that produce the right MQTT topic filter
//! for each source, plus what MQTT filters cannot say (an event type across
//! every gerrit project, whose name has a variable number of levels) as a
//! check on the event type, applied by the client.
//!
//! ```
//! use firehose::filter::Filter;
//! assert_eq!(Filter::gerrit().project("openstack/nova").event("comment-added").mqtt(),
//!            "gerrit/openstack/nova/comment-added");
//! assert_eq!(Filter::gerrit().event("change-merged").mqtt(), "gerrit/#");
//! assert_eq!(Filter::nova().deployment("cell1").event_prefix("compute.instance").mqtt(),
//!            "nova/cell1/compute/instance/#");
//! assert_eq!(Filter::launchpad().project("nova").mqtt(), "launchpad/nova/#");
//! assert_eq!(Filter::status().bridge("gerrit").mqtt(), "firehose/status/gerrit/+");
//! assert_eq!(Filter::gerrit().shared("workers").mqtt(), "$share/workers/gerrit/#");
//! ```

use crate::reader::Event;

/// A subscription: an MQTT filter and, optionally, the event types wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    levels: Vec<String>,
    /// Ends in `#` (else the levels are the whole filter).
    rest: bool,
    /// `$share/<group>/`.
    group: Option<String>,
    /// Event types (`gerrit.comment-added`) to keep; empty: all.
    types: Vec<String>,
    /// Event type prefix (`nova.compute.instance`) to keep.
    type_prefix: Option<String>,
    /// Which source, for the builder methods.
    source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Gerrit,
    Nova,
    Launchpad,
    Ansible,
    Status,
    Topic,
}

impl Filter {
    fn new(source: Source, first: &[&str]) -> Filter {
        Filter {
            levels: first.iter().map(|s| s.to_string()).collect(),
            rest: true,
            group: None,
            types: Vec::new(),
            type_prefix: None,
            source,
        }
    }

    /// Any MQTT filter, as is (`#`, `gerrit/+/comment-added`, ...).
    pub fn topic(filter: &str) -> Filter {
        let mut f = Filter::new(Source::Topic, &[]);
        f.levels = filter.split('/').map(str::to_owned).collect();
        f.rest = false;
        f
    }

    /// Everything: `#`.
    pub fn all() -> Filter {
        Filter::topic("#")
    }

    /// Gerrit events: `gerrit/<project>/<event-type>`.
    pub fn gerrit() -> Filter {
        Filter::new(Source::Gerrit, &["gerrit"])
    }

    /// Nova notifications: `nova/<deployment>/<event type as levels>`.
    pub fn nova() -> Filter {
        Filter::new(Source::Nova, &["nova", "+"])
    }

    /// Launchpad notifications: `launchpad/<project>/<type>/<bug>`.
    pub fn launchpad() -> Filter {
        Filter::new(Source::Launchpad, &["launchpad"])
    }

    /// Ansible playbook events: `ansible/playbook/<play uuid>/...`.
    pub fn ansible() -> Filter {
        Filter::new(Source::Ansible, &["ansible", "playbook"])
    }

    /// Bridges' retained status: `firehose/status/<bridge>/<instance>`.
    pub fn status() -> Filter {
        Filter::new(Source::Status, &["firehose", "status"])
    }

    /// Gerrit: only this project (its name may have several levels).
    /// Launchpad: only this project.
    pub fn project(mut self, project: &str) -> Filter {
        match self.source {
            Source::Gerrit | Source::Launchpad => {
                self.levels.extend(project.split('/').map(str::to_owned));
            }
            _ => {}
        }
        self
    }

    /// Only this event type (repeatable): `comment-added` for gerrit,
    /// `bug` for launchpad, `instance.create.end` for nova, `task.failed`
    /// for ansible; or a full type such as `gerrit.comment-added`.
    pub fn event(mut self, event_type: &str) -> Filter {
        let prefix = match self.source {
            Source::Gerrit => "gerrit.",
            Source::Nova => "nova.",
            Source::Launchpad => "launchpad.",
            Source::Ansible => "ansible.",
            Source::Status => "firehose.",
            Source::Topic => "",
        };
        let full = if event_type.starts_with(prefix) {
            event_type.to_owned()
        } else {
            format!("{prefix}{event_type}")
        };
        // A gerrit project narrows the filter to one event level.
        if self.source == Source::Gerrit && self.levels.len() > 1 && self.types.is_empty() {
            self.levels
                .push(event_type.trim_start_matches(prefix).to_owned());
            self.rest = false;
        }
        self.types.push(full);
        self
    }

    /// Nova: one deployment (cell, region).
    pub fn deployment(mut self, name: &str) -> Filter {
        if self.source == Source::Nova && self.levels.len() >= 2 {
            self.levels[1] = name.to_owned();
        }
        self
    }

    /// Nova: event types starting with this (`compute.instance`), as
    /// topic levels.
    pub fn event_prefix(mut self, prefix: &str) -> Filter {
        if self.source == Source::Nova {
            self.levels.extend(prefix.split('.').map(str::to_owned));
            self.type_prefix = Some(format!("nova.{prefix}"));
        }
        self
    }

    /// Status: one bridge (`gerrit`, `nova`, ...).
    pub fn bridge(mut self, bridge: &str) -> Filter {
        if self.source == Source::Status {
            self.levels.push(bridge.to_owned());
            self.levels.push("+".into());
            self.rest = false;
        }
        self
    }

    /// Ansible: one play.
    pub fn play(mut self, uuid: &str) -> Filter {
        if self.source == Source::Ansible {
            self.levels.push(uuid.to_owned());
        }
        self
    }

    /// A shared subscription: the broker hands each event to one member of
    /// `group` (a worker pool).
    pub fn shared(mut self, group: &str) -> Filter {
        self.group = Some(group.to_owned());
        self
    }

    /// The MQTT filter to subscribe with.
    pub fn mqtt(&self) -> String {
        let mut f = String::new();
        if let Some(g) = &self.group {
            f.push_str("$share/");
            f.push_str(g);
            f.push('/');
        }
        f.push_str(&self.topic_filter());
        f
    }

    /// Whether `topic` matches the filter's levels (no allocation).
    fn topic_wanted(&self, topic: &str) -> bool {
        if topic.starts_with('$') && !self.levels.first().is_some_and(|l| l.starts_with('$')) {
            return false;
        }
        let mut t = topic.split('/');
        for l in &self.levels {
            match (l.as_str(), t.next()) {
                ("#", _) => return true,
                ("+", Some(_)) => {}
                (a, Some(b)) if a == b => {}
                _ => return false,
            }
        }
        match t.next() {
            None => true,
            // More levels: only a trailing `#` takes them (or the level
            // itself for `a/#`, which MQTT lets match `a`).
            Some(_) => self.rest,
        }
    }

    /// The filter without `$share/<group>/`.
    fn topic_filter(&self) -> String {
        let mut levels = self.levels.clone();
        if self.rest {
            levels.push("#".into());
        }
        levels.join("/")
    }

    /// Whether `ev` is one this filter wants (topic and event type).
    pub fn wants(&self, ev: &Event) -> bool {
        if !self.topic_wanted(&ev.topic) {
            return false;
        }
        if !self.types.is_empty() && !self.types.contains(&ev.kind) {
            return false;
        }
        match &self.type_prefix {
            Some(p) => ev.kind.starts_with(p.as_str()),
            None => true,
        }
    }
}

impl From<&str> for Filter {
    fn from(s: &str) -> Filter {
        Filter::topic(s)
    }
}

/// A topic filter MQTT would refuse (the broker answers such a SUBSCRIBE
/// with a failure, or closes the connection).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{filter:?} is not an MQTT topic filter: {reason}")]
pub struct FilterError {
    /// The filter as given.
    pub filter: String,
    /// What rule it breaks.
    pub reason: &'static str,
}

/// Checks `filter` as MQTT does (MQTT-4.7.1): not empty, `+` and `#`
/// alone in their level, `#` only last; a `$share/GROUP/` prefix names a
/// group and a filter. Readers check before they connect, so a typo gets
/// its own error instead of a closed connection.
pub fn check(filter: &str) -> Result<(), FilterError> {
    let err = |reason| {
        Err(FilterError {
            filter: filter.to_owned(),
            reason,
        })
    };
    let inner = match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((group, f)) if !group.is_empty() && !group.contains(['+', '#']) => f,
            _ => return err("a shared subscription is $share/GROUP/FILTER"),
        },
        None => filter,
    };
    if inner.is_empty() {
        return err("it is empty");
    }
    let levels: Vec<&str> = inner.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return err("`#` stands alone in the last level (a/#)");
        }
        if l.contains('+') && *l != "+" {
            return err("`+` stands alone in its level (a/+/b)");
        }
    }
    Ok(())
}

/// MQTT topic matching: `+` one level, `#` the rest; topics starting with
/// `$` only match filters that name it.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or("", |(_, f)| f),
        None => filter,
    };
    if topic.starts_with('$') && !filter.starts_with('$') {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_mqtt_refuses_are_errors_that_say_why() {
        for ok in ["#", "a/#", "+", "a/+/b", "$SYS/#", "$share/g/a/#", "a//b"] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("a/#/b", "`#`"),
            ("a/b#", "`#`"),
            ("gerrit/+x", "`+`"),
            ("", "empty"),
            ("$share/g", "$share/GROUP/FILTER"),
            ("$share//a", "$share/GROUP/FILTER"),
        ] {
            let e = check(bad).expect_err(bad);
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn matching() {
        assert!(topic_matches("#", "gerrit/a/b"));
        assert!(topic_matches("gerrit/#", "gerrit"));
        assert!(topic_matches(
            "nova/+/compute/#",
            "nova/cell1/compute/instance/create/end"
        ));
        assert!(!topic_matches("nova/+/compute/#", "nova/cell1/service/x/y"));
        assert!(!topic_matches("#", "$SYS/broker/uptime"));
        assert!(topic_matches("$share/g/gerrit/#", "gerrit/p/x"));
        assert!(topic_matches("a/+", "a/b") && !topic_matches("a/+", "a/b/c"));
        // The broker's cases (its ACL and $SYS subscriptions use this too).
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(!topic_matches("a", "a/b"));
        assert!(!topic_matches("a/b", "a"));
        assert!(!topic_matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(topic_matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(topic_matches("$SYS/+/uptime", "$SYS/broker/uptime"));
        assert!(topic_matches("+/a", "/a"));
    }

    #[test]
    fn event_types_across_projects() {
        let f = Filter::gerrit().event("change-merged");
        let ev = |topic: &str, kind: &str| {
            let mut e = crate::reader::decode(topic, b"{}", false);
            e.kind = kind.into();
            e
        };
        assert!(f.wants(&ev(
            "gerrit/openstack/nova/change-merged",
            "gerrit.change-merged"
        )));
        assert!(!f.wants(&ev(
            "gerrit/openstack/nova/comment-added",
            "gerrit.comment-added"
        )));
        let n = Filter::nova().event_prefix("compute.instance");
        assert_eq!(n.mqtt(), "nova/+/compute/instance/#");
        assert!(n.wants(&ev(
            "nova/c/compute/instance/create/end",
            "nova.compute.instance.create.end"
        )));
    }
}
