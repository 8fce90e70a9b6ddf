// Drives Spool's built-in page in headless Chromium for tests/http_browser.rs
// (the_page_in_headless_chromium_follows_resumes_and_publishes).
//
//   node tests/browser/e2e.mjs http://127.0.0.1:PORT
//
// The test has created topic `demo` (2 partitions) with 30 records in partition 0. This
// script asks the test for things by printing a line and waiting for `ok` on stdin:
// `produce N` (N more records to partition 0) and `restart N` (restart the server on the
// same address and data, producing N records while the page is cut off). It ends by
// printing `report {JSON}`: the offsets the page shows, in order, how often EventSource
// reconnected by itself, and the value the page published to partition 1. Every other line
// it prints is a note. Environment: NODE_PATH (the node_modules holding playwright-core),
// SPOOL_CHROMIUM (default /usr/bin/chromium), SPOOL_SCREENSHOTS (a directory for PNGs).

import { createRequire } from "node:module";
import path from "node:path";
import readline from "node:readline";

const require = createRequire(import.meta.url);
const { chromium } = require(path.join(process.env.NODE_PATH, "playwright-core"));

const base = process.argv[2];
const shots = process.env.SPOOL_SCREENSHOTS;
const stdin = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const WAIT_MS = 30_000;

async function ask(what) {
  console.log(what);
  const { value } = await stdin.next();
  if (value !== "ok") throw new Error(`the test answered ${JSON.stringify(value)} to ${what}`);
}
const produce = (n) => ask(`produce ${n}`);
function note(text) { console.log(`note ${text}`); }
const shown = (offset) => `#events [data-offset="${offset}"]`;

const browser = await chromium.launch({
  executablePath: process.env.SPOOL_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  page.setDefaultTimeout(WAIT_MS);
  page.on("console", (message) => note(`console: ${message.text()}`));
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(error));

  // Open the page, pick the topic and partition, follow from the live end.
  await page.goto(`${base}/`);
  await page.waitForFunction(() => [...document.querySelectorAll("#topic option")].some((o) => o.value === "demo"));
  await page.selectOption("#topic", "demo");
  await page.selectOption("#partition", "0");
  await page.fill("#from", "latest");
  await page.click("#watch");
  await page.waitForFunction(() => document.querySelector("#status").textContent === "live");

  // Scroll back through history: two pages of 20 reach offset 0.
  await page.click("#older");
  await page.waitForSelector(shown(10));
  await page.click("#older");
  await page.waitForSelector(shown(0));

  // Events produced by the test appear live.
  await produce(10);
  await page.waitForSelector(shown(39));
  if (shots) await page.screenshot({ path: path.join(shots, "page-live.png") });

  // Cut the stream mid-way: the server restarts (its shutdown ends the stream), records are
  // produced while the page is cut off, and EventSource reconnects by itself, sending the
  // last id it saw as Last-Event-ID. (Chromium's emulated offline mode, tried first, leaves
  // an open EventSource connection alone, so it cannot cut one.)
  await ask("restart 10");
  await page.waitForSelector(shown(49));
  await page.waitForFunction(() => document.querySelector("#status").textContent === "live");
  await produce(5);
  await page.waitForSelector(shown(54));

  // Publish a test event to partition 1 from the page.
  const published = `published from the browser ${Date.now()}`;
  await page.selectOption("#publish-partition", "1");
  await page.fill("#key", "browser");
  await page.fill("#value", published);
  await page.click("#publish button");
  await page.waitForFunction(() => document.querySelector("#published").textContent.includes("offset"));
  if (shots) await page.screenshot({ path: path.join(shots, "page-published.png") });

  if (pageErrors.length) throw pageErrors[0];
  const offsets = await page.$$eval("#events [data-offset]", (rows) => rows.map((r) => Number(r.dataset.offset)));
  const reconnects = await page.evaluate(() => window.spool.reconnects);
  console.log(`report ${JSON.stringify({ offsets, reconnects, published })}`);
} finally {
  await browser.close();
}
// The stdin reader would keep node running.
process.exit(0);
