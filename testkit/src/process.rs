//! Running things: this workspace's binaries, external tools (with an
//! install hint when missing), and commands under a time limit.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bound for anything a test waits on. Never a timing assertion:
/// only a guard so a broken test ends instead of hanging.
pub const WAIT: Duration = Duration::from_secs(20);

/// The same guard for a whole job run by a real tool (an ansible playbook
/// with async tasks and an unreachable host: some 10 s on an idle 2-core
/// machine, past [`WAIT`] on a busy one).
pub const JOB_WAIT: Duration = Duration::from_secs(180);

/// Polls `check` every `every` until it gives a value, and panics with
/// `what()` once `limit` has passed. The one way tests wait: on the thing
/// itself (a message, a port, a log line, a count), never on the clock.
pub fn poll_every<T>(
    every: Duration,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
    what: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {}", what());
        }
        std::thread::sleep(every);
    }
}

/// [`poll_every`] at 20 ms.
pub fn poll<T>(
    limit: Duration,
    check: impl FnMut() -> Option<T>,
    what: impl FnOnce() -> String,
) -> T {
    poll_every(Duration::from_millis(20), limit, check, what)
}

/// Waits until `cond` holds (see [`poll_every`]).
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool, what: impl FnOnce() -> String) {
    poll(limit, || cond().then_some(()), what)
}

/// A binary of this workspace, from the target directory the tests run
/// from (`cargo test --workspace` builds every binary first).
pub fn bin(name: &str) -> PathBuf {
    // A benchmark points here at its own (release) directory.
    if let Some(dir) = std::env::var_os("FIREHOSE_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary inside target/<profile>/deps");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace` first (./scripts/test does)",
        p.display()
    );
    p
}

/// The path of a required external tool, or a panic naming the package.
pub fn require(tool: &str, package: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!("{tool} not found: install it with `apt-get install {package}` (the README test command does this)");
}

/// python3 with paho-mqtt importable (the test command pip-installs it),
/// or a panic that says how to get it.
pub fn require_paho() -> PathBuf {
    let python = require("python3", "python3");
    let probe = run(Command::new(&python).args(["-c", "import paho.mqtt"]));
    assert!(
        probe.status.success(),
        "paho-mqtt is not installed: run `pip install paho-mqtt==2.2.0` (./scripts/test does)"
    );
    python
}

/// Runs a client script that prints `ok <check>` for each check it passed
/// (and `FAIL <why>` with a non-zero exit otherwise); asserts it succeeded
/// and printed every one of `checks`. Returns its standard output.
pub fn run_checks(cmd: &mut Command, checks: &[&str]) -> String {
    let out = run(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in checks {
        assert!(
            stdout.contains(&format!("ok {check}\n")),
            "{check}: {stdout}"
        );
    }
    stdout
}

/// Runs a command with a time limit ([`WAIT`]) and returns its output.
pub fn run(cmd: &mut Command) -> Output {
    run_within(cmd, WAIT)
}

/// Runs a whole job ([`JOB_WAIT`]) and returns its output.
pub fn run_job(cmd: &mut Command) -> Output {
    run_within(cmd, JOB_WAIT)
}

fn run_within(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (out, killed) = finish(child, limit);
    assert!(
        !killed,
        "{cmd:?} did not finish in {limit:?}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command to the end: whether it succeeded, and its stdout and
/// stderr together (what an operator reads).
pub fn outcome(cmd: &mut Command) -> (bool, String) {
    let out = run(cmd);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Waits up to `limit` for `child` to exit, reading its stdout and stderr
/// meanwhile (a full pipe would block it forever), and kills it at the
/// limit. Returns its output and whether it had to be killed.
pub fn finish(mut child: Child, limit: Duration) -> (Output, bool) {
    fn drain<R: std::io::Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let mut killed = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            killed = true;
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    (output, killed)
}

/// A child process whose stderr is kept line by line (for `wait_log`) and
/// whose stdout is kept too; killed on drop.
pub struct Proc {
    name: String,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    /// Every stderr line as it arrives, for start-up parsing.
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    /// Waits until this server accepts TCP connections on
    /// `127.0.0.1:port`, showing its logs if it never does.
    pub fn wait_listening(&self, port: u16) {
        wait_until(
            WAIT,
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            || format!("{} to listen on {port}: {}", self.name, self.logs()),
        );
    }

    /// Spawns `cmd` (stdin null, stdout and stderr captured).
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (err, out) = (child.stderr.take(), child.stdout.take());
        let l2 = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err.expect("stderr"))
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line.clone());
                l2.lock().unwrap().push(line);
            }
        });
        let o2 = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out.expect("stdout"))
                .lines()
                .map_while(Result::ok)
            {
                o2.lock().unwrap().push(line);
            }
        });
        Proc {
            name: name.to_owned(),
            child,
            logs,
            stdout,
            lines: rx,
        }
    }

    /// Everything it logged (stderr) so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Everything it printed on stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// How many stderr lines contain `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until a stderr line contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        self.wait_log_count(needle, 1)
    }

    /// Waits until `n` stderr lines contain `needle`.
    pub fn wait_log_count(&self, needle: &str, n: usize) {
        wait_until(
            WAIT,
            || self.count_log(needle) >= n,
            || {
                format!(
                    "{}: {n} log lines with {needle:?}; logs:\n{}",
                    self.name,
                    self.logs()
                )
            },
        );
    }

    /// The address a bridge's `--metrics 127.0.0.1:0` bound, from its
    /// "metrics listening" log line (waiting for it).
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        poll(
            WAIT,
            || {
                self.logs()
                    .lines()
                    .find(|l| l.contains("metrics listening"))
                    .and_then(|l| l.split("addr=").nth(1))
                    .and_then(|a| a.split_whitespace().next())
                    .and_then(|a| a.parse().ok())
            },
            || {
                format!(
                    "{} to log its metrics address; logs:\n{}",
                    self.name,
                    self.logs()
                )
            },
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (TERM, HUP, KILL, ...).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
    }

    /// The exit status if the process has ended, else `None`.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let name = self.name.clone();
        let logs = self.logs.clone();
        let child = &mut self.child;
        poll(
            WAIT,
            || child.try_wait().expect("try_wait"),
            || format!("{name} to exit; logs:\n{}", logs.lock().unwrap().join("\n")),
        )
    }

    /// Resident memory, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test shows what each process it ran said last.
        if std::thread::panicking() {
            let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
            let tail = &logs[logs.len().saturating_sub(60)..];
            eprintln!("--- last {} log lines of {} ---", tail.len(), self.name);
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

/// Writes a file only its owner may read (mode 0600), as password and key
/// files must be.
pub fn private_file(path: &Path, contents: &str) -> PathBuf {
    std::fs::write(path, contents).expect("write private file");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 0600");
    path.to_owned()
}

/// The JS drivers' folder (`broker/tests/js`: MQTT.js and playwright-core
/// from its one `npm ci`), with node present; fails with the command that
/// installs what is missing.
pub fn js_drivers() -> PathBuf {
    require("node", "nodejs");
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("../broker/tests/js");
    assert!(
        js.join("node_modules/playwright-core").is_dir() && js.join("node_modules/mqtt").is_dir(),
        "playwright-core and MQTT.js are not installed: run `npm ci --prefix {}` (./scripts/test does)",
        js.display()
    );
    js
}
