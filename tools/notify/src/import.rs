//! `firehose-notify import mqttwarn.ini`: converts the common cases of a
//! mqttwarn configuration to ours, and says in comments what it left out.
//!
//! - `[defaults]` → `[broker]` (hostname, port, username, password,
//!   clientid, cleansession) and each rule's `skip_retained`;
//! - `[config:<service>]` `targets = {...}` → one `[[target]]` per entry,
//!   named `<service>:<target>` as mqttwarn's rules name them, for the
//!   services `log`, `file`, `smtp`, `http`, `execute` and `mqtt`;
//! - `[<topic filter>]` sections → `[[rule]]`s (`targets`, `format`);
//! - format strings: `{topic}`, `{payload}`, `{_dtiso}` and JSON payload
//!   keys (`{name}` → `{{ data.name }}`; CloudEvents attributes such as
//!   `{subject}` stay top-level) become templates.

use std::collections::BTreeMap;

/// Why a file could not be converted.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ImportError {
    pub line: usize,
    pub reason: String,
}

/// A Python literal, as mqttwarn's `targets` are written.
#[derive(Debug, Clone, PartialEq)]
pub enum Py {
    Str(String),
    Num(f64),
    Bool(bool),
    None,
    List(Vec<Py>),
    Dict(Vec<(Py, Py)>),
}

impl Py {
    fn as_str(&self) -> Option<&str> {
        match self {
            Py::Str(s) => Some(s),
            _ => None,
        }
    }
    fn truthy(&self) -> bool {
        match self {
            Py::Bool(b) => *b,
            Py::Num(n) => *n != 0.0,
            Py::Str(s) => !s.is_empty() && s != "False" && s != "false",
            Py::None => false,
            Py::List(l) => !l.is_empty(),
            Py::Dict(d) => !d.is_empty(),
        }
    }
}

/// Parses one Python literal (dict, list, tuple, string, number, None,
/// True, False); `#` comments are skipped.
fn parse_py(text: &str) -> Result<Py, String> {
    let mut p = PyParser {
        s: text.as_bytes(),
        i: 0,
    };
    let v = p.value()?;
    p.ws();
    if p.i < p.s.len() {
        return Err(format!("unexpected {:?} after the value", p.rest()));
    }
    Ok(v)
}

