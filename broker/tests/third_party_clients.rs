//! The broker driven by the clients people really use, beyond Debian's
//! mosquitto tools: paho-mqtt (Python) and MQTT.js (Node) over websockets,
//! MQTT.js over wss, rumqttc over TCP and websockets, and mosquitto_sub/pub
//! against a TLS listener that requires client certificates.
//!
//! `./scripts/test` installs paho-mqtt (pip) and MQTT.js (`npm ci` in
//! `broker/tests/js`); a missing one fails with the command that installs it.

use firehose_testkit::logins::PUBLISHER;
use firehose_testkit::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn with_users(dir: &Path, extra: &[&str]) -> BrokerProc {
    BrokerProc::with_users(dir, &[PUBLISHER], extra)
}

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// MQTT.js's folder, failing with the install command when it is missing.
fn mqtt_js() -> PathBuf {
    require("node", "nodejs");
    let js = tests_dir().join("js");
    assert!(
        js.join("node_modules/mqtt").is_dir(),
        "MQTT.js is not installed: run `npm ci --prefix {}` (./scripts/test does)",
        js.display()
    );
    js
}

/// Runs `roundtrip.mjs` and returns its JSON report.
fn mqtt_js_roundtrip(url: &str, mode: &str, ca: Option<&str>) -> serde_json::Value {
    let js = mqtt_js();
    let mut cmd = Command::new("node");
    cmd.current_dir(&js)
        .arg("roundtrip.mjs")
        .args([url, mode, PUBLISHER.0, PUBLISHER.1]);
    if let Some(ca) = ca {
        cmd.arg(ca);
    }
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "MQTT.js {mode} on {url} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("roundtrip.mjs prints one JSON line")
}

fn check_roundtrip(report: &serde_json::Value, mode: &str) {
    assert_eq!(report["topic"], format!("js/{mode}"));
    assert_eq!(report["payload"], format!("hello over {mode}"));
    // Both connections negotiated exactly what they asked for ("" = none).
    let want = if mode == "none" { "" } else { mode };
    assert_eq!(
        report["negotiated"],
        serde_json::json!([want, want]),
        "{report}"
    );
}

#[test]
fn mqtt_js_over_ws_each_subprotocol() {
    let dir = tempfile::tempdir().unwrap();
    let b = with_users(dir.path(), &[]);
    let ws = b.ws.expect("ws listener");
    for mode in ["mqtt", "mqttv3.1", "none"] {
        let report = mqtt_js_roundtrip(&format!("ws://{ws}/mqtt"), mode, None);
        check_roundtrip(&report, mode);
    }
    // The same on "/" as on "/mqtt".
    check_roundtrip(
        &mqtt_js_roundtrip(&format!("ws://{ws}/"), "mqtt", None),
        "mqtt",
    );
}

#[test]
fn mqtt_js_over_wss_each_subprotocol() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let b = with_users(
        dir.path(),
        &[
            "--wss",
            "127.0.0.1:0",
            "--cert",
            &path_str(dir.path(), "server.pem"),
            "--key",
            &path_str(dir.path(), "server.key"),
        ],
    );
    let wss = b.wss.expect("wss listener");
    let ca = path_str(dir.path(), "ca.pem");
    for mode in ["mqtt", "mqttv3.1", "none"] {
        let report = mqtt_js_roundtrip(
            &format!("wss://localhost:{}/mqtt", wss.port()),
            mode,
            Some(&ca),
        );
        check_roundtrip(&report, mode);
    }
}

