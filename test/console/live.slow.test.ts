import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { Browser, Page } from "playwright-core";
import { silentLogger } from "../../src/base/index.js";
import { loadConfig } from "../../src/control/config.js";
import { type Database, openDatabase } from "../../src/control/db/index.js";
import { initServer } from "../../src/control/init.js";
import { issueSecret } from "../../src/control/secrets.js";
import { type RunningServer, startServer } from "../../src/control/start.js";
import { createApiDispatcher, fetchJson } from "../../src/net/index.js";
import { chromiumMissing, launchChromium, shot } from "./browser.js";

const missing = chromiumMissing();

/** What a change may take to show: well under the slowest reload while the stream is up (15 s and 30 s). */
const LIVE_BOUND_MS = 5000;

/**
 * Live updates in a real browser: a viewer's console holds the event stream
 * (the session cookie, same origin, under the page's CSP) and shows what an
 * admin does through the API without a reload, faster than any reload the
 * page would do on its own while the stream is up.
 */
void describe("web console live updates in Chromium", missing ? { skip: missing } : {}, () => {
  let work = "";
  let server: RunningServer;
  let database: Database;
  let browser: Browser;
  let admin: <T>(p: string, body?: unknown) => Promise<T>;
  let viewerKey = "";

  before(async () => {
    work = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-console-live-"));
    const dataDir = path.join(work, "server");
    const init = await initServer({ dataDir, hostnames: ["127.0.0.1"] });
    server = await startServer(dataDir, {
      listen: "127.0.0.1:0",
      handleSignals: false,
      logger: silentLogger,
    });
    const dispatcher = createApiDispatcher({
      caPem: await fs.readFile(path.join(dataDir, "ca.pem"), "utf8"),
    });
    admin = <T>(p: string, body?: unknown) =>
      fetchJson<T>(dispatcher, `${server.url}${p}`, {
        ...(body !== undefined ? { method: "POST", body } : {}),
        headers: { authorization: `Bearer ${init.adminApiKey}` },
      });
    database = await openDatabase((await loadConfig(path.join(dataDir, "config.json"))).databaseUrl);
    const now = Date.now();
    await database.db
      .insertInto("servers")
      .values(
        ["live-01", "live-02", "live-03", "live-04"].map((name) => ({
          id: `srv_${name.replace("-", "")}`,
          name,
          hostname: name,
          state: "CONTINUOUS",
          lag_seconds: 1,
          backlog_bytes: 0,
          last_seen_at: now,
          inventory_json: null,
          replicator_id: null,
          token_id: null,
          registered_at: now - 3600_000,
          decommissioned_at: null,
        })),
      )
      .execute();
    const key = issueSecret("key");
    await database.db
      .insertInto("api_keys")
      .values({
        id: key.id,
        name: "wallboard",
        role: "viewer",
        key_hash: key.hash,
        created_at: now,
        created_by: "test",
        revoked_at: null,
        last_used_at: null,
      })
      .execute();
    viewerKey = key.value;
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    await database?.close();
    await server?.close();
    await fs.rm(work, { recursive: true, force: true });
  });

  /** Resolves once `locator`'s condition holds, with the milliseconds it took. */
  async function within(what: string, wait: () => Promise<unknown>): Promise<number> {
    const t = Date.now();
    await wait();
    const ms = Date.now() - t;
    console.log(`# console live: ${what} after ${ms} ms`);
    assert.ok(ms < LIVE_BOUND_MS, `${what} took ${ms} ms`);
    return ms;
  }

  async function live(page: Page): Promise<void> {
    await page.locator('#live[data-live="live"]').waitFor({ timeout: 10_000 });
  }

  void it("a viewer's pages show an admin's changes without a reload, within seconds", async () => {
    const context = await browser.newContext({
      ignoreHTTPSErrors: true,
      viewport: { width: 1360, height: 900 },
    });
    const page = await context.newPage();
    const problems: string[] = [];
    page.on("console", (m) => {
      if (m.type() === "error") problems.push(m.text());
    });
    page.on("pageerror", (e) => problems.push(String(e)));
    const streams: string[] = [];
    page.on("request", (r) => {
      if (r.url().includes("/api/v1/events") && r.headers()["accept"] === "text/event-stream")
        streams.push(r.url());
    });
    await page.goto(`${server.url}/`);
    await page.locator('input[name="apiKey"]').fill(viewerKey);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.locator('tr[data-server="live-01"]').waitFor({ timeout: 20_000 });
    await live(page);
    assert.equal(streams.length, 1, "one event stream, opened by the browser's EventSource");

    // The servers list: a decommissioned server leaves the table.
    await admin("/api/v1/servers/live-01/decommission", {});
    await within("a decommissioned server left the servers list", () =>
      page.locator('tr[data-server="live-01"]').waitFor({ state: "detached", timeout: LIVE_BOUND_MS }),
    );
    await shot(page, "live-01-servers");

    // The events page: the event itself appears at the top.
    await page.locator("nav.nav").getByRole("link", { name: "Events & audit" }).click();
    await page.locator("#events-table").waitFor();
    await admin("/api/v1/servers/live-02/decommission", {});
    await within("its event showed on the events page", () =>
      page
        .locator("#events-table tbody tr")
        .first()
        .filter({ hasText: "server.decommissioned" })
        .filter({ hasText: "live-02" })
        .waitFor({ timeout: LIVE_BOUND_MS }),
    );
    await shot(page, "live-02-events");

    // A server's page: decommissioned, it shows so.
    await page.goto(`${server.url}/#/servers/live-03`);
    await page.locator("h1", { hasText: "live-03" }).waitFor();
    await live(page);
    await admin("/api/v1/servers/live-03/decommission", {});
    await within("the server page showed the decommission", () =>
      page.locator("h1 .badge", { hasText: /decommissioned/i }).waitFor({ timeout: LIVE_BOUND_MS }),
    );
    assert.deepEqual(
      problems.filter((p) => !/Failed to load resource.*401/.test(p)), // the session check before signing in
      [],
      "no script errors or CSP violations",
    );
    await context.close();
  });

  void it("without the stream (a proxy refuses it), the pages poll and still catch up", async () => {
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await context.newPage();
    let refused = 0;
    await page.route("**/api/v1/events*", (route) => {
      if (route.request().headers()["accept"] !== "text/event-stream") return route.continue();
      refused++;
      return route.fulfill({ status: 502, body: "" });
    });
    await page.goto(`${server.url}/`);
    await page.locator('input[name="apiKey"]').fill(viewerKey);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.locator('tr[data-server="live-04"]').waitFor({ timeout: 20_000 });
    await page.locator('#live[data-live="down"]').waitFor({ timeout: 10_000 });
    assert.ok(refused >= 1);
    await shot(page, "live-03-polling", false);
    await admin("/api/v1/servers/live-04/decommission", {});
    // The servers list polls every 5 s while the stream is down.
    await page.locator('tr[data-server="live-04"]').waitFor({ state: "detached", timeout: 8000 });
    await context.close();
  });
});
