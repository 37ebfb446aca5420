// The web console in real Chromium (Debian's package), driven by Playwright.
// scripts/browser-test.sh starts payg (the release binary) on a fresh
// database and passes its address, the database URL and a finance and an
// admin account in the environment; this file is the journey of the issue:
// a consumer signs up, creates a key, calls, sees the API's figures; finance
// closes last month; the consumer sees the invoice with the API's total;
// 404 for another user's invoice, 403 for a finance page, a form without
// its CSRF token refused, the CSP on every page, no console error anywhere,
// and screenshots of every page at 375 px and 1280 px.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const BASE = process.env.PAYG_URL;
const DATABASE_URL = process.env.PAYG_DATABASE_URL;
const FINANCE = { email: process.env.FINANCE_EMAIL, password: process.env.FINANCE_PASSWORD };
const ADMIN = { email: process.env.ADMIN_EMAIL, password: process.env.ADMIN_PASSWORD };
const SHOTS = process.env.SCREENSHOTS ?? "target/screenshots";
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const required = {
  PAYG_URL: BASE, PAYG_DATABASE_URL: DATABASE_URL,
  FINANCE_EMAIL: FINANCE.email, FINANCE_PASSWORD: FINANCE.password,
  ADMIN_EMAIL: ADMIN.email, ADMIN_PASSWORD: ADMIN.password,
};
for (const [name, value] of Object.entries(required)) {
  if (!value) throw new Error(`${name} is not set: run this through scripts/browser-test.sh`);
}

const run = Date.now().toString(36);
const consumer = { name: "Ada Lovelace", email: `ada-${run}@example.com`, password: "correct-horse-battery-staple" };
const other = { email: `other-${run}@example.com`, password: "another-long-password" };
const CSP_NEEDS = ["default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"];

let browser;
/** Every console error and page error, with the page it came from. */
const consoleErrors = [];
/** URLs refused on purpose (404/403): Chromium logs the status of those. */
const refusedOnPurpose = new Set();
/** Every document response: its URL and headers. */
const documents = [];

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
});

async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on("console", (msg) => {
    if (msg.type() === "error") consoleErrors.push({ url: page.url(), where: msg.location()?.url, text: msg.text() });
  });
  page.on("pageerror", (err) => consoleErrors.push({ url: page.url(), text: String(err) }));
  page.on("response", (res) => {
    if (res.request().resourceType() === "document") documents.push({ url: res.url(), headers: res.headers() });
  });
  // The close and revoke forms ask first (console.js); say yes.
  page.on("dialog", (dialog) => dialog.accept());
  return page;
}

/** A regular expression matching `text` literally. */
const literally = (text) => new RegExp(text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));

/** Goes to `path` and expects `status` (200 unless said). */
async function visit(page, path, status = 200) {
  const res = await page.goto(`${BASE}${path}`);
  assert.equal(res.status(), status, `${path}: ${res.status()}`);
  return res;
}

/** Clicks something that submits a form or follows a link, and waits for the next page. */
async function clickAndLoad(page, selector) {
  await Promise.all([page.waitForNavigation(), page.click(selector)]);
}

