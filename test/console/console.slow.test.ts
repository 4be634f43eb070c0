import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { after, before, describe, it } from "node:test";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { checkDisk, installAgent } from "../../src/agent/install.js";
import { AgentService } from "../../src/agent/service.js";
import { type Clock, silentLogger } from "../../src/base/index.js";
import { loadConfig } from "../../src/control/config.js";
import { type Database, openDatabase } from "../../src/control/db/index.js";
import { initServer } from "../../src/control/init.js";
import { type RunningServer, startServer } from "../../src/control/start.js";
import { issueSecret } from "../../src/control/secrets.js";
import { createApiDispatcher, fetchJson } from "../../src/net/index.js";
import { chromiumMissing, launchChromium, shot } from "./browser.js";

/** The agent's sleeps must not hold the test process open after it stopped. */
const agentClock: Clock = {
  now: () => Date.now(),
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms).unref()),
};

const missing = chromiumMissing();

/**
 * The web console in a real browser against a real server: a control plane
 * with its embedded replicator, an agent replicating a disk image, and
 * Chromium signing in, watching the server, launching a drill and reading its
 * log and report. Then a viewer's console, and a thousand servers.
 */
void describe("web console in Chromium", missing ? { skip: missing } : {}, () => {
  let work = "";
  let server: RunningServer;
  let agent: AgentService | undefined;
  let database: Database;
  let browser: Browser;
  let adminKey = "";
  let serverName = "";
  let api: <T>(p: string, o?: { method?: string; body?: unknown }) => Promise<T>;

  before(async () => {
    work = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-console-"));
    const dataDir = path.join(work, "server");
    const init = await initServer({ dataDir, hostnames: ["127.0.0.1"] });
    adminKey = init.adminApiKey;
    // Heartbeats every 2 s (a quarter of the timeout): the lag on the page is live within seconds.
    const configFile = path.join(dataDir, "config.json");
    const config = JSON.parse(await fs.readFile(configFile, "utf8")) as Record<string, unknown>;
    await fs.writeFile(configFile, JSON.stringify({ ...config, heartbeatTimeoutSeconds: 8 }));
    server = await startServer(dataDir, {
      listen: "127.0.0.1:0",
      handleSignals: false,
      logger: silentLogger,
    });
    const caPem = await fs.readFile(path.join(dataDir, "ca.pem"), "utf8");
    const dispatcher = createApiDispatcher({ caPem });
    api = <T>(p: string, o: { method?: string; body?: unknown } = {}) =>
      fetchJson<T>(dispatcher, `${server.url}${p}`, {
        ...(o.method ? { method: o.method } : {}),
        ...(o.body !== undefined ? { body: o.body } : {}),
        headers: { authorization: `Bearer ${adminKey}` },
      });

    // A protected server: an agent replicating an 8 MiB image (random, then zeros).
    const image = path.join(work, "web-01.img");
    await fs.writeFile(image, Buffer.concat([randomBytes(4 << 20), Buffer.alloc(4 << 20)]));
    const { token } = await api<{ token: string }>("/api/v1/tokens", {
      method: "POST",
      body: { role: "agent", uses: 1 },
    });
    const disk = await checkDisk(image, "image");
    const configDir = path.join(work, "agent");
    const installed = await installAgent({
      configDir,
      endpoint: server.url,
      token,
      caPem,
      hostname: "web-01",
      blockSize: 64 * 1024,
      disks: [disk],
      inventory: { disks: [{ index: 0, ...disk }] },
    });
    serverName = installed.serverName;
    agent = await AgentService.start({ configDir, clock: agentClock });
    for (let i = 0; agent.replication.status()?.state !== "CONTINUOUS"; i++) {
      if (i > 600)
        throw new Error(`the agent did not reach CONTINUOUS: ${agent.replication.status()?.state}`);
      await delay(100);
    }
    // A PIT to launch from, the operator's way.
    const pit = await api<{ commandId: string }>(`/api/v1/servers/${serverName}/pits`, {
      method: "POST",
      body: {},
    });
    for (let i = 0; ; i++) {
      const c = await api<{ state: string }>(`/api/v1/commands/${pit.commandId}`);
      if (c.state === "done") break;
      if (c.state === "failed" || c.state === "expired" || i > 600) throw new Error(`PIT: ${c.state}`);
      await delay(100);
    }
    // Six hours of lag history for the chart (heartbeats keep one sample a minute from now on).
    database = await openDatabase((await loadConfig(configFile)).databaseUrl);
    const id = installed.serverId;
    const now = Date.now();
    const samples = Array.from({ length: 360 }, (_, i) => ({
      server_id: id,
      at: now - (360 - i) * 60_000,
      lag_seconds: Math.max(
        0,
        3 + 2 * Math.sin(i / 18) + (i > 200 && i < 230 ? 40 - Math.abs(215 - i) * 2.5 : 0),
      ),
      backlog_bytes: 0,
    }));
    await database.db.insertInto("lag_samples").values(samples).execute();
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    await agent?.stop();
    await database?.close();
    await server?.close();
    await fs.rm(work, { recursive: true, force: true });
  });

  async function signIn(key: string, screenshot?: string): Promise<{ context: BrowserContext; page: Page }> {
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
    await page.goto(`${server.url}/`);
    await page.locator('input[name="apiKey"]').waitFor();
    await page.locator('input[name="apiKey"]').fill(key);
    if (screenshot !== undefined) await shot(page, screenshot);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.locator("#servers-table").waitFor({ timeout: 20_000 });
    assert.deepEqual(
      problems.filter((p) => !/Failed to load resource.*401/.test(p)),
      [],
      "no script errors or CSP violations",
    );
    return { context, page };
  }

  void it("an operator signs in, watches a live lag, launches a drill, follows its log and reads its report", async () => {
    const { context, page } = await signIn(adminKey, "01-sign-in");
    const row = page.locator(`tr[data-server="${serverName}"]`);
    await row.waitFor();
    // Live: a lag value from the agent's heartbeats shows without a reload.
    // Locators, not waitForFunction: the page's CSP forbids evaluating strings, as it should.
    await row.locator('td.lag:not([data-lag=""])').waitFor({ timeout: 20_000 });
    assert.match((await row.locator("td.lag").textContent()) ?? "", /^\d+(\.\d)? (ms|s)$/);
    // The disk turns Continuous once the replicator has acknowledged the end of the initial sync,
    // which a heartbeat reports a moment later: the row changes live.
    await row.getByText("Continuous").waitFor({ timeout: 20_000 });
    assert.match((await row.textContent()) ?? "", /Continuous/);
    await shot(page, "02-servers");

    await row.getByRole("link", { name: serverName }).click();
    await page.getByRole("button", { name: "Launch drill" }).waitFor();
    await page.locator(".chart canvas").waitFor();
    await page.locator(".timeline-dot").first().waitFor();
    await shot(page, "03-server");
    // An operator edits the server's replication settings in place.
    const replication = page.locator(".card", {
      has: page.locator("h2", { hasText: "Replication settings" }),
    });
    await replication.getByRole("button", { name: "Edit" }).click();
    await replication.locator('input[name="pitIntervalMinutes"]').fill("30");
    await replication.getByRole("button", { name: "Save" }).click();
    await replication
      .locator("dd", { hasText: "30" })
      .locator(".badge", { hasText: "this server" })
      .waitFor();
    const effective = await api<{ settings: { pitIntervalMinutes: number } }>(
      `/api/v1/servers/${serverName}/settings/replication`,
    );
    assert.equal(effective.settings.pitIntervalMinutes, 30);

    await page.getByRole("button", { name: "Launch drill" }).click();
    await page.locator("dialog[open]").waitFor();
    await shot(page, "04-drill-confirm");
    await page.getByRole("button", { name: "Start drill" }).click();
    await page.waitForURL(/#\/jobs\/job_/);
    await page.locator("#job-log .log-line").first().waitFor({ timeout: 20_000 });
    await page
      .locator("#job-state", { hasText: /^(succeeded|failed|terminated)$/ })
      .waitFor({ timeout: 120_000 });
    assert.equal(await page.locator("#job-state").textContent(), "succeeded");
    await page.locator("#report-outcome").waitFor({ timeout: 20_000 });
    assert.equal(await page.locator("#report-outcome").textContent(), "succeeded");
    assert.ok((await page.locator("#job-log .log-line").count()) > 1, "the step log shows");
    await shot(page, "05-job-drill-report");

    await page.locator("nav.nav").getByRole("link", { name: "Jobs" }).click();
    await page.locator("#jobs-table").waitFor();
    await shot(page, "06-jobs");
    await page.locator("nav.nav").getByRole("link", { name: "Replicators" }).click();
    await page.locator("h1", { hasText: "Replicators" }).waitFor();
    await page.locator(".empty, .table").first().waitFor();
    await shot(page, "07-replicators");
    await page.locator("nav.nav").getByRole("link", { name: "Failbacks" }).click();
    await page.locator("h1", { hasText: "Failbacks" }).waitFor();
    await page.locator(".empty", { hasText: "No failbacks" }).waitFor();
    await page.locator("nav.nav").getByRole("link", { name: "Tokens" }).click();
    await page.getByRole("button", { name: "Create token" }).click();
    await page.locator("#token-secret").waitFor();
    assert.match(
      (await page.locator("#token-secret").textContent()) ?? "",
      /^tok_[A-Za-z0-9]+\.[A-Za-z0-9_-]+$/,
    );
    await shot(page, "08-tokens");
    await page.locator("nav.nav").getByRole("link", { name: "Events & audit" }).click();
    await page.getByRole("tab", { name: "Audit log" }).click();
    await page.locator("td", { hasText: "launch.drill" }).first().waitFor();
    await shot(page, "09-audit");
    await context.close();
  });

  void it("a viewer sees no actions, and the API refuses them with 403", async () => {
    const key = issueSecret("key");
    await database.db
      .insertInto("api_keys")
      .values({
        id: key.id,
        name: "on-call viewer",
        role: "viewer",
        key_hash: key.hash,
        created_at: Date.now(),
        created_by: "test",
        revoked_at: null,
        last_used_at: null,
      })
      .execute();
    const { context, page } = await signIn(key.value);
    await page.goto(`${server.url}/#/servers/${serverName}`);
    await page.locator(".chart canvas").waitFor();
    assert.equal(await page.getByRole("button", { name: "Launch drill" }).count(), 0);
    assert.equal(await page.getByRole("button", { name: "Recover" }).count(), 0);
    assert.equal(await page.getByRole("button", { name: "Edit" }).count(), 0);
    assert.equal(await page.getByRole("link", { name: "Tokens" }).count(), 0);
    await shot(page, "10-viewer-server");
    const status = await page.evaluate(async (name) => {
      const r = await fetch("/api/v1/launches", {
        method: "POST",
        headers: { "content-type": "application/json", "x-lifeboat-csrf": "1" },
        body: JSON.stringify({ servers: [name] }),
      });
      return { status: r.status, code: ((await r.json()) as { code: string }).code };
    }, serverName);
    assert.deepEqual(status, { status: 403, code: "AUTH_FORBIDDEN" });
    // Signing out ends the session on the server, not only in the page.
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.locator('input[name="apiKey"]').waitFor();
    assert.equal(await page.evaluate(async () => (await fetch("/api/v1/session")).status), 401);
    await context.close();
  });

  void it("shows a thousand servers (time until the table is shown is measured)", async () => {
    const now = Date.now();
    const states = ["CONTINUOUS", "CONTINUOUS", "CONTINUOUS", "INITIAL_SYNC", "STALLED", "DISCONNECTED"];
    const rows = Array.from({ length: 1000 }, (_, i) => ({
      id: `srv_seed${String(i).padStart(4, "0")}`,
      name: `app-${String(i).padStart(4, "0")}`,
      hostname: `app-${i}`,
      state: states[i % states.length]!,
      lag_seconds: (i * 7) % 120,
      backlog_bytes: (i * 104_729) % (64 << 20),
      last_seen_at: i % 6 === 5 ? now - 3600_000 : now,
      inventory_json: null,
      replicator_id: null,
      token_id: null,
      registered_at: now - 86_400_000,
      decommissioned_at: null,
    }));
    // Nine in ten have a PIT, of ages from a minute to about six hours.
    const pits = rows
      .filter((_, i) => i % 10 !== 9)
      .map((r, i) => ({
        id: `pit${String(i).padStart(21, "0")}`,
        repository_id: "seeded",
        server_id: r.id,
        server_name: r.name,
        seq: 1,
        time_ms: now - 60_000 - ((i * 37) % 360) * 60_000,
        consistency: (["filesystem", "crash", "application"] as const)[i % 3]!,
        disks_json: "[]",
      }));
    for (let i = 0; i < pits.length; i += 100)
      await database.db
        .insertInto("pits")
        .values(pits.slice(i, i + 100))
        .execute();
    for (let i = 0; i < rows.length; i += 100)
      await database.db
        .insertInto("servers")
        .values(rows.slice(i, i + 100))
        .execute();
    const { context, page } = await signIn(adminKey);
    const t = Date.now();
    await page.reload();
    await page.locator("#servers-table tbody tr").nth(99).waitFor({ timeout: 30_000 });
    await page.locator(".toolbar-count", { hasText: "1001 servers" }).waitFor();
    const ms = Date.now() - t;
    console.log(`# console: 1,001 servers shown ${ms} ms after a reload`);
    // Worst first: a stalled or disconnected server heads the table.
    assert.match(
      (await page.locator("#servers-table tbody tr").first().textContent()) ?? "",
      /Stalled|Disconnected/,
    );
    await shot(page, "11-servers-1000", false);
    await page.locator("input.search").fill("app-0042");
    await page.locator(".toolbar-count", { hasText: "1 of 1001" }).waitFor();
    await context.close();
  });
});