struct PyParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl PyParser<'_> {
    fn rest(&self) -> String {
        String::from_utf8_lossy(&self.s[self.i..self.s.len().min(self.i + 20)]).into_owned()
    }
    fn ws(&mut self) {
        while self.i < self.s.len() {
            match self.s[self.i] {
                b' ' | b'\t' | b'\n' | b'\r' => self.i += 1,
                b'#' => {
                    while self.i < self.s.len() && self.s[self.i] != b'\n' {
                        self.i += 1;
                    }
                }
                _ => break,
            }
        }
    }
    fn value(&mut self) -> Result<Py, String> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut d = Vec::new();
                loop {
                    self.ws();
                    if self.s.get(self.i) == Some(&b'}') {
                        self.i += 1;
                        return Ok(Py::Dict(d));
                    }
                    let k = self.value()?;
                    self.ws();
                    if self.s.get(self.i) != Some(&b':') {
                        return Err(format!("expected ':' in a dict at {:?}", self.rest()));
                    }
                    self.i += 1;
                    let v = self.value()?;
                    d.push((k, v));
                    self.sep(b'}')?;
                }
            }
            Some(&open @ (b'[' | b'(')) => {
                let close = if open == b'[' { b']' } else { b')' };
                self.i += 1;
                let mut l = Vec::new();
                loop {
                    self.ws();
                    if self.s.get(self.i) == Some(&close) {
                        self.i += 1;
                        return Ok(Py::List(l));
                    }
                    l.push(self.value()?);
                    self.sep(close)?;
                }
            }
            Some(&q @ (b'\'' | b'"')) => {
                self.i += 1;
                let mut out = Vec::new();
                while let Some(&c) = self.s.get(self.i) {
                    self.i += 1;
                    match c {
                        b'\\' => {
                            let e = self.s.get(self.i).copied().unwrap_or(b'\\');
                            self.i += 1;
                            out.push(match e {
                                b'n' => b'\n',
                                b't' => b'\t',
                                other => other,
                            });
                        }
                        c if c == q => {
                            return Ok(Py::Str(String::from_utf8_lossy(&out).into_owned()))
                        }
                        c => out.push(c),
                    }
                }
                Err("a string is not closed".into())
            }
            Some(_) => {
                let start = self.i;
                while self.s.get(self.i).is_some_and(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'_')
                }) {
                    self.i += 1;
                }
                let word = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                match word {
                    "None" => Ok(Py::None),
                    "True" => Ok(Py::Bool(true)),
                    "False" => Ok(Py::Bool(false)),
                    w => w
                        .parse()
                        .map(Py::Num)
                        .map_err(|_| format!("cannot read {:?}", self.rest_from(start))),
                }
            }
            None => Err("a value is missing".into()),
        }
    }
    fn rest_from(&self, start: usize) -> String {
        String::from_utf8_lossy(&self.s[start..self.s.len().min(start + 20)]).into_owned()
    }
    /// After an item: `,` or the closing bracket.
    fn sep(&mut self, close: u8) -> Result<(), String> {
        self.ws();
        match self.s.get(self.i) {
            Some(b',') => {
                self.i += 1;
                Ok(())
            }
            Some(c) if *c == close => Ok(()),
            _ => Err(format!(
                "expected ',' or '{}' at {:?}",
                close as char,
                self.rest()
            )),
        }
    }
}

/// An INI file: sections of `key = value`, values continued on indented
/// lines, `;` and `#` comment lines.
/// A section: its name, its settings, the line it starts on.
type Section = (String, BTreeMap<String, String>, usize);

fn parse_ini(text: &str) -> Result<Vec<Section>, ImportError> {
    let mut out: Vec<Section> = Vec::new();
    let mut last_key: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let (Some((_, sec, _)), Some(k)) = (out.last_mut(), &last_key) {
                if let Some(v) = sec.get_mut(k) {
                    v.push('\n');
                    v.push_str(trimmed);
                    continue;
                }
            }
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            out.push((name.trim().to_owned(), BTreeMap::new(), n + 1));
            last_key = None;
            continue;
        }
        let Some((k, v)) = trimmed.split_once(['=', ':']) else {
            return Err(ImportError {
                line: n + 1,
                reason: format!("expected `key = value`: {trimmed:?}"),
            });
        };
        let Some((_, sec, _)) = out.last_mut() else {
            return Err(ImportError {
                line: n + 1,
                reason: "a setting before any [section]".into(),
            });
        };
        let k = k.trim().to_lowercase();
        sec.insert(k.clone(), v.trim().to_owned());
        last_key = Some(k);
    }
    Ok(out)
}

/// A mqttwarn format string (`{name}`, `{name:>10}`, `{{` and `}}` for
/// braces) as a template.
pub fn convert_format(f: &str) -> String {
    let mut out = String::new();
    let mut chars = f.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let field: String = chars.by_ref().take_while(|c| *c != '}').collect();
                let name = field.split([':', '!']).next().unwrap_or("").trim();
                let expr = match name {
                    // The normalized event's own fields (a CloudEvents
                    // payload's attributes, as mqttwarn saw them).
                    "topic" | "payload" | "message" | "id" | "source" | "type" | "time"
                    | "subject" | "retained" => name.to_owned(),
                    "_dtiso" | "_ltiso" | "_dtepoch" | "_dthhmm" | "_dthhmmss" => {
                        "received".to_owned()
                    }
                    "title" => "rule".to_owned(),
                    n => format!("data.{n}"),
                };
                out.push_str(&format!("{{{{ {expr} }}}}"));
            }
            c => out.push(c),
        }
    }
    out
}

