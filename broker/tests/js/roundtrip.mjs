// MQTT.js round trip through firehose-broker, driven by
// broker/tests/third_party_clients.rs.
//
// usage: node roundtrip.mjs URL SUBPROTOCOL USER PASS [CA_FILE]
//   SUBPROTOCOL: "mqtt" (MQTT 3.1.1), "mqttv3.1" (MQTT 3.1, MQIsdp) or
//   "none" (MQTT 5, no Sec-WebSocket-Protocol header at all).
// An anonymous subscriber on js/# and an authenticated publisher; prints one
// JSON line {topic, payload, negotiated} and exits 0, or prints the error and
// exits 1. Bounded: gives up after 15 s.
import fs from "node:fs";
import mqtt from "mqtt";
import WebSocket from "ws";

const [url, mode, user, pass, caFile] = process.argv.slice(2);
const version = { mqtt: { protocolVersion: 4 }, "mqttv3.1": { protocolId: "MQIsdp", protocolVersion: 3 }, none: { protocolVersion: 5 } }[mode];
if (!version) {
  console.error(`unknown subprotocol mode ${mode}`);
  process.exit(2);
}
const ca = caFile ? fs.readFileSync(caFile) : undefined;
const negotiated = [];

function open(extra) {
  return mqtt.connect(url, {
    ...version,
    ...extra,
    reconnectPeriod: 0,
    connectTimeout: 10_000,
    clean: true,
    // Our own socket so the test sees what the server answered, and so
    // "none" can ask for no subprotocol at all.
    createWebsocket: (u, protocols) => {
      const asked = mode === "none" ? [] : protocols;
      const s = new WebSocket(u, asked, { ca, rejectUnauthorized: true });
      s.on("open", () => negotiated.push(s.protocol));
      return s;
    },
  });
}

let done = false;
const fail = (e) => {
  if (done) return; // teardown noise after the check passed
  console.error(`error: ${e && e.message ? e.message : e}`);
  process.exit(1);
};
setTimeout(() => fail("timed out"), 15_000).unref();

const sub = open({ clientId: `js-sub-${mode}` });
sub.on("error", fail);
sub.on("connect", () => {
  sub.subscribe("js/#", { qos: 1 }, (err, granted) => {
    if (err) return fail(err);
    if (granted[0].qos !== 1) return fail(`granted ${JSON.stringify(granted)}`);
    const pub = open({ clientId: `js-pub-${mode}`, username: user, password: pass });
    pub.on("error", fail);
    pub.on("connect", () => {
      pub.publish(`js/${mode}`, `hello over ${mode}`, { qos: 1 }, (e) => {
        if (e) fail(e);
        pub.end();
      });
    });
  });
});
sub.on("message", (topic, payload) => {
  console.log(JSON.stringify({ topic, payload: payload.toString(), negotiated }));
  done = true;
  sub.end(false, {}, () => process.exit(0));
});
