// Shared by the examples: `[URL] [--count N]` from the command line.
// (Included with `include!`, so each example stays one runnable file.)

/// The broker URL (default `mqtt://127.0.0.1:1883`) and how many lines to
/// print before exiting (default: forever).
fn args() -> (String, Option<usize>) {
    let mut url = "mqtt://127.0.0.1:1883".to_owned();
    let mut count = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--count" => count = it.next().and_then(|n| n.parse().ok()),
            _ => url = a,
        }
    }
    (url, count)
}
