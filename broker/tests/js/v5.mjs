// MQTT 5 semantics through firehose-broker with MQTT.js's v5 client, beside
// paho's (broker/tests/paho_v5.py); run by broker/tests/mqtt5_mqttjs.rs.
// Checks: QoS downgrade, subscription identifiers in one copy, no-local,
// properties, retain-as-published, QoS 2, topic aliases both ways (MQTT.js
// resolves them itself), the client's Maximum Packet Size.
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

  // Topic aliases towards the client: MQTT.js advertises a Topic Alias
  // Maximum, the broker aliases repeated topics, MQTT.js puts the topics
  // back; and from the client: autoAssignTopicAlias uses the maximum the
  // broker announced in CONNACK.
  const ta = await mqtt.connectAsync(url, opts({ clientId: `ta-${run}`, properties: { topicAliasMaximum: 4 } }));
  const nextTa = inbox(ta);
  await ta.subscribeAsync(`${t}/ta/#`, { qos: 1 });
  for (const x of ["a", "a", "b", "a"]) await pub.publishAsync(`${t}/ta/${x}`, x, { qos: 1 });
  const seen = [];
  for (let i = 0; i < 4; i++) {
    const m = await nextTa();
    seen.push([m.topic, m.packet.properties?.topicAlias ?? null, m.payload]);
  }
  const want = [[`${t}/ta/a`, 1, "a"], [`${t}/ta/a`, 1, "a"], [`${t}/ta/b`, 2, "b"], [`${t}/ta/a`, 1, "a"]];
  if (JSON.stringify(seen) !== JSON.stringify(want)) fail(`aliases to the client: ${JSON.stringify(seen)}`);
  const aliasing = await mqtt.connectAsync(url, opts({
    username: user, password: pass, clientId: `aliasing-${run}`, autoAssignTopicAlias: true,
  }));
  if (!(aliasing.topicAliasSend?.max > 0)) fail("the broker announced no topic alias maximum");
  await sub.subscribeAsync(`${t}/tb/#`, { qos: 1 });
  for (const x of ["one", "two", "three"]) await aliasing.publishAsync(`${t}/tb/x`, x, { qos: 1 });
  if (!aliasing.topicAliasSend.getAliasByTopic(`${t}/tb/x`)) fail("MQTT.js assigned no alias");
  for (const x of ["one", "two", "three"]) {
    const m = await next();
    if (m.topic !== `${t}/tb/x` || m.payload !== x) fail(`aliases from the client: ${m.topic} ${m.payload}`);
  }
  console.log("ok topic-aliases");

  // Maximum Packet Size: larger messages are not sent to this client.
  const mp = await mqtt.connectAsync(url, opts({ clientId: `mp-${run}`, properties: { maximumPacketSize: 100 } }));
  const nextMp = inbox(mp);
  await mp.subscribeAsync(`${t}/mp/#`, { qos: 1 });
  await pub.publishAsync(`${t}/mp/big`, "x".repeat(200), { qos: 1 });
  await pub.publishAsync(`${t}/mp/small`, "ok", { qos: 1 });
  const small = await nextMp();
  if (small.topic !== `${t}/mp/small`) fail(`maximum packet size: got ${small.topic}`);
  console.log("ok maximum-packet-size");
  await Promise.all([ta.endAsync(), aliasing.endAsync(), mp.endAsync()]);
  await other.endAsync();
  console.log("ok all");
} catch (e) {
  fail(String(e && e.stack || e));
} finally {
  await pub.endAsync();
  await sub.endAsync();
}