/// `[sh, -c, script, ...]` (any common shell, by path or name).
fn is_shell_c(argv: &[&str]) -> bool {
    let name = argv
        .first()
        .map(|p| p.rsplit('/').next().unwrap_or(p))
        .unwrap_or("");
    matches!(
        name,
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "ash" | "busybox"
    ) && argv
        .get(1)
        .is_some_and(|a| a.starts_with('-') && a.contains('c'))
}

fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn py(v: &str, line: usize) -> Result<Py, ImportError> {
    parse_py(v).map_err(|reason| ImportError { line, reason })
}

/// Converts a mqttwarn.ini to our TOML, with comments on what was left out.
pub fn convert(text: &str) -> Result<String, ImportError> {
    let sections = parse_ini(text)?;
    let mut out = String::from("# Converted from a mqttwarn.ini by `firehose-notify import`.\n# Check every target, then run: firehose-notify --check-config --config THIS_FILE\n\n");
    let mut notes = Vec::new();
    let defaults = sections
        .iter()
        .find(|(n, _, _)| n == "defaults")
        .map(|(_, s, l)| (s.clone(), *l))
        .unwrap_or_default();
    let (d, dl) = defaults;
    let val = |s: &BTreeMap<String, String>,
               k: &str,
               l: usize|
     -> Result<Option<Py>, ImportError> { s.get(k).map(|v| py(v, l)).transpose() };
    let host = val(&d, "hostname", dl)?
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "localhost".into());
    let port = match val(&d, "port", dl)? {
        Some(Py::Num(n)) => n as u16,
        _ => 1883,
    };
    out.push_str(&format!(
        "[broker]\nurl = {}\n",
        q(&format!("mqtt://{host}:{port}"))
    ));
    if let Some(Py::Str(u)) = val(&d, "username", dl)? {
        out.push_str(&format!("username = {}\n", q(&u)));
    }
    if let Some(Py::Str(p)) = val(&d, "password", dl)? {
        out.push_str(&format!(
            "password = {}  # better: password_file, mode 0600\n",
            q(&p)
        ));
    }
    if let Some(Py::Str(c)) = val(&d, "clientid", dl)? {
        out.push_str(&format!("client_id = {}\n", q(&c)));
    }
    if let Some(c) = val(&d, "cleansession", dl)? {
        out.push_str(&format!("session = {}\n", !c.truthy()));
    }
    let skip_retained = val(&d, "skipretained", dl)?.map(|v| v.truthy());
    let mut known_targets = Vec::new();
    for (name, sec, line) in &sections {
        let Some(service) = name.strip_prefix("config:") else {
            continue;
        };
        let Some(targets) = sec.get("targets") else {
            continue;
        };
        let Py::Dict(entries) = py(targets, *line)? else {
            notes.push(format!("[{name}]: targets is not a dict; skipped"));
            continue;
        };
        for (k, v) in entries {
            let Some(tname) = k.as_str() else { continue };
            let full = format!("{service}:{tname}");
            let args = match v {
                Py::List(l) => l,
                other => vec![other],
            };
            let s = |i: usize| args.get(i).and_then(Py::as_str).map(str::to_owned);
            let body = match service {
                "log" => "type = \"log\"\n".to_owned(),
                "file" => match s(0) {
                    Some(path) => format!("type = \"file\"\npath = {}\n", q(&path)),
                    None => {
                        notes.push(format!("{full}: no file path; skipped"));
                        continue;
                    }
                },
                "execute" => {
                    let words: Vec<&str> = args.iter().filter_map(Py::as_str).collect();
                    let shell = is_shell_c(&words);
                    let argv: Vec<String> = words
                        .iter()
                        .enumerate()
                        .map(|(i, a)| {
                            if shell && i >= 2 && a.contains("[TEXT]") {
                                // Inside a shell script the event's text
                                // would be code: it goes in through the
                                // environment, quoted.
                                notes.push(format!("{full}: [TEXT] inside a shell script became \"$FIREHOSE_MESSAGE\" (the message from the environment, quoted), so an event's text is never run as shell code"));
                                q(&a.replace("[TEXT]", "\"$FIREHOSE_MESSAGE\""))
                            } else {
                                q(&a.replace("[TEXT]", "{{ message }}"))
                            }
                        })
                        .collect();
                    format!("type = \"exec\"\nargv = [{}]\n", argv.join(", "))
                }
                "smtp" => {
                    let server = val(sec, "server", *line)?
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_else(|| "localhost:25".into());
                    let (h, p) = server.split_once(':').unwrap_or((&server, "25"));
                    let starttls = val(sec, "starttls", *line)?.is_some_and(|v| v.truthy());
                    let sender = val(sec, "sender", *line)?
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_else(|| "firehose-notify@localhost".into());
                    let to: Vec<String> = args.iter().filter_map(Py::as_str).map(q).collect();
                    let mut t = format!(
                        "type = \"smtp\"\nhost = {}\nport = {}\nsecurity = {}\nfrom = {}\nto = [{}]\n",
                        q(h),
                        p.parse::<u16>().unwrap_or(25),
                        q(if starttls { "starttls" } else { "none" }),
                        q(&sender),
                        to.join(", ")
                    );
                    if let Some(Py::Str(u)) = val(sec, "username", *line)? {
                        t.push_str(&format!("username = {}\n", q(&u)));
                    }
                    if let Some(Py::Str(pw)) = val(sec, "password", *line)? {
                        t.push_str(&format!("password = {}\n", q(&pw)));
                    }
                    t
                }
                "http" => {
                    let method = s(0).unwrap_or_else(|| "post".into()).to_uppercase();
                    let Some(url) = s(1) else {
                        notes.push(format!("{full}: no URL; skipped"));
                        continue;
                    };
                    if method == "GET" {
                        notes.push(format!("{full}: GET with query parameters is not supported; converted to a POST of the parameters as JSON"));
                    }
                    let mut t =
                        format!("type = \"webhook\"\nurl = {}\nmethod = \"POST\"\n", q(&url));
                    if let Some(Py::Dict(params)) = args.get(2) {
                        let fields: Vec<String> = params
                            .iter()
                            .filter_map(|(k, v)| {
                                Some(format!(
                                    "{}: {}",
                                    serde_json::Value::from(k.as_str()?),
                                    serde_json::Value::from(convert_format(v.as_str()?))
                                ))
                            })
                            .collect();
                        t.push_str(&format!(
                            "body = {}\nheaders = {{ \"content-type\" = \"application/json\" }}\n",
                            q(&format!("{{{}}}", fields.join(", ")))
                        ));
                    }
                    if !matches!(args.get(3), None | Some(Py::None)) {
                        notes.push(format!("{full}: HTTP authentication is not converted; add an authorization header"));
                    }
                    t
                }
                "mqtt" => {
                    let Some(topic) = s(0) else {
                        notes.push(format!("{full}: no topic; skipped"));
                        continue;
                    };
                    let qos = match args.get(1) {
                        Some(Py::Num(n)) if *n >= 1.0 => 1,
                        _ => 0,
                    };
                    let retain = args.get(2).is_some_and(Py::truthy);
                    let mut t = format!(
                        "type = \"mqtt\"\ntopic = {}\nqos = {qos}\nretain = {retain}\n",
                        q(&convert_format(&topic))
                    );
                    if let Some(Py::Str(h)) = val(sec, "hostname", *line)? {
                        let p = match val(sec, "port", *line)? {
                            Some(Py::Num(n)) => n as u16,
                            _ => 1883,
                        };
                        t.push_str(&format!("url = {}\n", q(&format!("mqtt://{h}:{p}"))));
                    }
                    t
                }
                other => {
                    notes.push(format!(
                        "{full}: service {other:?} has no equivalent; skipped"
                    ));
                    continue;
                }
            };
            out.push_str(&format!("\n[[target]]\nname = {}\n{body}", q(&full)));
            known_targets.push(full);
        }
    }
    for (name, sec, line) in &sections {
        if name == "defaults" || name.starts_with("config:") || name.starts_with("failover") {
            continue;
        }
        let Some(targets) = sec.get("targets") else {
            notes.push(format!("[{name}] (line {line}): no targets; skipped"));
            continue;
        };
        let names: Vec<String> = targets
            .split([',', '\n'])
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| t.trim_matches(['\'', '"']).to_owned())
            .collect();
        let (ok, missing): (Vec<String>, Vec<String>) =
            names.into_iter().partition(|t| known_targets.contains(t));
        for m in &missing {
            notes.push(format!(
                "[{name}]: target {m} was not converted; dropped from the rule"
            ));
        }
        if ok.is_empty() {
            notes.push(format!(
                "[{name}] (line {line}): no convertible targets; skipped"
            ));
            continue;
        }
        let topic = sec.get("topic").cloned().unwrap_or_else(|| name.clone());
        out.push_str(&format!(
            "\n[[rule]]\nname = {}\ntopics = [{}]\n",
            q(name),
            q(&topic)
        ));
        let targets: Vec<String> = ok.iter().map(|t| q(t)).collect();
        out.push_str(&format!("targets = [{}]\n", targets.join(", ")));
        let format = sec.get("format").map(|f| {
            py(f, *line)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| f.clone())
        });
        out.push_str(&format!(
            "template = {}\n",
            q(&format
                .map(|f| convert_format(&f))
                .unwrap_or_else(|| "{{ payload }}".into()))
        ));
        if let Some(s) = skip_retained {
            out.push_str(&format!("skip_retained = {s}\n"));
        }
        for unsupported in ["filter", "datamap", "alldata", "priority", "title", "image"] {
            if sec.contains_key(unsupported) {
                notes.push(format!("[{name}]: `{unsupported}` is not converted (use `where`, a jq expression, or the template)"));
            }
        }
    }
    if !notes.is_empty() {
        out.push_str("\n# Not converted:\n");
        for n in notes {
            out.push_str(&format!("# - {n}\n"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_literals() {
        let v =
            parse_py("{ 'a': ['x', \"y\", 1, None, True], # note\n 'b': ('u', 'p'), }").unwrap();
        let Py::Dict(d) = v else { panic!() };
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[0].1,
            Py::List(vec![
                Py::Str("x".into()),
                Py::Str("y".into()),
                Py::Num(1.0),
                Py::None,
                Py::Bool(true)
            ])
        );
        assert!(parse_py("{'a': ").is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(
            convert_format("{topic}: {name:>10} at {_dtiso} {{literal}}"),
            "{{ topic }}: {{ data.name }} at {{ received }} {literal}"
        );
    }

    #[test]
    fn text_in_a_shell_script_comes_from_the_environment_quoted() {
        let ini = "[defaults]\nlaunch = execute\n\n[config:execute]\ntargets = {\n  'log': ['/bin/sh', '-c', 'echo [TEXT] >> /tmp/log'],\n  'plain': ['/usr/bin/logger', '[TEXT]'],\n  }\n\n[gerrit/#]\ntargets = execute:log, execute:plain\n";
        let out = convert(ini).unwrap();
        assert!(
            out.contains(r#"argv = ["/bin/sh", "-c", 'echo "$FIREHOSE_MESSAGE" >> /tmp/log']"#),
            "{out}"
        );
        assert!(
            out.contains(r#"argv = ["/usr/bin/logger", "{{ message }}"]"#),
            "an argument of its own is one argv entry, no shell: {out}"
        );
        assert!(out.contains("never run as shell code"), "warned: {out}");
    }
}
