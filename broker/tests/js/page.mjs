// Drives the broker's live page in headless Chromium (playwright-core,
// Debian's chromium), publishing with MQTT.js as a bridge would; run by
// broker/tests/page.rs. Prints one line per step that held, then "ok";
// any failure exits 1 with the reason. Bounded: every wait has a timeout.
//
// env: PAGE_URL (http(s)://host:port/), MQTT_URL (where to publish),
//      MQTT_USER, MQTT_PASS, CHROMIUM, SCREENSHOT, CA (for mqtts/wss)
import fs from "node:fs";
import mqtt from "mqtt";
import { chromium } from "playwright-core";

const env = process.env;
const T = { timeout: 20000 };
const pub = await mqtt.connectAsync(env.MQTT_URL, {
  username: env.MQTT_USER, password: env.MQTT_PASS, reconnectPeriod: 0,
  ca: env.CA ? fs.readFileSync(env.CA) : undefined, rejectUnauthorized: !!env.CA,
});
const send = (topic, obj, retain = false) => pub.publishAsync(topic, JSON.stringify(obj), { qos: 1, retain });
const gerrit = (n, subject) => ({
  type: "comment-added",
  change: { project: "openstack/nova", number: n, subject, owner: { name: "Owner" } },
  author: { name: "Jane Reviewer", username: "jane" },
  approvals: [{ type: "Code-Review", value: "-1" }],
  eventCreatedOn: 1764460800,
});
const nova = (uuid) => ({
  "oslo.version": "2.0",
  "oslo.message": JSON.stringify({
    message_id: uuid, event_type: "instance.create.end", timestamp: "2026-11-30 10:00:00",
    payload: { "nova_object.name": "InstanceCreatePayload", "nova_object.data": { uuid, host: "compute-7", state: "active" } },
  }),
});

const browser = await chromium.launch({
  executablePath: env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--ignore-certificate-errors"],
});
let failed = false;
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => { console.error("page error:", e.message); failed = true; });
  await page.goto(env.PAGE_URL);
  // Connected, and the broker acknowledged every subscription.
  const subscribed = (filters) => page.waitForFunction((fs) => {
    const live = (document.body.dataset.subscribed || "").split(" ");
    return fs.every((f) => live.includes(f));
  }, filters, T);
  await page.waitForFunction(() => document.getElementById("conn").textContent === "connected", null, T);
  await subscribed(["#", "firehose/status/#", "nova/+/service/#"]);
  console.log("connected");

  // An event published now shows in the list with its summary.
  await send("gerrit/openstack/nova/comment-added", gerrit(101, "Fix the scheduler"));
  const li = await page.waitForSelector('#events li:has-text("Fix the scheduler")', T);
  const text = await li.textContent();
  for (const want of ["gerrit.comment-added", "openstack/nova", "by Jane Reviewer", "Code-Review-1"]) {
    if (!text.includes(want)) throw new Error(`summary lacks ${want}: ${text}`);
  }
  console.log("summary: " + (await li.$eval(".summary", (e) => e.textContent)));
  await li.click();
  await page.waitForSelector('#events li.open pre:has-text("\\"Fix the scheduler\\"")', T);
  console.log("expanded");

  // The status panel: a bridge up, then down.
  const status = { version: "firehose-gerrit 0.1.0", host: "h", started: "2026-11-30T00:00:00Z", upstream_connected: true, counters: {} };
  await send("firehose/status/gerrit/page-test", { ...status, state: "up" }, true);
  await page.waitForSelector('#bridges li:has-text("gerrit/page-test") b.up', T);
  console.log("bridge up");
  await send("firehose/status/gerrit/page-test", { ...status, state: "down", upstream_connected: false }, true);
  await page.waitForSelector('#bridges li:has-text("gerrit/page-test") b.down', T);
  console.log("bridge down");

  // The filter narrows the list.
  await page.fill("#filter", "nova/#");
  await page.press("#filter", "Enter");
  await page.waitForFunction(() => document.querySelectorAll("#events li").length === 0, null, T);
  await subscribed(["nova/#"]);
  await send("gerrit/openstack/nova/comment-added", gerrit(102, "Not shown under nova"));
  await send("nova/cell1/instance/create/end", nova("uuid-1"));
  await page.waitForSelector('#events li:has-text("uuid-1")', T);
  const topics = await page.$$eval("#events li", (ls) => ls.map((l) => l.dataset.topic));
  if (topics.some((t) => !t.startsWith("nova/"))) throw new Error(`filter nova/# shows ${topics}`);
  const novaText = await page.$eval('#events li:has-text("uuid-1")', (e) => e.textContent);
  if (!novaText.includes("on compute-7")) throw new Error(`nova summary: ${novaText}`);
  console.log("filtered: " + topics.join(","));

  // Pause stops updates: what arrives while paused is not shown (the
  // event after resume proves the paused one had arrived).
  await page.click("#pause");
  await send("nova/cell1/instance/create/end", nova("uuid-paused"));
  await page.click("#pause");
  await send("nova/cell1/instance/create/end", nova("uuid-after"));
  await page.waitForSelector('#events li:has-text("uuid-after")', T);
  if (await page.$('#events li:has-text("uuid-paused")')) throw new Error("an event shown while paused");
  console.log("paused");

  // A filter the broker refuses is said, not waited on.
  await page.fill("#filter", "a/#/b");
  await page.press("#filter", "Enter");
  await page.waitForFunction(() => document.body.dataset.refused === "a/#/b", null, T);
  const refusal = await page.textContent("#refused");
  if (!refusal.includes("refused the filter a/#/b") || !(await page.isVisible("#refused"))) throw new Error(`refusal: ${refusal}`);
  await page.fill("#filter", "nova/#");
  await page.press("#filter", "Enter");
  await subscribed(["nova/#"]);
  if (await page.isVisible("#refused")) throw new Error("the refusal outlived its filter");
  console.log("refused filter");

  // Phone width: the page still fits.
  await page.setViewportSize({ width: 380, height: 800 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  if (overflow) throw new Error("the page is wider than a phone screen");
  console.log("phone width");
  if (env.SCREENSHOT) {
    await page.setViewportSize({ width: 1100, height: 800 });
    await page.screenshot({ path: env.SCREENSHOT });
  }
  if (failed) throw new Error("the page raised errors");
  console.log("ok");
} catch (e) {
  console.error(String(e && e.stack || e));
  process.exitCode = 1;
} finally {
  await browser.close();
  await pub.endAsync();
}
