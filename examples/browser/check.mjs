// Drives index.html in headless Chromium for the tests: opens the page on
// PAGE_URL, prints "ready" once it is subscribed, then waits for a list
// item containing EXPECT and prints it; a screenshot goes to SCREENSHOT.
import { chromium } from "playwright-core";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage();
  await page.goto(process.env.PAGE_URL);
  await page.waitForFunction(() => document.getElementById("status").textContent === "connected", null, { timeout: 20000 });
  console.log("ready");
  const li = await page.waitForSelector(`#events li:has-text("${process.env.EXPECT}")`, { timeout: 20000 });
  console.log(await li.textContent());
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT });
} finally {
  await browser.close();
}
