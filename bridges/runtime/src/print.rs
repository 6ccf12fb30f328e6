//! `--print json|yaml`: events written to stdout instead of the broker,
//! for an operator checking what a bridge would publish.

use std::io::Write;

use crate::runtime::PrintFormat;
use crate::source::Event;

#[derive(serde::Serialize)]
struct Printed<'a> {
    topic: &'a str,
    retain: bool,
    /// The payload as JSON when it is JSON, else as text.
    payload: serde_json::Value,
}

/// Prints one event and acknowledges it.
pub fn event(format: PrintFormat, ev: Event) {
    let payload = serde_json::from_slice(&ev.payload).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&ev.payload).into_owned())
    });
    let p = Printed {
        topic: &ev.topic,
        retain: ev.retain,
        payload,
    };
    let text = match format {
        PrintFormat::Json => serde_json::to_string(&p)
            .map(|s| s + "\n")
            .unwrap_or_default(),
        PrintFormat::Yaml => serde_yaml::to_string(&p)
            .map(|s| format!("---\n{s}"))
            .unwrap_or_default(),
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    // Printed is delivered: the source may ack its upstream.
    if let Some(f) = ev.finalizer {
        f.delivered();
    }
}
