//! Topic names, one builder per service, compatible with the original
//! firehose (see `firehose-schema.md`): subscribers keep their filters.
//!
//! Every builder makes each piece a safe topic level: `+`, `#` and NUL
//! become `_` (they would turn a name into a filter or break it). Slashes
//! inside a gerrit project name are kept on purpose: `openstack/nova` is two
//! levels, as germqtt published it.

/// Replaces the characters that may not appear in a topic name.
pub fn level(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '+' | '#' | '\0' => '_',
            c => c,
        })
        .collect()
}

/// `gerrit/<project>/<event-type>`; the project keeps its slashes and may
/// be empty (germqtt published `gerrit//<type>` for events with no project).
pub fn gerrit(project: &str, event_type: &str) -> String {
    format!(
        "gerrit/{}/{}",
        level(project),
        level(&event_type.replace('/', "_"))
    )
}

/// `launchpad/<project>/<event-type>/<bug>`, stopping at the first missing
/// piece as lpmqtt did.
pub fn launchpad(project: Option<&str>, event_type: Option<&str>, bug: Option<&str>) -> String {
    let mut t = String::from("launchpad");
    for part in [project, event_type, bug] {
        match part {
            Some(p) => {
                t.push('/');
                t.push_str(&level(&p.replace('/', "_")));
            }
            None => break,
        }
    }
    t
}

/// `ansible/playbook/<uuid>/<rest...>`, e.g. `rest = ["action", "start"]`.
pub fn ansible_playbook(uuid: &str, rest: &[&str]) -> String {
    let mut t = format!("ansible/playbook/{}", level(uuid));
    for r in rest {
        t.push('/');
        t.push_str(&level(&r.replace('/', "_")));
    }
    t
}

/// `nova/<deployment>/<event type with dots as levels>`:
/// `compute.instance.create.end` becomes `nova/cell1/compute/instance/create/end`.
pub fn nova(deployment: &str, event_type: &str) -> String {
    let mut t = format!("nova/{}", level(&deployment.replace('/', "_")));
    for part in event_type.split('.') {
        t.push('/');
        t.push_str(&level(&part.replace('/', "_")));
    }
    t
}

/// `nova/<deployment>/service/<binary>/<host>`: the retained up/down state
/// of one nova service.
pub fn nova_service(deployment: &str, binary: &str, host: &str) -> String {
    format!(
        "nova/{}/service/{}/{}",
        level(&deployment.replace('/', "_")),
        level(&binary.replace('/', "_")),
        level(&host.replace('/', "_"))
    )
}

/// `firehose/status/<bridge>/<instance>`: where a bridge says it is alive.
pub fn status(bridge: &str, instance: &str) -> String {
    format!(
        "firehose/status/{}/{}",
        level(&bridge.replace('/', "_")),
        level(&instance.replace('/', "_"))
    )
}

/// A configured topic prefix or level that cannot be one; it says how to
/// fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} {why}; use plain names separated by '/', e.g. \"site1\"")]
pub struct TopicSettingError {
    /// The setting (`--base-topic`, `deployment`).
    pub what: String,
    /// The value refused.
    pub value: String,
    why: &'static str,
}

/// Checks a configured topic prefix (`--base-topic`) or level (a nova
/// `--deployment`): no empty level, no wildcard, no NUL, not a `$` topic.
/// `what` names the setting in the error.
pub fn check_configured(
    what: &str,
    value: &str,
    single_level: bool,
) -> Result<(), TopicSettingError> {
    let fix = |why: &'static str| {
        Err(TopicSettingError {
            what: what.to_owned(),
            value: value.to_owned(),
            why,
        })
    };
    if single_level && value.contains('/') {
        return fix("must be a single topic level (no '/')");
    }
    if value.starts_with('$') {
        return fix("starts with '$' (reserved for broker topics such as $SYS)");
    }
    if value.contains(['+', '#', '\0']) {
        return fix("contains a wildcard (+ or #) or NUL, which a topic name cannot");
    }
    if value.trim_end_matches('/').split('/').any(str::is_empty) {
        return fix("has an empty level (leading or doubled '/')");
    }
    Ok(())
}

/// Puts `topic` under `base` (`--base-topic`); an empty base changes nothing.
pub fn with_base(base: &str, topic: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.is_empty() {
        topic.to_owned()
    } else {
        format!("{base}/{topic}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_prefixes_and_levels() {
        assert!(check_configured("--base-topic", "site1/firehose", false).is_ok());
        assert!(check_configured("--base-topic", "site1/", false).is_ok());
        assert!(check_configured("--deployment", "cell1", true).is_ok());
        for (v, single) in [
            ("a/+/b", false),
            ("#", false),
            ("/site1", false),
            ("a//b", false),
            ("$SYS", false),
            ("cell/1", true),
            ("", true),
        ] {
            let e = check_configured("x", v, single).unwrap_err().to_string();
            assert!(e.contains("e.g."), "{v}: {e}");
        }
    }

    #[test]
    fn compatible_with_the_original_firehose() {
        assert_eq!(
            gerrit("openstack/nova", "comment-added"),
            "gerrit/openstack/nova/comment-added"
        );
        assert_eq!(gerrit("", "project-created"), "gerrit//project-created");
        assert_eq!(
            launchpad(Some("nova"), Some("bug"), Some("1680938")),
            "launchpad/nova/bug/1680938"
        );
        assert_eq!(launchpad(Some("nova"), None, Some("1")), "launchpad/nova");
        assert_eq!(
            ansible_playbook("6b3b", &["action", "finish", "OK"]),
            "ansible/playbook/6b3b/action/finish/OK"
        );
        assert_eq!(
            nova("cell1", "instance.create.end"),
            "nova/cell1/instance/create/end"
        );
        assert_eq!(
            nova("cell1", "compute.instance.create.end"),
            "nova/cell1/compute/instance/create/end"
        );
        assert_eq!(
            status("gerrit", "review-1"),
            "firehose/status/gerrit/review-1"
        );
        assert_eq!(with_base("", "gerrit/a/b"), "gerrit/a/b");
        assert_eq!(with_base("site/", "gerrit/a/b"), "site/gerrit/a/b");
    }

    #[test]
    fn wildcards_never_reach_a_topic_name() {
        assert_eq!(gerrit("a+b", "x#y"), "gerrit/a_b/x_y");
        assert_eq!(nova("c/1", "a.b+"), "nova/c_1/a/b_");
    }
}