/** Screenshots at both widths, and no horizontal scrolling at either. */
async function shoot(page, name) {
  for (const width of [375, 1280]) {
    await page.setViewportSize({ width, height: 900 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 0, `${name} scrolls sideways by ${overflow}px at ${width}px`);
    await page.screenshot({ path: `${SHOTS}/${name}-${width}.png`, fullPage: true });
  }
  await page.setViewportSize({ width: 1280, height: 900 });
}

async function signIn(page, who) {
  await page.goto(`${BASE}/console/sign-in`);
  await page.fill("#email", who.email);
  await page.fill("#password", who.password);
  await Promise.all([page.waitForURL(`${BASE}/console`), page.click("main button[type=submit]")]);
}

async function api(path, { key, token, method = "GET", body } = {}) {
  const headers = { "content-type": "application/json" };
  if (key) headers["x-api-key"] = key;
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(`${BASE}${path}`, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : null };
}

async function tokenFor(who) {
  const res = await api("/api/v1/auth/login", { method: "POST", body: { email: who.email, password: who.password } });
  assert.equal(res.status, 200, `login ${who.email}`);
  return res.json.access_token;
}

function psql(sql) {
  return execFileSync("psql", ["-w", "-qtA", "-v", "ON_ERROR_STOP=1", DATABASE_URL, "-c", sql], { encoding: "utf8" }).trim();
}

/** Last month's usage for a user, as the meter would have left it (UTC billing zone): the month's
 *  counter and the same calls under the price version in force at its start. */
function seedLastMonth(email, calls, failed, cost) {
  const out = psql(`
    WITH ins AS (
      INSERT INTO usage_records (user_id, api_id, period, calls, failed_calls)
      SELECT u.id, a.id, date_trunc('month', (now() AT TIME ZONE 'UTC') - interval '1 month')::date, ${calls}, ${failed}
      FROM users u, apis a WHERE u.email = '${email}' AND a.slug = 'tools-uuid'
      RETURNING user_id, api_id, period, calls, failed_calls
    ), by_version AS (
      INSERT INTO usage_prices (user_id, api_id, period, price_id, calls, failed_calls)
      SELECT i.user_id, i.api_id, i.period,
             coalesce((SELECT p.id FROM prices p
                       WHERE p.api_id = i.api_id AND p.effective_from <= i.period::timestamp AT TIME ZONE 'UTC'
                       ORDER BY p.effective_from DESC LIMIT 1), 0),
             i.calls, i.failed_calls
      FROM ins i)
    UPDATE users SET total_cost = total_cost + ${cost} WHERE id IN (SELECT user_id FROM ins) RETURNING email`);
  assert.equal(out, email);
}

function lastMonth() {
  const now = new Date();
  const d = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 1));
  return `${d.getUTCFullYear()}-${String(d.getUTCMonth() + 1).padStart(2, "0")}`;
}

