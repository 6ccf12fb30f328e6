//! The callback plugin, shipped inside the binary: written out where
//! ansible can find it (`plugin-path`, or `run`'s private directory), and
//! the environment that enables it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// `plugin/firehose.py`.
pub const SOURCE: &str = include_str!("../plugin/firehose.py");
/// The callback's name, as `ANSIBLE_CALLBACKS_ENABLED` spells it.
pub const NAME: &str = "firehose";

/// Writes `firehose.py` into `dir` (when it differs) and returns `dir`.
pub fn install(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let file = dir.join(format!("{NAME}.py"));
    if std::fs::read_to_string(&file).ok().as_deref() != Some(SOURCE) {
        std::fs::write(&file, SOURCE)?;
    }
    Ok(dir.to_owned())
}

/// Where `plugin-path` installs by default: `$XDG_DATA_HOME/firehose/ansible`
/// or `~/.local/share/firehose/ansible`.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(base.join("firehose/ansible"))
}

/// `dir` before what the variable `var` already lists (`:`-separated).
pub fn prepend_path(var: &str, dir: &Path) -> OsString {
    let mut v = OsString::from(dir);
    if let Some(old) = std::env::var_os(var).filter(|o| !o.is_empty()) {
        v.push(":");
        v.push(old);
    }
    v
}

/// The callbacks the variable `var` already enables, plus ours.
pub fn enable(var: &str) -> String {
    match std::env::var(var) {
        Ok(old) if old.split(',').any(|c| c.trim() == NAME) => old,
        Ok(old) if !old.trim().is_empty() => format!("{old},{NAME}"),
        _ => NAME.to_owned(),
    }
}
