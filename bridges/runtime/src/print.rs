//! `--print json|yaml`: a sink that writes events to stdout instead of the
//! broker, for an operator checking what a bridge would publish.
//!
//! It settles finalizers by the broker sink's contract: an event is
//! delivered once it is written (and flushed), and anything else fails its
//! batch. So `--print` into a closed pipe (`| head -1`) leaves what it
//! could not print upstream (a RabbitMQ message is requeued, a mail stays
//! unseen), and the bridge stops with an error naming stdout.

use std::io::Write;

use crate::source::Event;

/// `--print`: write normalized events to stdout instead of publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrintFormat {
    /// One JSON object per line.
    Json,
    /// One YAML document per event.
    Yaml,
}

impl std::str::FromStr for PrintFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(PrintFormat::Json),
            "yaml" => Ok(PrintFormat::Yaml),
            o => Err(format!("--print {o:?}: use json or yaml")),
        }
    }
}

#[derive(serde::Serialize)]
struct Printed<'a> {
    topic: &'a str,
    retain: bool,
    /// The payload as JSON when it is JSON, else as text.
    payload: serde_json::Value,
}

/// The text `--print` writes for one event.
fn render(format: PrintFormat, ev: &Event) -> String {
    let payload = serde_json::from_slice(&ev.payload).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&ev.payload).into_owned())
    });
    let p = Printed {
        topic: &ev.topic,
        retain: ev.retain,
        payload,
    };
    // A map of strings, a bool and a JSON value: both always serialize.
    match format {
        PrintFormat::Json => serde_json::to_string(&p)
            .map(|s| s + "\n")
            .unwrap_or_default(),
        PrintFormat::Yaml => serde_yaml::to_string(&p)
            .map(|s| format!("---\n{s}"))
            .unwrap_or_default(),
    }
}

/// Writes one event to `out`. Written and flushed: its finalizer says
/// delivered. Not: the finalizer is dropped, which fails its batch, and
/// the error is returned (the sink stops).
pub fn event(format: PrintFormat, ev: Event, out: &mut impl Write) -> std::io::Result<()> {
    let text = render(format, &ev);
    out.write_all(text.as_bytes())?;
    out.flush()?;
    if let Some(f) = ev.finalizer {
        f.delivered();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::{Acks, BatchStatus};

    /// A stdout whose reader went away.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn ev(batch: &crate::ack::Batch) -> Event {
        Event {
            topic: "gerrit/x".into(),
            payload: bytes::Bytes::from_static(b"{\"a\":1}"),
            retain: false,
            finalizer: Some(batch.finalizer()),
        }
    }

    #[tokio::test]
    async fn printed_is_delivered_and_a_closed_stdout_fails_the_batch() {
        let mut acks = Acks::new();
        let mut out = Vec::new();
        event(PrintFormat::Json, ev(&acks.batch("ok")), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"topic\":\"gerrit/x\",\"retain\":false,\"payload\":{\"a\":1}}\n"
        );
        assert_eq!(acks.next().await, ("ok", BatchStatus::Delivered));
        let e = event(PrintFormat::Yaml, ev(&acks.batch("lost")), &mut ClosedPipe).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
        assert_eq!(acks.next().await, ("lost", BatchStatus::Failed));
    }
}