#[test]
fn paho_mqtt_python_over_websockets() {
    let python = require_paho();
    let dir = tempfile::tempdir().unwrap();
    let b = with_users(dir.path(), &[]);
    let ws = b.ws.expect("ws listener");
    let out = run(Command::new(&python)
        .arg(tests_dir().join("paho_ws.py"))
        .args([
            "127.0.0.1",
            &ws.port().to_string(),
            PUBLISHER.0,
            PUBLISHER.1,
        ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "paho_ws.py failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("received paho/ws hello from paho"),
        "{stdout}"
    );
    assert!(
        stdout.contains("anonymous publish answered 0x87"),
        "{stdout}"
    );
    assert_eq!(b.dropped("acl_publish"), 1);
}

/// rumqttc subscriber and publisher on one transport; returns what arrived.
async fn rumqttc_roundtrip(
    sub_opts: rumqttc::MqttOptions,
    mut pub_opts: rumqttc::MqttOptions,
) -> Vec<(String, Vec<u8>)> {
    use rumqttc::{AsyncClient, Event, Packet, QoS};
    let (sub, mut sub_loop) = AsyncClient::new(sub_opts, 10);
    sub.subscribe("rumqttc/#", QoS::AtLeastOnce).await.unwrap();
    // Wait for the SUBACK before publishing.
    loop {
        match sub_loop.poll().await {
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                assert_eq!(ack.return_codes.len(), 1);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("subscriber: {e}"),
        }
    }
    pub_opts.set_credentials(PUBLISHER.0, PUBLISHER.1);
    let (publisher, mut pub_loop) = AsyncClient::new(pub_opts, 10);
    for i in 0..3 {
        publisher
            .publish(
                format!("rumqttc/{i}"),
                QoS::AtLeastOnce,
                false,
                vec![i as u8; 3],
            )
            .await
            .unwrap();
    }
    let pub_task = tokio::spawn(async move {
        let mut acked = 0;
        while acked < 3 {
            match pub_loop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    });
    let mut got = Vec::new();
    while got.len() < 3 {
        match sub_loop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => got.push((p.topic, p.payload.to_vec())),
            Ok(_) => {}
            Err(e) => panic!("subscriber: {e}"),
        }
    }
    pub_task.await.unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_over_tcp_and_websockets() {
    let dir = tempfile::tempdir().unwrap();
    let b = with_users(dir.path(), &[]);
    let want: Vec<(String, Vec<u8>)> = (0..3u8)
        .map(|i| (format!("rumqttc/{i}"), vec![i; 3]))
        .collect();
    let tcp = b.mqtt();
    let opts = |id: &str| {
        let mut o = rumqttc::MqttOptions::new(id, tcp.ip().to_string(), tcp.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    };
    let got = tokio::time::timeout(WAIT, rumqttc_roundtrip(opts("rc-sub"), opts("rc-pub")))
        .await
        .expect("rumqttc over TCP finished");
    assert_eq!(got, want);

    let ws = b.ws.expect("ws listener");
    let ws_opts = |id: &str| {
        let mut o = rumqttc::MqttOptions::new(id, format!("ws://{ws}/mqtt"), ws.port());
        o.set_transport(rumqttc::Transport::Ws);
        o.set_keep_alive(Duration::from_secs(30));
        o
    };
    let got = tokio::time::timeout(
        WAIT,
        rumqttc_roundtrip(ws_opts("rcw-sub"), ws_opts("rcw-pub")),
    )
    .await
    .expect("rumqttc over websockets finished");
    assert_eq!(got, want);
}

#[test]
fn client_certificates_required_with_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let tls_listener = TlsListener::new(dir.path());
    let p = |f: &str| path_str(dir.path(), f);
    let ca = p("ca.pem");
    let mut flags = tls_listener.flags();
    flags.extend(["--client-ca", &ca]);
    let b = with_users(dir.path(), &flags);
    let port = b.mqtts.expect("mqtts listener").port().to_string();
    let tls = |with_cert: bool, extra: &[&str]| {
        let mut args: Vec<String> = ["-h", "127.0.0.1", "-p", &port, "--cafile", &p("ca.pem")]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if with_cert {
            args.extend([
                "--cert".into(),
                p("client.pem"),
                "--key".into(),
                p("client.key"),
            ]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let mut sub = Sub::spawn_args(
        &b,
        &tls(true, &["-t", "mtls/#", "-v", "-C", "1", "-W", "15"]),
    );
    b.wait_metric("firehose_broker_subscriptions", 1);
    let out = run(
        Command::new(require("mosquitto_pub", "mosquitto-clients")).args(tls(
            true,
            &[
                "-u",
                PUBLISHER.0,
                "-P",
                PUBLISHER.1,
                "-t",
                "mtls/x",
                "-m",
                "with a client cert",
            ],
        )),
    );
    assert!(out.status.success(), "{out:?}");
    let (code, stdout, _) = sub.output();
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), "mtls/x with a client cert");
    // Without a client certificate the TLS handshake fails; the broker goes on.
    let out = run(Command::new(require("mosquitto_pub", "mosquitto-clients"))
        .args(tls(false, &["-t", "mtls/x", "-m", "no cert"])));
    assert!(
        !out.status.success(),
        "a client without a certificate got in"
    );
    b.wait_metric(
        "firehose_broker_dropped_total{reason=\"handshake_failed\"}",
        1,
    );
    sub = Sub::spawn_args(&b, &tls(true, &["-t", "still/#", "-C", "1", "-W", "15"]));
    b.wait_metric("firehose_broker_subscriptions", 1);
    drop(sub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_and_wills_on_websockets_and_tls() {
    use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, Transport};
    let dir = tempfile::tempdir().unwrap();
    let tls_listener = TlsListener::new(dir.path());
    let b = with_users(dir.path(), &tls_listener.flags());
    // A retained message, published over plain TCP.
    let out = mosquitto_pub(
        &b,
        &[
            "-u",
            PUBLISHER.0,
            "-P",
            PUBLISHER.1,
            "-r",
            "-t",
            "ret/x",
            "-m",
            "kept",
        ],
    );
    assert!(out.status.success());
    b.wait_metric("firehose_broker_retained_messages", 1);

    // Read back over websockets.
    let ws = b.ws.expect("ws listener");
    let mut o = MqttOptions::new("ws-reader", format!("ws://{ws}/mqtt"), ws.port());
    o.set_transport(Transport::Ws);
    let (c, mut el) = AsyncClient::new(o, 10);
    c.subscribe("ret/#", QoS::AtMostOnce).await.unwrap();
    let got = tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = el.poll().await.expect("ws reader") {
                return p;
            }
        }
    })
    .await
    .expect("retained message over websockets");
    assert_eq!(
        (got.topic.as_str(), &got.payload[..], got.retain),
        ("ret/x", &b"kept"[..], true)
    );

    // Over TLS, with mosquitto_sub.
    let tls = b.mqtts.expect("mqtts listener").port().to_string();
    let out = run(
        Command::new(require("mosquitto_sub", "mosquitto-clients")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &tls,
            "--cafile",
            &path_str(dir.path(), "ca.pem"),
            "-t",
            "ret/#",
            "-v",
            "-C",
            "1",
            "-W",
            "10",
        ]),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ret/x kept");

    // A will set over websockets fires when that connection dies.
    let sub = Sub::spawn(&b, &["-t", "wills/#", "-v", "-C", "1", "-W", "15"]);
    let mut o = MqttOptions::new("ws-will", format!("ws://{ws}/mqtt"), ws.port());
    o.set_transport(Transport::Ws);
    o.set_credentials(PUBLISHER.0, PUBLISHER.1);
    o.set_last_will(LastWill::new("wills/ws", "gone", QoS::AtLeastOnce, false));
    let (_c, mut el) = AsyncClient::new(o, 10);
    let task = tokio::spawn(async move {
        loop {
            if el.poll().await.is_err() {
                return;
            }
        }
    });
    b.wait_log("client connected client_id=ws-will");
    task.abort(); // the socket closes without DISCONNECT
    let (_, out, _) = tokio::task::spawn_blocking(move || sub.output())
        .await
        .unwrap();
    assert_eq!(out.trim(), "wills/ws gone");
}
