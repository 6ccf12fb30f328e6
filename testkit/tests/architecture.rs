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

/// Runs `scripts/check-cycles` with `args` from the repository root.
fn check_cycles(args: &[&str]) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::process::Command::new(root.join("scripts/check-cycles"))
        .args(args)
        .current_dir(&root)
        .output()
        .expect("scripts/check-cycles runs (python3)")
}

#[test]
fn the_cycle_check_catches_a_cycle_a_layer_inversion_and_a_socket_in_the_core() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("edge")).unwrap();
    let write = |name: &str, text: &str| std::fs::write(src.join(name), text).unwrap();
    write("core.rs", "use crate::leaf::X;\n");
    write("leaf.rs", "pub struct X;\n");
    write("edge/mod.rs", "use crate::core::Y;\n");
    let layers = dir.path().join("layers");
    let s = src.to_str().unwrap();
    let lay = |text: String| std::fs::write(&layers, text).unwrap();
    lay(format!("{s} low (no sockets): leaf core\n{s} high: edge\n"));
    let run = || check_cycles(&["--layers", layers.to_str().unwrap(), s]);
    let ok = run();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // The core reaching up into the edge: a cycle and an inversion.
    write("core.rs", "use crate::leaf::X;\nuse crate::edge::Z;\n");
    let err = String::from_utf8_lossy(&run().stderr).into_owned();
    assert!(
        err.contains("NEW module cycle") && err.contains("core -> edge -> core"),
        "{err}"
    );
    assert!(
        err.contains("core (low) imports edge (high), a higher layer"),
        "{err}"
    );

    // A socket in a layer without them; a module in no layer.
    write("core.rs", "fn f(s: tokio::net::TcpStream) {}\n");
    write("new.rs", "\n");
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        err.contains("names tokio::net, but layer low has no sockets"),
        "{err}"
    );
    assert!(err.contains("module new is in no layer"), "{err}");
}

#[test]
fn the_crates_have_no_cycle_and_keep_their_layers() {
    let out = check_cycles(&[
        "--layers",
        "scripts/layers",
        "broker/src",
        "bridges/runtime/src",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
