//! Websocket listener: subprotocol negotiation exactly as RFC 6455 clients
//! expect, MQTT packets split across or packed into binary frames, the
//! HTTP endpoints, and handshake timeouts that never block other clients.

use firehose_testkit::logins::PUBLISHER;
use firehose_testkit::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};

fn upgrade_response(b: &BrokerProc, path: &str, protocols: Option<&str>) -> String {
    let mut s = TcpStream::connect(b.ws.unwrap()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocols {
        req.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = [0u8; 2048];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn subprotocol_is_echoed_exactly() {
    let b = BrokerProc::start(&[]);
    let r = upgrade_response(&b, "/mqtt", Some("mqtt"));
    assert!(r.starts_with("HTTP/1.1 101"), "{r}");
    assert!(r.contains("Sec-WebSocket-Protocol: mqtt\r\n"), "{r}");
    assert!(
        r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{r}"
    );
    let r = upgrade_response(&b, "/", Some("mqttv3.1"));
    assert!(r.contains("Sec-WebSocket-Protocol: mqttv3.1\r\n"), "{r}");
    let r = upgrade_response(&b, "/mqtt", Some("foo, mqttv3.1"));
    assert!(r.contains("Sec-WebSocket-Protocol: mqttv3.1\r\n"), "{r}");
    let r = upgrade_response(&b, "/mqtt", None);
    assert!(r.starts_with("HTTP/1.1 101"), "{r}");
    assert!(
        !r.to_lowercase().contains("sec-websocket-protocol"),
        "none asked, none sent: {r}"
    );
    let r = upgrade_response(&b, "/mqtt", Some("graphql-ws"));
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = upgrade_response(&b, "/elsewhere", Some("mqtt"));
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
}

#[test]
fn http_endpoints() {
    let b = BrokerProc::start(&[]);
    let ws = b.ws.unwrap();
    let (s, body) = http_get(ws, "/healthz");
    assert_eq!(s, 200);
    assert!(body.starts_with("ok firehose-broker"));
    let (s, body) = http_get(ws, "/metrics");
    assert_eq!(s, 200);
    assert!(body.contains("# TYPE firehose_broker_clients_connected gauge"));
    assert!(body.contains("firehose_broker_dropped_total{reason=\"queue_full\"} 0"));
    let (s, body) = http_get(ws, "/");
    assert_eq!(s, 200);
    assert!(body.contains("<title>Firehose: live</title>"));
    assert!(!body.contains("<script src"), "no outside scripts");
    let (s, body) = http_get(ws, "/status");
    assert_eq!(s, 200);
    assert!(body.contains("<title>Firehose broker</title>"));
    let (s, body) = http_get(ws, "/stats.json");
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["$SYS/broker/version"]
        .as_str()
        .unwrap()
        .starts_with("firehose-broker"));
    assert_eq!(http_get(ws, "/nope").0, 404);
}

fn ws_client(b: &BrokerProc, proto: &str) -> tungstenite::WebSocket<TcpStream> {
    let s = TcpStream::connect(b.ws.unwrap()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = format!("ws://{}/mqtt", b.ws.unwrap())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", proto.parse().unwrap());
    let (ws, resp) = tungstenite::client(req, s).unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], proto);
    ws
}

fn read_mqtt(
    b: &BrokerProc,
    ws: &mut tungstenite::WebSocket<TcpStream>,
    acc: &mut Vec<u8>,
    want: usize,
) {
    while acc.len() < want {
        match ws.read() {
            Ok(Message::Binary(m)) => acc.extend_from_slice(&m),
            other => panic!(
                "unexpected {other:?} after {acc:?}; broker logs:\n{}",
                b.logs()
            ),
        }
    }
}

#[test]
fn packets_split_and_packed_across_frames() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProc::with_users(dir.path(), &[PUBLISHER], &[]);
    // Subscriber: CONNECT split over three frames, SUBSCRIBE in the same
    // frame as the CONNECT's tail.
    let mut sub = ws_client(&b, "mqtt");
    let c = connect(4, "ws-sub", 60, true, None);
    let s = subscribe(4, 1, "ws/#", 0);
    sub.send(Message::binary(c[..3].to_vec())).unwrap();
    sub.send(Message::binary(c[3..7].to_vec())).unwrap();
    sub.send(Message::binary([&c[7..], &s[..]].concat()))
        .unwrap();
    let mut acc = Vec::new();
    read_mqtt(&b, &mut sub, &mut acc, 4 + 5);
    assert_eq!(&acc[..4], &[0x20, 2, 0, 0], "CONNACK");
    assert_eq!(acc[4], 0x90, "SUBACK");
    // Publisher over ws asking for mqttv3.1, with an MQTT 3.1 CONNECT, two
    // publishes packed in one frame.
    let mut publ = ws_client(&b, "mqttv3.1");
    let c = connect(3, "ws-pub", 60, true, Some(PUBLISHER));
    let p1 = publish(3, b"ws/a", b"one", 0, 0);
    let p2 = publish(3, b"ws/b", b"two", 0, 0);
    publ.send(Message::binary([c, p1.clone(), p2.clone()].concat()))
        .unwrap();
    let mut acc2 = Vec::new();
    read_mqtt(&b, &mut publ, &mut acc2, 4);
    assert_eq!(&acc2[..4], &[0x20, 2, 0, 0]);
    let mut got = Vec::new();
    read_mqtt(&b, &mut sub, &mut got, p1.len() + p2.len());
    assert_eq!(got, [p1, p2].concat());
}

#[test]
fn idle_sockets_do_not_block_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("b.toml");
    std::fs::write(&cfg, "[limits]\nhandshake_timeout_secs = 1\n").unwrap();
    let b = BrokerProc::start(&["--config", cfg.to_str().unwrap()]);
    // Idle sockets on every listener: no bytes at all.
    let idle: Vec<TcpStream> = (0..5)
        .flat_map(|_| {
            [
                TcpStream::connect(b.ws.unwrap()).unwrap(),
                TcpStream::connect(b.mqtt()).unwrap(),
            ]
        })
        .collect();
    // Others are served meanwhile.
    let mut ws = ws_client(&b, "mqtt");
    ws.send(Message::binary(connect(4, "w", 60, true, None)))
        .unwrap();
    let mut acc = Vec::new();
    read_mqtt(&b, &mut ws, &mut acc, 4);
    assert_eq!(&acc[..4], &[0x20, 2, 0, 0]);
    let (_r, ack) = Raw::connect(b.mqtt(), 4, "t", None);
    assert_eq!(ack, vec![0, 0]);
    // The idle ones are closed by the handshake timeout.
    for mut s in idle {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    }
    // Counted once each (the count follows the close by a moment).
    b.wait_metric(
        "firehose_broker_dropped_total{reason=\"handshake_timeout\"}",
        10,
    );
    assert_eq!(b.dropped("handshake_timeout"), 10);
}
