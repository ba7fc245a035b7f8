// The dashboard, as a person sees it: the real `wasaga demo` binary with generated
// traffic, opened in headless Chromium. Finds a completed and a compensated saga,
// opens one saga's timeline, and saves a screenshot (target/dashboard.png).
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

/** Starts the demo on a free port; resolves with its URL and process. */
function startDemo() {
  const demo = spawn(binary, ["demo", "--listen", "127.0.0.1:0", "--traffic", "40"], {
    env: { ...process.env, WASAGA_LOG: "warn" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolveUrl, reject) => {
    demo.on("error", reject);
    const lines = createInterface({ input: demo.stdout });
    lines.once("line", (line) => {
      const url = line.replace("listening on ", "").trim();
      if (!url.startsWith("http://")) reject(new Error(`unexpected first line: ${line}`));
      resolveUrl({ url, demo });
    });
  });
}

test("the dashboard shows completed and compensated sagas and a saga's timeline", { timeout: 90_000 }, async () => {
  const { url, demo } = await startDemo();
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

    mkdirSync(dirname(screenshot), { recursive: true });
    await page.screenshot({ path: screenshot, fullPage: true });
  } finally {
    await browser.close();
    demo.kill("SIGTERM");
  }
});
