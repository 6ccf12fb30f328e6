// MQTT 5 semantics through firehose-broker with MQTT.js's v5 client, beside
// paho's (broker/tests/paho_v5.py); run by broker/tests/mqtt5_mqttjs.rs.
// usage: node v5.mjs URL USER PASS
// Prints "ok <check>" per check, then "ok all"; exits 1 with the reason.
import mqtt from "mqtt";

const [url, user, pass] = process.argv.slice(2);
const run = Math.random().toString(16).slice(2, 10);
const opts = (extra) => ({ protocolVersion: 5, reconnectPeriod: 0, connectTimeout: 10_000, ...extra });
const pub = await mqtt.connectAsync(url, opts({ username: user, password: pass, clientId: `pub-${run}` }));
const sub = await mqtt.connectAsync(url, opts({ clientId: `sub-${run}` }));

// Messages in arrival order, waited for with a bound.
function inbox(client) {
  const q = [], waiters = [];
  client.on("message", (topic, payload, packet) => {
    const m = { topic, payload: payload.toString(), packet };
    const w = waiters.shift();
    w ? w(m) : q.push(m);
  });
  return () => q.length ? Promise.resolve(q.shift()) : new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error("nothing arrived in 15 s")), 15_000);
    waiters.push((m) => { clearTimeout(timer); res(m); });
  });
}
const next = inbox(sub), nextPub = inbox(pub);
const fail = (why) => { console.log("FAIL " + why); process.exit(1); };

try {
  // QoS: the lower of publish and subscription.
  const t = `js5/${run}`;
  await sub.subscribeAsync(`${t}/q`, { qos: 2 });
  await pub.publishAsync(`${t}/q`, "q", { qos: 1 });
  if ((await next()).packet.qos !== 1) fail("qos");
  console.log("ok qos");

  // Subscription identifiers: one copy with both.
  await sub.subscribeAsync(`${t}/s/#`, { qos: 1, properties: { subscriptionIdentifier: 3 } });
  await sub.subscribeAsync(`${t}/s/+`, { qos: 1, properties: { subscriptionIdentifier: 4 } });
  await pub.publishAsync(`${t}/s/x`, "s", { qos: 1 });
  const ids = [].concat((await next()).packet.properties?.subscriptionIdentifier ?? []).sort();
  if (JSON.stringify(ids) !== "[3,4]") fail(`subscription ids ${ids}`);
  await pub.publishAsync(`${t}/s/end`, "end", { qos: 1 });
  if ((await next()).topic !== `${t}/s/end`) fail("a second copy for overlapping subscriptions");
  console.log("ok subscription-identifiers");

  // No-local, and user properties / content type kept.
  await pub.subscribeAsync(`${t}/n/#`, { qos: 1, nl: true });
  await pub.publishAsync(`${t}/n/own`, "own", { qos: 1 });
  const other = await mqtt.connectAsync(url, opts({ username: user, password: pass, clientId: `other-${run}` }));
  await other.publishAsync(`${t}/n/theirs`, "theirs", {
    qos: 1, properties: { userProperties: { origin: "js" }, contentType: "text/plain" },
  });
  const m = await nextPub();
  if (m.topic !== `${t}/n/theirs`) fail(`no-local: got ${m.topic}`);
  const p = m.packet.properties || {};
  if (p.userProperties?.origin !== "js" || p.contentType !== "text/plain") fail(`properties ${JSON.stringify(p)}`);
  console.log("ok no-local");
  console.log("ok properties");

  // Retain-as-published on live retained publishes.
  await sub.subscribeAsync(`${t}/r/#`, { qos: 1, rap: true, rh: 2 });
  await other.publishAsync(`${t}/r/x`, "r", { qos: 1, retain: true });
  if (!(await next()).packet.retain) fail("retain-as-published");
  console.log("ok retain-as-published");

  // QoS 2 both ways.
  await sub.subscribeAsync(`${t}/two`, { qos: 2 });
  await other.publishAsync(`${t}/two`, "two", { qos: 2 });
  if ((await next()).packet.qos !== 2) fail("qos 2");
  console.log("ok qos2");
  await other.endAsync();
  console.log("ok all");
} catch (e) {
  fail(String(e && e.stack || e));
} finally {
  await pub.endAsync();
  await sub.endAsync();
}
