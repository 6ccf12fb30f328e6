//! The rules: which events become notifications, with what message, for
//! which targets; and the state that makes them bearable (dedup windows,
//! throttle budgets with a summary of what was held back).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use firehose::reader::Event;
use firehose_expr::{Input, Template, Where};
use serde_json::{json, Value};

use crate::config::{Config, ConfigError};
use crate::stats::Stats;

/// The default message: what `mosquitto_sub -v` prints.
pub const DEFAULT_TEMPLATE: &str = "{{ topic }} {{ payload }}";

/// One notification for one target: the normalized event plus `payload`,
/// `received`, `message` and `rule`, as every target template sees it.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub target: usize,
    pub note: Arc<Value>,
}

/// A compiled `[[rule]]` and its state.
struct Rule {
    name: String,
    topics: Vec<String>,
    types: Vec<String>,
    filter: Option<Where>,
    template: Template,
    targets: Vec<usize>,
    throttle: Option<Throttle>,
    dedup: Option<Dedup>,
    skip_retained: bool,
}

struct Throttle {
    max: u32,
    per: Duration,
    key: Option<Template>,
    windows: HashMap<String, Window>,
}

/// One key's budget in its current window.
struct Window {
    ends: Instant,
    sent: u32,
    held: u64,
}

/// Event ids seen within the window, oldest first.
struct Dedup {
    window: Duration,
    seen: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl Dedup {
    /// True when `id` was seen within the window; remembers it otherwise.
    fn repeat(&mut self, id: &str, now: Instant) -> bool {
        while let Some((t, _)) = self.order.front() {
            if now.duration_since(*t) < self.window {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(id) {
            return true;
        }
        self.seen.insert(id.to_owned(), now);
        self.order.push_back((now, id.to_owned()));
        false
    }
}

/// Every rule, in file order.
pub struct Engine {
    rules: Vec<Rule>,
    index: FilterIndex,
    stats: Arc<Stats>,
}

/// The rules' topic filters in a tree of levels, so an event finds the
/// rules its topic matches in a walk of its own levels, whatever the
/// number of rules.
#[derive(Default)]
struct FilterIndex {
    root: Level,
}

#[derive(Default)]
struct Level {
    exact: HashMap<String, Level>,
    plus: Option<Box<Level>>,
    /// Rules whose filter ends here with `#`.
    hash: Vec<usize>,
    /// Rules whose filter ends exactly here.
    end: Vec<usize>,
}

impl FilterIndex {
    fn add(&mut self, filter: &str, rule: usize) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            match level {
                "#" => {
                    node.hash.push(rule);
                    return;
                }
                "+" => node = node.plus.get_or_insert_with(Default::default),
                l => node = node.exact.entry(l.to_owned()).or_default(),
            }
        }
        node.end.push(rule);
    }

    /// The rules whose filters match `topic`, in rule order, once each.
    fn matching(&self, topic: &str) -> Vec<usize> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = Vec::new();
        // Wildcards never match a `$` topic's first level (MQTT-4.7.2-1).
        let system = topic.starts_with('$');
        walk(&self.root, &levels, system, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn walk(node: &Level, levels: &[&str], first_is_system: bool, out: &mut Vec<usize>) {
    if !first_is_system {
        out.extend(&node.hash);
    }
    let Some((first, rest)) = levels.split_first() else {
        out.extend(&node.end);
        return;
    };
    if let Some(next) = node.exact.get(*first) {
        walk(next, rest, false, out);
    }
    if let (Some(plus), false) = (&node.plus, first_is_system) {
        walk(plus, rest, false, out);
    }
}

impl Engine {
    /// Compiles the rules of a checked configuration; targets are named by
    /// their index in `cfg.targets`.
    pub fn new(cfg: &Config, stats: Arc<Stats>) -> Result<Engine, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        let mut rules = Vec::new();
        for (i, r) in cfg.rules.iter().enumerate() {
            let name = r.name.clone().unwrap_or_else(|| format!("rule-{}", i + 1));
            let template = Template::new(r.template.as_deref().unwrap_or(DEFAULT_TEMPLATE))
                .map_err(|e| invalid(format!("{name}: {e}")))?;
            let filter = match &r.filter {
                Some(w) => Some(Where::new(w).map_err(|e| invalid(format!("{name}: where: {e}")))?),
                None => None,
            };
            let targets = r
                .targets
                .iter()
                .map(|t| {
                    cfg.targets
                        .iter()
                        .position(|c| &c.name == t)
                        .ok_or_else(|| invalid(format!("{name}: no target is named {t:?}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let throttle = match &r.throttle {
                Some(t) => Some(Throttle {
                    max: t.max,
                    per: t.per,
                    key: match &t.key {
                        Some(k) => {
                            Some(Template::new(k).map_err(|e| invalid(format!("{name}: {e}")))?)
                        }
                        None => None,
                    },
                    windows: HashMap::new(),
                }),
                None => None,
            };
            stats.rule(&name);
            rules.push(Rule {
                name,
                topics: r.topics.clone(),
                types: r.types.clone().map(|t| t.into_vec()).unwrap_or_default(),
                filter,
                template,
                targets,
                throttle,
                dedup: r.dedup.map(|window| Dedup {
                    window,
                    seen: HashMap::new(),
                    order: VecDeque::new(),
                }),
                skip_retained: r.skip_retained,
            });
        }
        let mut index = FilterIndex::default();
        for (i, r) in rules.iter().enumerate() {
            for t in &r.topics {
                index.add(t, i);
            }
        }
        Ok(Engine {
            rules,
            index,
            stats,
        })
    }

    /// The distinct topic filters the rules need, in rule order.
    pub fn topics(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in self.rules.iter().flat_map(|r| r.topics.iter()) {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }

    /// The notifications one event gives.
    pub fn process(&mut self, ev: &Event, now: Instant, received: &str) -> Vec<Dispatch> {
        let mut out = Vec::new();
        let mut input: Option<Input> = None;
        for i in self.index.matching(&ev.topic) {
            let rule = &mut self.rules[i];
            if rule.skip_retained && ev.retained {
                continue;
            }
            if !rule.types.is_empty() && !rule.types.contains(&ev.kind) {
                continue;
            }
            let input = input.get_or_insert_with(|| {
                Input::new(ev)
                    .with("payload", String::from_utf8_lossy(&ev.payload).into())
                    .with("received", received.into())
            });
            if let Some(w) = &rule.filter {
                if !w.test(input) {
                    continue;
                }
            }
            if let (Some(d), Some(id)) = (&mut rule.dedup, ev.id.as_deref()) {
                if d.repeat(id, now) {
                    self.stats.count_rule(&rule.name, |c| c.deduped += 1);
                    continue;
                }
            }
            if let Some(t) = &mut rule.throttle {
                let key = match &t.key {
                    Some(k) => k.render(input.json()).unwrap_or_default(),
                    None => String::new(),
                };
                let w = t.windows.entry(key).or_insert(Window {
                    ends: now + t.per,
                    sent: 0,
                    held: 0,
                });
                if w.sent >= t.max {
                    w.held += 1;
                    self.stats.count_rule(&rule.name, |c| c.throttled += 1);
                    continue;
                }
                w.sent += 1;
            }
            let message = rule
                .template
                .render(input.json())
                .unwrap_or_else(|e| format!("<template error: {e}>"));
            self.stats.count_rule(&rule.name, |c| c.matched += 1);
            let mut note = input.json().clone();
            if let Some(m) = note.as_object_mut() {
                m.insert("message".into(), message.into());
                m.insert("rule".into(), rule.name.clone().into());
            }
            let note = Arc::new(note);
            out.extend(rule.targets.iter().map(|&target| Dispatch {
                target,
                note: note.clone(),
            }));
        }
        out
    }

    /// Ends the throttle windows that are over: one summary per key that
    /// held events back.
    pub fn expire(&mut self, now: Instant, received: &str) -> Vec<Dispatch> {
        let mut out = Vec::new();
        for rule in &mut self.rules {
            let Some(t) = &mut rule.throttle else {
                continue;
            };
            let per = t.per;
            let mut ended = Vec::new();
            t.windows.retain(|key, w| {
                if w.ends > now {
                    return true;
                }
                if w.held > 0 {
                    ended.push((key.clone(), w.held));
                }
                false
            });
            for (key, held) in ended {
                let message = format!(
                    "{held} more notification(s) of rule {} held back{} in the last {}",
                    rule.name,
                    if key.is_empty() {
                        String::new()
                    } else {
                        format!(" for {key}")
                    },
                    humantime::format_duration(per)
                );
                let note = Arc::new(json!({
                    "topic": format!("firehose-notify/summary/{}", rule.name),
                    "id": null,
                    "source": null,
                    "type": "notify.summary",
                    "time": received,
                    "subject": key,
                    "data": {"rule": rule.name, "key": key, "held": held, "window_seconds": per.as_secs()},
                    "retained": false,
                    "payload": message,
                    "received": received,
                    "message": message,
                    "rule": rule.name,
                }));
                self.stats.count_rule(&rule.name, |c| c.summaries += 1);
                out.extend(rule.targets.iter().map(|&target| Dispatch {
                    target,
                    note: note.clone(),
                }));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(rules: &str) -> Engine {
        let text = format!(
            "[broker]\nurl = \"mqtt://127.0.0.1\"\n[[target]]\nname = \"t\"\ntype = \"log\"\n{rules}"
        );
        Engine::new(
            &Config::parse(&text).unwrap(),
            Arc::new(Stats::new(&["t".into()])),
        )
        .unwrap()
    }

    fn gerrit(project: &str, n: u32) -> Event {
        let p = format!(
            r#"{{"type":"comment-added","change":{{"project":"{project}","number":{n}}},"approvals":[{{"type":"Code-Review","value":"-2"}}]}}"#
        );
        firehose::reader::decode(
            &format!("gerrit/{project}/comment-added"),
            p.as_bytes(),
            false,
        )
    }

    #[test]
    fn topics_types_where_and_templates() {
        let mut e = engine(
            r#"
[[rule]]
name = "vetoes"
topics = ["gerrit/#"]
type = ["gerrit.comment-added"]
where = '[.data.approvals[]? | .value | tonumber] | any(. <= -2)'
template = "{{ data.change.project }} #{{ subject }} got -2"
targets = ["t"]
"#,
        );
        let now = Instant::now();
        let d = e.process(&gerrit("a/b", 7), now, "2026-11-30T00:00:00Z");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].note["message"], "a/b #7 got -2");
        assert_eq!(d[0].note["rule"], "vetoes");
        let other = firehose::reader::decode("nova/x/y", b"{}", false);
        assert!(e.process(&other, now, "").is_empty());
        assert_eq!(e.topics(), vec!["gerrit/#".to_string()]);
    }

    #[test]
    fn the_index_matches_as_mqtt_does() {
        let filters = [
            "#", "a/#", "a/+", "a/b", "+/b", "+/+/c", "a/b/#", "$SYS/#", "+/#", "a/+/#",
        ];
        let mut idx = FilterIndex::default();
        for (i, f) in filters.iter().enumerate() {
            idx.add(f, i);
        }
        for topic in ["a", "a/b", "a/b/c", "x/b", "x/y/c", "$SYS/x", "a/", "/b"] {
            let want: Vec<usize> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| firehose::filter::topic_matches(f, topic))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(idx.matching(topic), want, "{topic}");
        }
    }

    #[test]
    fn dedup_and_throttle_with_a_summary() {
        let mut e = engine(
            r##"
[[rule]]
name = "r"
topics = ["#"]
dedup = "1m"
throttle = { max = 2, per = "10s", key = "{{ data.change.project }}" }
targets = ["t"]
"##,
        );
        let t0 = Instant::now();
        let ev = gerrit("p", 1);
        assert_eq!(e.process(&ev, t0, "").len(), 1);
        assert!(e.process(&ev, t0, "").is_empty(), "the same event twice");
        let mut sent = 1;
        for n in 2..=10 {
            sent += e.process(&gerrit("p", n), t0, "").len();
        }
        assert_eq!(sent, 2, "two per window for project p");
        assert_eq!(
            e.process(&gerrit("q", 1), t0, "").len(),
            1,
            "q has its own budget"
        );
        assert!(e.expire(t0 + Duration::from_secs(5), "").is_empty());
        let s = e.expire(t0 + Duration::from_secs(10), "now");
        assert_eq!(s.len(), 1, "one summary, for p only");
        assert_eq!(s[0].note["data"]["held"], 8);
        assert_eq!(s[0].note["subject"], "p");
        assert!(s[0].note["message"].as_str().unwrap().starts_with("8 more"));
        // A new window.
        assert_eq!(
            e.process(&gerrit("p", 11), t0 + Duration::from_secs(11), "")
                .len(),
            1
        );
    }

    #[test]
    fn retained_is_skipped_by_default() {
        let mut e = engine("[[rule]]\ntopics = [\"#\"]\ntargets = [\"t\"]\n");
        let ev = firehose::reader::decode("firehose/status/x/y", b"{}", true);
        assert!(e.process(&ev, Instant::now(), "").is_empty());
    }
}
