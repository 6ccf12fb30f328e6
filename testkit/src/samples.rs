//! Sample configs in `deploy/` must show every key a program knows, and
//! only those: these helpers list both sides as `table.key` paths.

use std::collections::BTreeSet;

/// Keys of a TOML text as `table.key` (`[[table]]` arrays count as
/// `table`), including keys shown commented (`# key = value`) for
/// settings that have no default.
pub fn toml_keys(text: &str) -> BTreeSet<String> {
    let mut table = String::new();
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            table = l.trim_matches(|c| c == '[' || c == ']').to_owned();
            continue;
        }
        let l = l.strip_prefix('#').map(str::trim).unwrap_or(l);
        let Some((k, _)) = l.split_once(" = ") else {
            continue;
        };
        if !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            keys.insert(if table.is_empty() {
                k.to_owned()
            } else {
                format!("{table}.{k}")
            });
        }
    }
    keys
}

/// Keys of a config value serialized to JSON (where `None` shows as
/// `null`, unlike TOML), as `table.key`; an array of tables contributes the
/// keys of its first element, a nested table its own path.
pub fn json_keys(v: &serde_json::Value) -> BTreeSet<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeSet<String>) {
        let Some(obj) = v.as_object() else { return };
        for (k, child) in obj {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match child {
                serde_json::Value::Object(_) => walk(&path, child, out),
                serde_json::Value::Array(a) if a.first().is_some_and(|e| e.is_object()) => {
                    walk(&path, &a[0], out)
                }
                _ => {
                    out.insert(path);
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk("", v, &mut out);
    out
}

/// Panics, naming the keys, unless `sample` shows exactly `known`.
pub fn assert_sample_complete(name: &str, sample: &str, known: &BTreeSet<String>) {
    let shown = toml_keys(sample);
    let missing: Vec<_> = known.difference(&shown).collect();
    let unknown: Vec<_> = shown.difference(known).collect();
    assert!(missing.is_empty(), "{name} lacks {missing:?}");
    assert!(unknown.is_empty(), "{name} has unknown keys {unknown:?}");
}

/// What `--check-config` says about a shipped sample on a machine where
/// its files do not exist: every key is understood, and only the missing
/// `/etc/firehose/...` files are a problem.
pub fn assert_sample_checks(check_config_output: &str) {
    let text = check_config_output;
    assert!(
        !text.contains("unknown field") && !text.contains("expected"),
        "{text}"
    );
    assert!(
        text.contains("/etc/firehose/"),
        "the sample's files are the only problem: {text}"
    );
}

/// The non-empty lines of a fixture file (`fixtures/<rel>` in the
/// repository), e.g. `gerrit/stream-events.jsonl`.
pub fn fixture_lines(rel: &str) -> Vec<String> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(rel);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}
