// Drives the web console in headless Chromium (Debian's package) with
// playwright-core: sign in with a token, watch the demo's devices update
// live, open a point's chart, visit every page, and write a screenshot of
// each to the artifacts directory. Called by test_console.py:
//
//   node browser/console.mjs <console url> <token> <artifacts dir>
//
// Prints one JSON line of findings; exits non-zero on the first failed check.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [url, token, artifacts] = process.argv.slice(2);
if (!url || !token || !artifacts) {
  console.error("usage: node console.mjs <url> <token> <artifacts dir>");
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
const origin = new URL(url).origin;
const findings = { pages: [], foreign_requests: [], console_errors: [] };

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 860 } });
  const page = await context.newPage();
  page.on("request", (r) => {
    if (!r.url().startsWith(origin) && !r.url().startsWith("data:")) findings.foreign_requests.push(r.url());
  });
  // The wrong token (401) makes Chromium log the failed load; anything
  // else is an error of the console.
  const expected = /^Failed to load resource: the server responded with a status of 401/;
  page.on("console", (m) => { if (m.type() === "error" && !expected.test(m.text())) findings.console_errors.push(m.text()); });
  page.on("pageerror", (e) => findings.console_errors.push(String(e)));
  const shot = async (name) => {
    await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: false });
    findings.pages.push(name);
  };

  // Sign in: a wrong token is refused, the right one opens the overview.
  await page.goto(url);
  await page.waitForSelector("#login:not([hidden])");
  await page.fill("#token", "bgw_wrong");
  await page.click("#login-form button");
  await page.waitForFunction(() => document.querySelector("#login-error").textContent.includes("not valid"));
  await shot("login");
  await page.fill("#token", token);
  await page.click("#login-form button");
  await page.waitForSelector("#cards .card");
  // The readings/s card needs two status polls.
  await page.waitForFunction(() => /\d/.test(document.querySelector("#cards .card .value").textContent), null, { timeout: 10000 });
  const stored = await page.evaluate(() => [sessionStorage.getItem("biota.token"), localStorage.length, document.cookie]);
  check(stored[0] === token && stored[1] === 0 && stored[2] === "", `token kept in sessionStorage only: ${JSON.stringify(stored)}`);
  await shot("overview");

  // Devices: values change while we watch (the SSE stream), sparklines draw.
  await page.goto(`${url}#/devices`);
  const row = 'tr[data-key="press-1/force"]';
  await page.waitForSelector(row);
  for (const device of ["press-1", "plc-1", "coap-1", "meter-1"]) {
    await page.waitForSelector(`tr.device-row >> text=${device}`, { timeout: 10000 });
  }
  const before = await page.textContent(`${row} .value`);
  await page.waitForFunction(([sel, old]) => document.querySelector(`${sel} .value`).textContent !== old, [row, before], { timeout: 10000 });
  await page.waitForSelector(`${row} svg.spark polyline`, { timeout: 10000 });
  await page.waitForSelector("#live:not([hidden])");
  findings.live_value_changed = true;
  await shot("devices");

  // A device's page with its transaction counters.
  await page.goto(`${url}#/device/plc-1`);
  await page.waitForSelector("#detail .cards .card");
  await page.waitForSelector('tr[data-key="plc-1/temperature"]');
  await shot("device");

  // A point's chart, then other range/mode choices redraw it.
  await page.goto(`${url}#/devices`);
  await page.click('tr[data-key="press-1/oil_temperature"] a');
  await page.waitForSelector("#chart svg polyline.line");
  await page.selectOption("#mode", "raw");
  await page.waitForFunction(() => /readings/.test(document.querySelector("#summary").textContent));
  await page.waitForSelector("#chart svg polyline.line");
  await page.selectOption("#mode", "aggregate");
  await page.waitForFunction(() => /buckets/.test(document.querySelector("#summary").textContent));
  await page.waitForSelector("#chart svg polygon.band");
  await shot("point");

  // Anchoring: the demo anchors on its local chain every 2 s; download the
  // proof of an anchored batch's first reading (test_console.py verifies it).
  await page.goto(`${url}#/anchoring`);
  let anchored = false;
  for (let i = 0; i < 30 && !anchored; i++) {
    await page.waitForSelector("#batches table, #batches .empty");
    anchored = (await page.$("#batches tr.anchored button.proof")) !== null;
    if (!anchored) { await page.waitForTimeout(1000); await page.reload(); }
  }
  check(anchored, "an anchored batch is listed");
  findings.anchoring = (await page.textContent("#batches")).trim();
  await shot("anchoring");
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.click("#batches tr.anchored button.proof"),
  ]);
  findings.proof = join(artifacts, "proof.json");
  await download.saveAs(findings.proof);
  await page.waitForFunction(() => /downloaded/.test(document.querySelector("#proof-result").textContent));

  // Signing out forgets the token.
  await page.click("#logout");
  await page.waitForSelector("#login:not([hidden])");
  check(await page.evaluate(() => sessionStorage.getItem("biota.token")) === null, "sign-out forgets the token");

  check(findings.foreign_requests.length === 0, `requests left the gateway: ${findings.foreign_requests}`);
  check(findings.console_errors.length === 0, `console errors: ${findings.console_errors}`);
  findings.ok = true;
} catch (e) {
  findings.ok = false;
  findings.error = String(e && e.stack || e);
  // What the page showed when the check failed.
  const [page] = browser.contexts().flatMap((c) => c.pages());
  if (page) {
    findings.page_text = (await page.textContent("#main").catch(() => "")).slice(0, 2000);
    await page.screenshot({ path: join(artifacts, "failure.png") }).catch(() => {});
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(findings));
process.exit(findings.ok ? 0 : 1);
