// The dashboard, as an operator uses it: the real `wasaga demo` binary with generated
// traffic, opened in headless Chromium. It finds completed and compensated sagas,
// filters them by status and pages to older ones; opens a saga's timeline (a real time
// axis) and its deep link in a fresh page; follows a step's link to the records it
// wrote; searches a choreographed order by its id and opens its event chain; retries a
// stuck saga and redelivers a dead letter as an operator (the dashboard asks for the
// admin token the demo printed, once, and says how each action went); pauses the live
// list; and saves screenshots (target/dashboard.png, dashboard-saga.png,
// dashboard-dead.png).
//
// Needs Debian's chromium (/usr/bin/chromium, or CHROMIUM) and `npm ci` here; the
// wasaga binary is target/debug/wasaga (or WASAGA_BIN). Run: node --test tests/browser

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const binary = process.env.WASAGA_BIN ?? resolve(root, "target/debug/wasaga");
const shots = process.env.SCREENSHOTS ?? resolve(root, "target");

/** Starts the demo on a free port (it makes up its admin token); resolves with its
 * URL, the admin token it printed, and the process. */
function startDemo() {
  const env = { ...process.env, WASAGA_LOG: "warn" };
  delete env.WASAGA_ADMIN_TOKEN;
  const demo = spawn(binary, ["demo", "--listen", "127.0.0.1:0", "--traffic", "40"], {
    env,
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolveDemo, reject) => {
    demo.on("error", reject);
    let url = null;
    const lines = createInterface({ input: demo.stdout });
    lines.on("line", (line) => {
      if (url === null) {
        url = line.replace("listening on ", "").trim();
        if (!url.startsWith("http://")) reject(new Error(`unexpected first line: ${line}`));
      }
      const token = line.match(/^\s*admin token\s+([0-9a-f]{64})$/);
      if (token) resolveDemo({ url, adminToken: token[1], demo });
    });
  });
}

const post = (url, path, key, body) =>
  fetch(`${url}${path}`, { method: "POST", headers: { "Idempotency-Key": key }, body: JSON.stringify(body) });

/** Polls `get` until `ok` holds of what it returns (10 s at most). */
async function eventually(get, ok, what) {
  let last;
  for (let i = 0; i < 100; i++) {
    last = await get();
    if (ok(last)) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`${what}: ${JSON.stringify(last)}`);
}

