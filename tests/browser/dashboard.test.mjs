// The dashboard, as a person sees it: the real `wasaga demo` binary with generated
// traffic, opened in headless Chromium. Finds a completed and a compensated saga,
// opens one saga's timeline, retries a stuck saga as an operator (the dashboard asks
// for the admin token the demo printed), and saves a screenshot (target/dashboard.png).
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
const screenshot = process.env.SCREENSHOT ?? resolve(root, "target/dashboard.png");

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

test("the dashboard shows completed and compensated sagas and a saga's timeline", { timeout: 90_000 }, async () => {
  const { url, adminToken, demo } = await startDemo();
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    await page.goto(url);
    await page.waitForSelector("tr.saga.completed", { timeout: 30_000 });
    await page.waitForSelector("tr.saga.compensated", { timeout: 30_000 });
    const completed = Number(await page.textContent(".count.completed b"));
    assert.ok(completed > 0, `the counts show completed sagas (${completed})`);

    await page.click("tr.saga.compensated");
    await page.waitForSelector("#timeline .step");
    const steps = await page.$$eval("#timeline .step", (nodes) => nodes.map((n) => n.textContent));
    assert.equal(steps.length, 5, "place-order has five steps");
    const timeline = await page.textContent("#timeline");
    assert.match(timeline, /compensated/);
    assert.match(timeline, /was refused: (declined: insufficient funds|insufficient stock)/);
    assert.match(timeline, /plugin [0-9a-f]{12}/, "the plugin digest of each step");

    await page.selectOption("#service", "inventory");
    await page.fill("#prefix", "stock/");
    await page.click("#browse");
    await page.waitForSelector("#records tr td.mono");
    assert.match(await page.textContent("#records"), /stock\/lamp/);

    // A choreographed order, and its event chain.
    const placed = await fetch(`${url}/v1/services/order/place`, {
      method: "POST",
      headers: { "Idempotency-Key": "place-chain-1", "Correlation-Id": "chain-1" },
      body: JSON.stringify({ order: "chain-1", customer: "ada", sku: "mug", qty: 1, amount: 300 }),
    });
    assert.equal(placed.status, 200);
    await page.fill("#correlation", "chain-1");
    await page.click("#chain");
    await page.waitForFunction(() => document.querySelector("#events").textContent.includes("notification.send-confirmation: delivered"), null, { timeout: 30_000 });
    assert.match(await page.textContent("#events"), /order-placed[\s\S]*stock-reserved[\s\S]*payment-completed[\s\S]*order-completed/);

    // A stuck saga, retried from the dashboard: the Retry button asks for the admin
    // token (the demo printed it), then the saga finishes its compensation.
    const stuck = await fetch(`${url}/v1/sagas/place-order?wait=20s`, {
      method: "POST",
      headers: { "Idempotency-Key": "browser-stuck" },
      body: JSON.stringify({ order: "browser-stuck", customer: "poor-paul", sku: "desk", qty: 1, amount: 9900,
                             release_transient_failures: 3 }),
    }).then((r) => r.json());
    assert.equal(stuck.status, "stuck");
    const asked = [];
    page.on("dialog", (dialog) => { asked.push(dialog.message()); dialog.accept(adminToken); });
    const retry = page.locator(`#stuck tr:has-text("${stuck.id}") button.retry`);
    await retry.waitFor({ timeout: 30_000 });
    await retry.click();
    let status = "stuck";
    for (let i = 0; i < 100 && status !== "compensated"; i++) {
      await new Promise((r) => setTimeout(r, 200));
      status = (await fetch(`${url}/v1/sagas/${stuck.id}`).then((r) => r.json())).status;
    }
    assert.equal(status, "compensated", "the operator's retry finished the compensation");
    assert.equal(asked.length, 1, "the dashboard asked for the admin token once");
    assert.match(asked[0], /admin token/);

    mkdirSync(dirname(screenshot), { recursive: true });
    await page.screenshot({ path: screenshot, fullPage: true });
  } finally {
    await browser.close();
    demo.kill("SIGTERM");
  }
});
