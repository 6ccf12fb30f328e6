//! ARCHITECTURE.md names files: every one of them must exist, so the map
//! cannot drift from the tree (issue #23). A name is a backticked token
//! ending in a source or doc extension (`{a,b}.rs` stands for both); it is
//! looked up from the repository root, then inside the crates' source and
//! test folders, since the text names `session/flight.rs` for
//! `broker/src/session/flight.rs`.

use std::path::Path;

/// Where a short name may live, tried in order.
const ROOTS: &[&str] = &[
    "",
    "broker/src/",
    "broker/tests/",
    "bridges/runtime/src/",
    "bridges/gerrit/src/",
    "bridges/nova/src/",
    "bridges/launchpad/src/",
    "bridges/ansible/",
    "bridges/ansible/src/",
    "bridges/subunit/src/",
    "sdk/src/",
    "tools/notify/src/",
    "tools/sub/src/",
    "tools/expr/src/",
    "tools/history/src/",
    "testkit/src/",
    "bench/src/",
];

const EXTENSIONS: &[&str] = &[
    ".rs", ".md", ".toml", ".py", ".html", ".mjs", ".service", ".jsonl", ".json",
];

/// `a/{x,y}.rs` as `a/x.rs` and `a/y.rs`.
fn expand(name: &str) -> Vec<String> {
    match (name.find('{'), name.find('}')) {
        (Some(a), Some(b)) if a < b => name[a + 1..b]
            .split(',')
            .map(|part| format!("{}{part}{}", &name[..a], &name[b + 1..]))
            .collect(),
        _ => vec![name.to_owned()],
    }
}

#[test]
fn every_path_architecture_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut names = 0;
    let mut missing = Vec::new();
    for (i, token) in text.split('`').enumerate() {
        // Odd pieces are inside backticks.
        if i % 2 == 0 || token.contains(char::is_whitespace) || token.contains("://") {
            continue;
        }
        let token = token.trim_end_matches([',', '.', ':']);
        if !EXTENSIONS.iter().any(|e| token.ends_with(e)) || token.contains("::") {
            continue;
        }
        for name in expand(token) {
            names += 1;
            if !ROOTS.iter().any(|r| root.join(r).join(&name).exists()) {
                missing.push(name);
            }
        }
    }
    assert!(
        names > 50,
        "only {names} file names found: is the parser still right?"
    );
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names files that do not exist: {missing:?}"
    );
}