test("the dashboard, as an operator uses it", { timeout: 120_000 }, async () => {
  const { url, adminToken, demo } = await startDemo();
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const asked = [];
    page.on("dialog", (dialog) => { asked.push(dialog.message()); dialog.accept(adminToken); });
    await page.goto(url);

    // The latest sagas, the counts and the trend of the last hour.
    await page.waitForSelector("#sagas tr.saga.completed", { timeout: 30_000 });
    await page.waitForSelector("#sagas tr.saga.compensated", { timeout: 30_000 });
    assert.ok(Number(await page.textContent(".count.completed b")) > 0, "the counts show completed sagas");
    await page.waitForSelector("#rates rect[data-rate=completed]");

    // Filter by status, and page to older sagas.
    await page.selectOption("#status-filter", "compensated");
    await page.waitForFunction(() => location.hash === "#/sagas?status=compensated");
    await page.waitForFunction(() => document.querySelector("#view h2")?.textContent === "Sagas: compensated");
    const statuses = await page.$$eval("#sagas tr.saga td.status", (cells) => cells.map((c) => c.textContent));
    assert.ok(statuses.length > 0 && statuses.every((s) => s === "compensated"), `only compensated: ${statuses}`);
    await page.goto(`${url}/#/sagas`);
    await page.waitForSelector("#older", { timeout: 30_000 });
    const newest = await page.getAttribute("#sagas tr.saga", "data-id");
    await page.click("#older");
    await page.waitForSelector("#newest");
    const older = await page.$$eval("#sagas tr.saga", (rows) => rows.map((r) => r.dataset.id));
    assert.ok(older.length > 0 && older.every((id) => id < newest), "the next page is older");

    // A compensated saga's timeline, on a time axis, and its deep link in a new page.
    await page.goto(`${url}/#/sagas?status=compensated`);
    await page.click("#sagas tr.saga.compensated a.open");
    await page.waitForSelector("#timeline .step");
    const id = page.url().split("#/saga/")[1];
    assert.match(id, /^[0-9a-f-]{36}$/, "the URL names the saga");
    const fresh = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    await fresh.goto(`${url}/#/saga/${id}`);
    await fresh.waitForSelector("#timeline .step");
    assert.equal((await fresh.$$("#timeline .step")).length, 5, "place-order has five steps");
    assert.ok((await fresh.$$("#timeline .axis span")).length >= 2, "a time axis with ticks");
    const timeline = await fresh.textContent("#view");
    assert.match(timeline, /compensated/);
    assert.match(timeline, /was refused: (declined: insufficient funds|insufficient stock)/);
    assert.match(timeline, /plugin [0-9a-f]{12}/, "the plugin digest of each step");
    mkdirSync(shots, { recursive: true });
    await fresh.screenshot({ path: resolve(shots, "dashboard-saga.png"), fullPage: true });

    // A step's link to a record it wrote.
    await fresh.click("#timeline a.record");
    await fresh.waitForFunction(() => location.hash.startsWith("#/records/"));
    await fresh.waitForSelector("#records tr.here td.mono");

    // A choreographed order, found by its id, and its event chain.
    assert.equal((await post(url, "/v1/services/order/place", "place-chain-1",
      { order: "chain-1", customer: "ada", sku: "mug", qty: 1, amount: 300 })).status, 200);
    await page.fill("#search", "chain-1");
    await page.click("#search-form button");
    await page.waitForSelector("#found-chain a");
    await page.click("#found-chain a");
    await page.waitForFunction(() => document.querySelector("#events")?.textContent.includes("notification.send-confirmation: delivered"), null, { timeout: 30_000 });
    assert.match(await page.textContent("#events"), /order-placed[\s\S]*stock-reserved[\s\S]*payment-completed[\s\S]*order-completed/);

    // A stuck saga, retried from its page: the dashboard asks for the admin token (the
    // demo printed it), says the retry was done, and the saga finishes compensating.
    const stuck = await (await post(url, "/v1/sagas/place-order?wait=20s", "browser-stuck",
      { order: "browser-stuck", customer: "poor-paul", sku: "desk", qty: 1, amount: 9900, release_transient_failures: 3 })).json();
    assert.equal(stuck.status, "stuck");
    await page.goto(`${url}/#/stuck`);
    await page.click(`#sagas tr[data-id="${stuck.id}"] button.retry`);
    await page.waitForSelector("#toast .ok");
    assert.match(await page.textContent("#toast"), /retry of saga .*: done \(202\)/);
    await eventually(() => fetch(`${url}/v1/sagas/${stuck.id}`).then((r) => r.json()), (s) => s.status === "compensated", "the retried saga compensates");
    assert.equal(asked.length, 1, "the dashboard asked for the admin token once");
    assert.match(asked[0], /admin token/);

    // A dead letter, and its redelivery from the dead-letter view.
    assert.equal((await post(url, "/v1/services/order/place", "place-dead-1",
      { order: "dead-1", customer: "ada", sku: "mug", qty: 1, amount: 300, notification_transient_failures: 5 })).status, 200);
    await page.goto(`${url}/#/dead`);
    await page.waitForSelector("#dead tr.dead-letter", { timeout: 30_000 });
    await page.screenshot({ path: resolve(shots, "dashboard-dead.png"), fullPage: true });
    await page.click("#dead tr.dead-letter button.redeliver");
    await page.waitForFunction(() => [...document.querySelectorAll("#toast .ok")].some((t) => t.textContent.includes("redelivery")));
    await eventually(() => fetch(`${url}/v1/events/dead`).then((r) => r.json()), (dead) => dead.length === 0, "no dead letter left");
    assert.equal(asked.length, 1, "the token is remembered for the session");

    // Pause: the live list stops moving.
    await page.goto(`${url}/#/sagas`);
    await page.waitForSelector("#sagas tr.saga");
    await page.click("#pause");
    assert.equal(await page.textContent("#live"), "paused");
    await new Promise((r) => setTimeout(r, 2000)); // a refresh under way when paused ends
    const before = await page.$$eval("#sagas tr.saga", (rows) => rows.map((r) => r.dataset.id).join());
    await new Promise((r) => setTimeout(r, 3500));
    const after = await page.$$eval("#sagas tr.saga", (rows) => rows.map((r) => r.dataset.id).join());
    assert.equal(after, before, "paused, the list did not change under traffic");
    await page.click("#pause");

    await page.screenshot({ path: resolve(shots, "dashboard.png"), fullPage: true });
  } finally {
    await browser.close();
    demo.kill("SIGTERM");
  }
});
