// Drives firehose-history's page in headless Chromium (playwright-core,
// Debian's chromium), publishing with MQTT.js as a bridge would; run by
// tools/history/tests/page.rs. Prints one line per step that held, then
// "ok"; any failure exits 1 with the reason. Bounded: every wait has a
// timeout.
//
// env: HISTORY_URL (http://host:port of firehose-history), BROKER_PAGE (the
//      broker's live page, started with --history-url HISTORY_URL),
//      MQTT_URL, MQTT_USER, MQTT_PASS, CHROMIUM, SCREENSHOT,
//      JS_MODULES (the node_modules holding mqtt and playwright-core)
import { createRequire } from "node:module";
import path from "node:path";

const env = process.env;
const require = createRequire(path.join(env.JS_MODULES, "..", "package.json"));
const mqtt = require("mqtt");
const { chromium } = require("playwright-core");
const T = { timeout: 20000 };
const H = env.HISTORY_URL;

const pub = await mqtt.connectAsync(env.MQTT_URL, { username: env.MQTT_USER, password: env.MQTT_PASS, reconnectPeriod: 0 });
const send = (topic, obj) => pub.publishAsync(topic, JSON.stringify(obj), { qos: 1 });
const UUID = "5f1b3c2a-0000-4000-8000-00000000abcd";
let mid = 0;
const nova = (phase, at, uuid = UUID) => ({
  "oslo.version": "2.0",
  "oslo.message": JSON.stringify({
    message_id: "page-" + (mid++), event_type: "instance." + phase, timestamp: "2026-11-30 " + at,
    publisher_id: "nova-compute:compute-7", _context_request_id: "req-page-1",
    payload: { "nova_object.name": "InstanceActionPayload", "nova_object.data": { uuid, host: "compute-7", state: "active" } },
  }),
});
const gerrit = (type, n, subject, on) => ({
  type, change: { project: "openstack/nova", number: n, subject, owner: { name: "Owner" } },
  author: { name: "Jane Reviewer" }, patchSet: { number: 1 }, eventCreatedOn: on,
});

// What the page will look at: one instance's create and delete, one
// change from upload to merge, and 60 comments so a search has two pages.
for (const [phase, at] of [["create.start", "10:00:00"], ["create.end", "10:00:42"], ["delete.start", "11:00:00"], ["delete.end", "11:00:05"]]) {
  await send("nova/cell1/instance/" + phase.replace(".", "/"), nova(phase, at));
}
await send("gerrit/openstack/nova/patchset-created", gerrit("patchset-created", 900, "Fix the page scheduler", 1764496800));
await send("gerrit/openstack/nova/change-merged", gerrit("change-merged", 900, "Fix the page scheduler", 1764500400));
for (let i = 0; i < 60; i++) await send("gerrit/openstack/swift/comment-added", gerrit("comment-added", 1000 + i, "Comment " + i, 1764496800 + i));
const TOTAL = 66;
for (let i = 0; ; i++) {
  const r = await (await fetch(H + "/v1/events?limit=1000")).json();
  if (r.events.length >= TOTAL) break;
  if (i > 300) throw new Error(`history holds ${r.events.length} of ${TOTAL} events after 30 s`);
  await new Promise((ok) => setTimeout(ok, 100));
}
console.log("stored");

