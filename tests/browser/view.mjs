// Drives Spool's built-in page in headless Chromium for tests/http_browser.rs
// (the_page_links_hints_truncates_and_shows_records_as_consume_json_does).
//
//   node tests/browser/view.mjs http://127.0.0.1:PORT
//
// The test has created topic `view` (1 partition) holding four records stamped from
// 2024-05-01T11:00:00Z (offset 0) to 12:00:02Z, among them a 5,000-character value with two
// headers (offset 1), a binary key (2) and a binary value (3). The browser runs in the
// America/St_Johns time zone (UTC-02:30 in May). This script opens the page plainly, from a
// form, and from links, and ends by printing `report {JSON}`: what it saw, for the test to
// check.
// Environment: NODE_PATH (the node_modules holding playwright-core), SPOOL_CHROMIUM (default
// /usr/bin/chromium), SPOOL_SCREENSHOTS (a directory for PNGs).

import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(import.meta.url);
const { chromium } = require(path.join(process.env.NODE_PATH, "playwright-core"));

const base = process.argv[2];
const shots = process.env.SPOOL_SCREENSHOTS;
const WAIT_MS = 30_000;
const shown = (offset) => `#events [data-offset="${offset}"]`;

const browser = await chromium.launch({
  executablePath: process.env.SPOOL_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext({ timezoneId: "America/St_Johns", viewport: { width: 1280, height: 720 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on("console", (message) => console.log(`note console: ${message.text()}`));
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(error));
  const error = () => page.textContent("#error");

  // Nothing watched: the hint says what to do.
  await page.goto(`${base}/`);
  await page.waitForFunction(() => [...document.querySelectorAll("#topic option")].some((o) => o.value === "view"));
  const hint = await page.$eval("#hint", (e) => ({ visible: !e.hidden, text: e.textContent }));
  const zone = await page.textContent("#zone");

  // Watching from the form leaves a link to the view in the address bar.
  await page.selectOption("#topic", "view");
  await page.selectOption("#partition", "0");
  await page.fill("#from", "earliest");
  await page.click("#watch");
  await page.waitForSelector(shown(3));
  const linked = await page.evaluate(() => location.search);
  const hintWhileWatching = await page.$eval("#hint", (e) => !e.hidden);

  // A link with an RFC 3339 `from` opens the view from the first record at or after it.
  await page.goto(`${base}/?topic=view&partition=0&from=2024-05-01T12:00:00Z`);
  await page.waitForSelector(shown(3));
  await page.waitForFunction(() => document.querySelector("#status").textContent === "live");
  const offsets = await page.$$eval("#events [data-offset]", (rows) => rows.map((r) => Number(r.dataset.offset)));
  const from = await page.inputValue("#from");
  const record = (offset) => page.$eval(shown(offset), (row) => {
    const text = (selector) => row.querySelector(selector)?.textContent ?? null;
    return {
      time: text(".time"),
      timeTitle: row.querySelector(".time").title,
      key: text(".key"),
      keyClass: row.querySelector(".key").className,
      value: text(".value"),
      valueClass: row.querySelector(".value").className,
      expand: text(".value + button.expand"),
      headers: [...row.querySelectorAll(".header")].map((h) => [h.querySelector(".name").textContent, h.querySelector(".header-value").textContent]),
    };
  });
  const records = { 1: await record(1), 2: await record(2), 3: await record(3) };
  if (shots) await page.screenshot({ path: path.join(shots, "page-records.png") });

  // The long value, expanded and folded again.
  await page.click(`${shown(1)} .value + button.expand`);
  const expanded = await record(1);
  await page.click(`${shown(1)} .value + button.expand`);
  const folded = await record(1);

  // Links the server refuses say why: a bad `from` (the listener's own reason), an unknown topic.
  await page.goto(`${base}/?topic=view&partition=0&from=soon`);
  await page.waitForFunction(() => document.querySelector("#error").textContent.includes("soon"));
  const badFrom = await error();
  await page.goto(`${base}/?topic=nope&partition=0`);
  await page.waitForFunction(() => document.querySelector("#error").textContent.includes("nope"));
  const unknownTopic = await error();

  if (pageErrors.length) throw pageErrors[0];
  console.log(`report ${JSON.stringify({ hint, zone, linked, hintWhileWatching, offsets, from, records, expanded, folded, badFrom, unknownTopic })}`);
} finally {
  await browser.close();
}