test("the console, end to end, in Chromium", async (t) => {
  const page = await newPage();
  let key;

  await t.test("signing up lands on this month", async () => {
    await page.goto(`${BASE}/`);
    assert.equal(new URL(page.url()).pathname, "/console/sign-in", "/ leads to the console, which asks to sign in");
    await shoot(page, "sign-in");
    await page.click("text=Create an account");
    await shoot(page, "sign-up");
    await page.fill("#name", consumer.name);
    await page.fill("#email", consumer.email);
    await page.fill("#password", consumer.password);
    await Promise.all([page.waitForURL(`${BASE}/console`), page.click("main button[type=submit]")]);
    assert.match(await page.textContent("h1"), /This month/);
  });

  await t.test("a key is created on the keys page and shown once", async () => {
    await page.goto(`${BASE}/console/keys`);
    await shoot(page, "keys-empty");
    await page.fill("#key-name", "browser test");
    await clickAndLoad(page, "text=Create key");
    key = await page.inputValue("#new-key");
    assert.match(key, /^payg_/);
    await shoot(page, "keys-created");
    await page.goto(`${BASE}/console/keys`);
    assert.equal(await page.locator("#new-key").count(), 0, "the key is not shown again");
    assert.match(await page.textContent("#keys"), /browser test/);
  });

  await t.test("metered calls with it show on the dashboard as the API gives them", async () => {
    for (let i = 0; i < 7; i++) {
      assert.equal((await api("/api/v1/tools/uuid", { key })).status, 200);
    }
    const bad = await fetch(`${BASE}/api/v1/tools/hash`, { method: "POST", headers: { "x-api-key": key, "content-type": "application/json" }, body: "{" });
    assert.equal(bad.status, 400, "a failed call");
    let current;
    for (let i = 0; i < 100; i++) {
      current = (await api("/api/v1/billing/current", { key })).json;
      if (current.lines.reduce((n, l) => n + l.calls, 0) === 8) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const calls = current.lines.reduce((n, l) => n + l.calls, 0);
    const failed = current.lines.reduce((n, l) => n + l.failed_calls, 0);
    assert.equal(calls, 8);
    await page.goto(`${BASE}/console`);
    assert.equal((await page.textContent("#current-calls")).trim(), String(calls));
    assert.equal((await page.textContent("#current-failed")).trim(), String(failed));
    assert.equal((await page.textContent("#current-cost")).trim(), `${current.total} ${current.currency}`);
    for (const line of current.lines) {
      const row = page.locator("main table tbody tr", { hasText: line.slug });
      assert.match(await row.textContent(), literally(`${line.amount} ${current.currency}`));
    }
    await shoot(page, "this-month");
  });

  await t.test("the other consumer pages render", async () => {
    for (const [path, name] of [["/console/usage", "usage"], ["/console/apis", "apis"], ["/console/profile", "profile"], ["/console/invoices", "invoices-empty"]]) {
      const res = await page.goto(`${BASE}${path}`);
      assert.equal(res.status(), 200, path);
      if (path === "/console/usage") {
        // This month was counted with its days, on a fresh install too.
        assert.equal(await page.locator("svg.chart").count(), 1, "a chart of this month's days");
        assert.equal(await page.locator("#monthly-only").count(), 0);
        assert.match(await page.textContent("#daily-total"), /^8 calls /);
      }
      await shoot(page, name);
    }
    await visit(page, "/console/profile");
    await page.fill("#company", "Analytical Engines Ltd");
    await page.fill("#country", "GB");
    await clickAndLoad(page, "main button[type=submit]");
    assert.match(await page.textContent("main"), /Saved/);
    assert.equal(await page.inputValue("#company"), "Analytical Engines Ltd");
  });

  await t.test("a form posted without its CSRF token is refused and changes nothing", async () => {
    // From this site (Origin as the browser sends it), so only the token decides.
    const post = (form) => page.request.post(`${BASE}/console/keys`, { form, headers: { origin: BASE }, maxRedirects: 0 });
    assert.equal((await post({ name: "forged" })).status(), 403, "no token");
    assert.equal((await post({ name: "forged", csrf: "0".repeat(64) })).status(), 403, "a wrong token");
    await visit(page, "/console/keys");
    const token = await page.inputValue('form[action="/console/keys"] input[name=csrf]');
    assert.equal((await post({ name: "control", csrf: token })).status(), 200, "the page's own token works");
    await visit(page, "/console/keys");
    const keys = await page.textContent("#keys");
    assert.doesNotMatch(keys, /forged/);
    assert.match(keys, /control/);
  });

  await t.test("finance closes last month in the console", async () => {
    seedLastMonth(consumer.email, 1500, 10, "1.49");
    const reg = await api("/api/v1/auth/register", { method: "POST", body: { ...other, name: "Other User" } });
    assert.equal(reg.status, 201);
    seedLastMonth(other.email, 40, 0, "0.04");
    const financePage = await newPage();
    await signIn(financePage, FINANCE);
    await visit(financePage, "/console/finance");
    await shoot(financePage, "finance-periods");
    const period = lastMonth();
    await visit(financePage, `/console/finance/periods/${period}`);
    await shoot(financePage, "finance-period-open");
    await financePage.check("input[name=confirm]");
    await Promise.all([financePage.waitForURL(/\/console\/finance\?done=/), financePage.click(`button:has-text("Close ${period}")`)]);
    assert.match(await financePage.textContent("main"), new RegExp(`${period} is closed`));
    await visit(financePage, `/console/finance/periods/${period}`);
    assert.match(await financePage.textContent("#reconciliation"), /closed/);
    await shoot(financePage, "finance-period-closed");
    await visit(financePage, `/console/finance/invoices?period=${period}`);
    await shoot(financePage, "finance-invoices");
    await clickAndLoad(financePage, `#finance-invoices a >> nth=0`);
    await shoot(financePage, "finance-invoice");
    // Record a payment on it: the page says so and lists it.
    const reference = `wire-${run}`;
    await financePage.fill("#reference", reference);
    await clickAndLoad(financePage, "text=Record payment");
    assert.match(await financePage.textContent("main"), /Payment recorded\./);
    assert.match(await financePage.textContent("main"), literally(reference));
    await financePage.context().close();
  });

  await t.test("the consumer's invoices page shows the invoice with the API's total", async () => {
    const invoices = (await api("/api/v1/invoices", { key })).json.invoices;
    assert.equal(invoices.length, 1);
    const [invoice] = invoices;
    await page.goto(`${BASE}/console/invoices`);
    const row = page.locator("#invoices tbody tr", { hasText: invoice.number });
    assert.match(await row.textContent(), literally(`${invoice.total} ${invoice.currency}`));
    await shoot(page, "invoices");
    await Promise.all([page.waitForURL(`${BASE}/console/invoices/${invoice.id}`), row.locator("a").click()]);
    assert.equal((await page.textContent("#invoice-number")).trim(), invoice.number);
    assert.equal((await page.textContent("#invoice-total")).trim(), `${invoice.total} ${invoice.currency}`);
    await shoot(page, "invoice");
    await Promise.all([page.waitForURL(`${BASE}/console/invoices/${invoice.id}/print`), page.click("text=Printable invoice")]);
    assert.equal((await page.textContent("#invoice-total")).trim(), `${invoice.total} ${invoice.currency}`);
    await shoot(page, "invoice-print");
    await page.pdf({ path: `${SHOTS}/invoice.pdf`, format: "A4" });
  });

  await t.test("another user's invoice is 404; a finance page is 403", async () => {
    const otherToken = await tokenFor(other);
    const [theirs] = (await api("/api/v1/invoices", { token: otherToken })).json.invoices;
    const theirUrl = `${BASE}/console/invoices/${theirs.id}`;
    refusedOnPurpose.add(theirUrl);
    const res = await page.goto(theirUrl);
    assert.equal(res.status(), 404);
    await shoot(page, "not-found");
    refusedOnPurpose.add(`${BASE}/console/finance`);
    const finance = await page.goto(`${BASE}/console/finance`);
    assert.equal(finance.status(), 403);
    await shoot(page, "forbidden");
  });

  await t.test("admin pages render for an admin", async () => {
    const adminPage = await newPage();
    await signIn(adminPage, ADMIN);
    await visit(adminPage, "/console/admin");
    await shoot(adminPage, "admin-catalog");
    await clickAndLoad(adminPage, "#catalog a >> nth=0");
    assert.match(await adminPage.textContent("#prices"), /per call/);
    await shoot(adminPage, "admin-api");
    await visit(adminPage, "/console/admin/users");
    await shoot(adminPage, "admin-users");
    // Find the consumer and make them finance, in the page.
    await adminPage.fill("#email", consumer.email.toUpperCase());
    await clickAndLoad(adminPage, "main form.inline button[type=submit]");
    const row = adminPage.locator("#users tbody tr", { hasText: consumer.email });
    assert.equal(await row.count(), 1);
    await row.locator("select[name=role]").selectOption("finance");
    await clickAndLoad(adminPage, `#users tbody tr:has-text("${consumer.email}") button`);
    assert.match(await adminPage.textContent("main"), /Saved\./);
    const token = await tokenFor(consumer);
    assert.equal((await api("/api/v1/finance/invoices", { token })).status, 200, "the new role applies");
    await row.locator("select[name=role]").selectOption("consumer");
    await clickAndLoad(adminPage, `#users tbody tr:has-text("${consumer.email}") button`);
    await adminPage.context().close();
  });

  await t.test("signing out ends the session", async () => {
    await page.goto(`${BASE}/console`);
    await Promise.all([page.waitForURL(`${BASE}/console/sign-in`), page.click("text=Sign out")]);
    await page.goto(`${BASE}/console/keys`);
    assert.equal(new URL(page.url()).pathname, "/console/sign-in");
  });

  await t.test("every page carried the CSP and no page logged a console error", async () => {
    const consolePages = documents.filter((d) => new URL(d.url).pathname.startsWith("/console"));
    assert.ok(consolePages.length > 20, `${consolePages.length} console pages seen`);
    for (const d of consolePages) {
      const csp = d.headers["content-security-policy"] ?? "";
      for (const need of CSP_NEEDS) assert.ok(csp.includes(need), `${d.url}: CSP lacks ${need}`);
      assert.equal(d.headers["x-content-type-options"], "nosniff", d.url);
      assert.ok(d.headers["referrer-policy"], d.url);
    }
    const unexpected = consoleErrors.filter((e) => !(refusedOnPurpose.has(e.url) && /status of 40[34]/.test(e.text)));
    assert.deepEqual(unexpected, []);
  });
});