const browser = await chromium.launch({ executablePath: env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
let failed = false;
const count = (page) => page.$$eval("#results > li", (ls) => ls.length);
try {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => { console.error("page error:", e.message); failed = true; });
  const searched = (want) => page.waitForFunction((w) => (document.body.dataset.searched || "") === w, want, T);

  // Everything, newest-first paging: 50, then More for the rest.
  await page.goto(H + "/");
  await searched("limit=50");
  if ((await count(page)) !== 50) throw new Error(`first page: ${await count(page)} events`);
  await page.click("#more");
  await page.waitForFunction((n) => document.querySelectorAll("#results > li").length === n, TOTAL, T);
  if (await page.isVisible("#more")) throw new Error("More shown at the end");
  console.log("paged");

  // A type prefix.
  await page.fill('#search-form [name="type"]', "nova.instance.*");
  await page.click("#search-form button");
  await searched("type=nova.instance.*&limit=50");
  const types = await page.$$eval("#results > li", (ls) => ls.map((l) => l.dataset.type));
  if (types.length !== 4 || types.some((t) => !t.startsWith("nova.instance."))) throw new Error(`type search: ${types}`);
  console.log("type");

  // Text, and a topic filter.
  await page.fill('#search-form [name="type"]', "");
  await page.fill('#search-form [name="q"]', "page scheduler");
  await page.fill('#search-form [name="topic"]', "gerrit/openstack/nova/+");
  await page.click("#search-form button");
  await searched("topic=gerrit%2Fopenstack%2Fnova%2F%2B&q=page+scheduler&limit=50");
  const texts = await page.$$eval("#results > li", (ls) => ls.map((l) => l.dataset.type).sort().join(","));
  if (texts !== "gerrit.change-merged,gerrit.patchset-created") throw new Error(`text search: ${texts}`);
  console.log("text");

  // A bad time says why.
  await page.fill('#search-form [name="since"]', "the other day");
  await page.click("#search-form button");
  await page.waitForSelector("#error:has-text('since')", T);
  console.log("bad input: " + (await page.textContent("#error")));

  // One instance's life: from a result's subject link to its timeline,
  // with the create and delete durations.
  await page.goto(H + "/#search?type=nova.instance.create.end");
  await page.click(`#results a.subject:has-text("${UUID}")`);
  await page.waitForFunction((u) => document.body.dataset.subject === u, UUID, T);
  const life = await page.$$eval("#timeline > li:not(.gap)", (ls) => ls.map((l) => l.dataset.type));
  if (life.join(",") !== "nova.instance.create.start,nova.instance.create.end,nova.instance.delete.start,nova.instance.delete.end") throw new Error(`timeline: ${life}`);
  const durations = await page.textContent("#durations");
  if (!durations.includes("nova.instance.create: 42.0 s") || !durations.includes("nova.instance.delete: 5.0 s")) throw new Error(`durations: ${durations}`);
  const gaps = await page.$$eval("#timeline > li.gap", (ls) => ls.map((l) => l.textContent));
  if (gaps.join("|") !== "+ 42.0 s|+ 59 min 18 s|+ 5.0 s") throw new Error(`gaps: ${gaps}`);
  console.log("timeline");

  // The timings table.
  await page.click("#tab-timings");
  await page.fill('#timings-form [name="type"]', "nova.*");
  await page.click("#timings-form button");
  await page.waitForFunction(() => (document.body.dataset.timed || "") === "type=nova.*", null, T);
  const create = await page.$eval("#timings-table tbody", (b) => [...b.rows].map((r) => [...r.cells].map((c) => c.textContent)).find((r) => r[0] === "nova.instance.create"));
  if (!create || create[1] !== "1" || create[3] !== "42.0 s" || !create[7].includes(UUID)) throw new Error(`timings row: ${create}`);
  console.log("timings");

  // Phone width: the page still fits.
  await page.setViewportSize({ width: 380, height: 800 });
  await page.goto(H + "/#search");
  await searched("limit=50");
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  if (overflow) throw new Error("the page is wider than a phone screen");
  console.log("phone width");
  if (env.SCREENSHOT) {
    await page.setViewportSize({ width: 1100, height: 800 });
    await page.goto(H + "/#subject?subject=" + UUID);
    await page.waitForFunction((u) => document.body.dataset.subject === u, UUID, T);
    await page.screenshot({ path: env.SCREENSHOT });
  }

  // The broker's live page links an event's instance to its history.
  const live = await context.newPage();
  live.on("pageerror", (e) => { console.error("live page error:", e.message); failed = true; });
  await live.goto(env.BROKER_PAGE);
  await live.waitForFunction(() => (document.body.dataset.subscribed || "").split(" ").includes("#"), null, T);
  await send("nova/cell1/instance/update", nova("update", "11:30:00"));
  const link = await live.waitForSelector(`#events li a.history:has-text("${UUID}")`, T);
  const [opened] = await Promise.all([context.waitForEvent("page", T), link.click()]);
  opened.on("pageerror", (e) => { console.error("opened page error:", e.message); failed = true; });
  await opened.waitForFunction((u) => document.body.dataset.subject === u, UUID, T);
  if (!opened.url().startsWith(H + "/#subject?")) throw new Error(`the link opened ${opened.url()}`);
  console.log("linked from the live page");

  if (failed) throw new Error("the page raised errors");
  console.log("ok");
} catch (e) {
  console.error(String(e && e.stack || e));
  process.exitCode = 1;
} finally {
  await browser.close();
  await pub.endAsync();
}
