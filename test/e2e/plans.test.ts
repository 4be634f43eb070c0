import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { ManualClock, systemClock } from "../../src/base/index.js";
import { recordPit } from "../../src/control/catalog.js";
import { completeCommand } from "../../src/control/commands.js";
import { reportFrozen } from "../../src/control/group-pits.js";
import { loadConfig } from "../../src/control/config.js";
import { type Database, openDatabase } from "../../src/control/db/index.js";
import { type Repository, importDisks, openRepository } from "../../src/store/index.js";
import { runLifeboat } from "../support/cli.js";
import { writeMixedImage } from "../support/images.js";
import { type Site, startSite } from "../support/lifeboat-site.js";
import { waitForJob } from "../support/site-actions.js";

interface JobView {
  id: string;
  type: string;
  state: string;
  createdAt: string;
  finishedAt: string | null;
  parentJobId: string | null;
  result: Record<string, unknown> | null;
}

/** Recovery plans on a running control plane: three servers with one PIT each, launched in waves. */
void describe("recovery plans", () => {
  let work = "";
  let site: Site;
  let database: Database;
  let repo: Repository;
  let cli: (args: string[]) => ReturnType<typeof runLifeboat>;
  const serverIds: Record<string, string> = {};

  before(async () => {
    work = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-plans-"));
    site = await startSite(work);
    repo = await site.openRepo();
    const config = await loadConfig(path.join(site.dataDir, "config.json"));
    database = await openDatabase(config.databaseUrl);
    for (const [i, name] of ["db-01", "app-01", "app-02"].entries()) {
      const who = await site.register(name);
      serverIds[name] = who.serverId;
      const image = path.join(work, `${name}.img`);
      await writeMixedImage(image, 4 << 20, 100 + i, 1 << 20);
      const { pit } = await importDisks(repo, { server: who.serverName, disks: [image] });
      await recordPit(database, repo.config.id, who.serverId, pit);
    }
    const keyFile = path.join(work, "admin.key");
    await fs.writeFile(keyFile, site.adminKey, { mode: 0o600 });
    const common = [
      "--endpoint",
      site.url,
      "--ca-file",
      path.join(site.dataDir, "ca.pem"),
      "--api-key-file",
      keyFile,
    ];
    cli = (args) => runLifeboat([...args, ...common], work);
  });
  after(async () => {
    await database?.close();
    await repo?.close();
    await site?.close();
    await fs.rm(work, { recursive: true, force: true });
  });

  const children = async (planJob: string) =>
    (await site.api<{ jobs: JobView[] }>("/api/v1/jobs")).jobs
      .filter((j) => j.parentJobId === planJob)
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt));

  void it("runs its waves in order, each at the plan's PITs, and reports each wave", async () => {
    const made = await cli([
      "plans",
      "create",
      "erp",
      "--wave",
      "db:db-01",
      "--wave",
      "app:app-01,app-02",
      "--json",
    ]);
    assert.equal(made.code, 0, made.stderr);
    const shown = await cli(["plans", "show", "erp"]);
    assert.match(shown.stdout, /wave 1 db: db-01\n {2}wave 2 app: app-01, app-02/);

    const r = await cli(["plans", "run", "erp", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const { job } = JSON.parse(r.stdout) as { job: JobView };
    assert.equal(job.state, "succeeded");
    const waves = await children(job.id);
    assert.deepEqual(
      waves.map((w) => w.state),
      ["succeeded", "succeeded"],
    );
    assert.ok(waves[0]!.finishedAt! <= waves[1]!.createdAt, "wave 2 started after wave 1 finished");
    const second = waves[1]!.result as { outputs: { servers: { server: string }[] } };
    assert.deepEqual(second.outputs.servers.map((s) => s.server).sort(), ["app-01", "app-02"]);
    const plan = job.result as { waves: { name: string; state: string }[]; pits: Record<string, string> };
    assert.deepEqual(
      plan.waves.map((w) => [w.name, w.state]),
      [
        ["db", "succeeded"],
        ["app", "succeeded"],
      ],
    );
    assert.equal(Object.keys(plan.pits).length, 3);
  });

  void it("stops at a failing wave with the reason; later waves never start", async () => {
    // The block target without devices fails its first step: wave 1 fails.
    const { plan } = await site.api<{ plan: { id: string } }>("/api/v1/plans", {
      method: "POST",
      body: {
        name: "erp-broken",
        waves: [
          { name: "db", servers: ["db-01"] },
          { name: "app", servers: ["app-01"] },
        ],
        options: { target: "block" },
      },
    });
    const r = await cli(["plans", "run", plan.id, "--json"]);
    assert.equal(r.code, 1);
    const { job } = JSON.parse(r.stdout) as { job: JobView };
    assert.equal(job.state, "failed");
    const error = (job.result as { error: { code: string; message: string } }).error;
    assert.equal(error.code, "PLAN_WAVE_FAILED");
    assert.match(error.message, /wave 1 \(db\) failed: db-01: .*device/);
    assert.equal((await children(job.id)).length, 1, "wave 2 was never created");
  });

  void it("refuses a server in two waves, an unknown server and a taken name", async () => {
    const refuse = async (body: unknown) => {
      try {
        await site.api("/api/v1/plans", { method: "POST", body });
        return "accepted";
      } catch (err) {
        return (err as { code?: string }).code;
      }
    };
    assert.equal(
      await refuse({
        name: "x",
        waves: [
          { name: "a", servers: ["db-01"] },
          { name: "b", servers: ["db-01"] },
        ],
      }),
      "PLAN_INVALID",
    );
    assert.equal(await refuse({ name: "y", waves: [{ name: "a", servers: ["nope"] }] }), "SERVER_NOT_FOUND");
    assert.equal(await refuse({ name: "erp", waves: [{ name: "a", servers: ["db-01"] }] }), "PLAN_EXISTS");
  });

  void it("a plan of one consistency group launches the group PIT's members, not each server's latest", async () => {
    const names = ["db-01", "app-01", "app-02"];
    for (const name of names)
      await site.api(`/api/v1/servers/${serverIds[name]}`, { method: "PATCH", body: { group: "erp-group" } });
    // A group PIT as the agents make it: each member freezes at the barrier (released with one
    // takenAt), writes its PIT at that time and reports it. The agents' side is played here.
    const asked = await site.api<{
      groupPitId: string;
      jobId: string;
      commands: { serverId: string; commandId: string }[];
    }>("/api/v1/groups/erp-group/pits", { method: "POST", body: {} });
    let takenAt = 0;
    for (const c of asked.commands) {
      const r = await reportFrozen(database, systemClock, c.serverId, c.commandId);
      if ("proceed" in r.state && r.state.proceed) takenAt = r.state.takenAt;
    }
    assert.ok(takenAt > 0, "the barrier released once every member froze");
    const atBarrier = await openRepository(path.join(site.dataDir, "repo"), {
      keyFile: path.join(site.dataDir, "keys", "repo.key"),
      clock: new ManualClock(takenAt),
    });
    const members: Record<string, string> = {};
    try {
      for (const [i, name] of names.entries()) {
        const image = path.join(work, `${name}-group.img`);
        await writeMixedImage(image, 4 << 20, 200 + i, 1 << 20);
        const { pit } = await importDisks(atBarrier, { server: name, disks: [image] });
        await recordPit(database, repo.config.id, serverIds[name]!, pit);
        members[serverIds[name]!] = pit.id;
      }
    } finally {
      await atBarrier.close();
    }
    for (const c of asked.commands)
      await completeCommand(database, systemClock, c.serverId, c.commandId, {
        ok: true,
        result: { pitId: members[c.serverId], takenAt },
      });
    assert.equal((await waitForJob(site, asked.jobId)).state, "succeeded", "the group PIT is done");
    // Then each server takes a PIT of its own, later than the group's.
    await new Promise((r) => setTimeout(r, 5));
    const latest: Record<string, string> = {};
    for (const [i, name] of names.entries()) {
      const image = path.join(work, `${name}-later.img`);
      await writeMixedImage(image, 4 << 20, 300 + i, 1 << 20);
      const { pit } = await importDisks(repo, { server: name, disks: [image] });
      assert.ok(pit.timeMs > takenAt);
      await recordPit(database, repo.config.id, serverIds[name]!, pit);
      latest[serverIds[name]!] = pit.id;
    }

    const { plan } = await site.api<{ plan: { id: string } }>("/api/v1/plans", {
      method: "POST",
      body: {
        name: "erp-group",
        waves: [
          { name: "db", servers: ["db-01"] },
          { name: "app", servers: ["app-01", "app-02"] },
        ],
      },
    });
    const started = await site.api<{ job: JobView }>(`/api/v1/plans/${plan.id}/run`, {
      method: "POST",
      body: {},
    });
    const job = await waitForJob(site, started.job.id);
    assert.equal(job.state, "succeeded", JSON.stringify(job.result));
    const result = job.result as { groupPitId: string | null; pits: Record<string, string> };
    assert.equal(result.groupPitId, asked.groupPitId);
    assert.deepEqual(result.pits, members);
    const waves = await children(job.id);
    assert.equal(waves.length, 2);
    const launched: Record<string, string> = {};
    for (const w of waves) {
      assert.equal(w.state, "succeeded");
      const { job: full } = await site.api<{ job: { params: { pits: Record<string, string> } } }>(
        `/api/v1/jobs/${w.id}`,
      );
      Object.assign(launched, full.params.pits);
    }
    assert.deepEqual(launched, members, "every wave launched the group PIT's member");
    for (const id of Object.values(serverIds))
      assert.notEqual(launched[id], latest[id], "not the latest PIT");
    const times = new Set<number>();
    for (const name of names) {
      const { pits } = await site.api<{ pits: { id: string; time: string }[] }>(
        `/api/v1/pits?server=${serverIds[name]}`,
      );
      times.add(Date.parse(pits.find((p) => p.id === members[serverIds[name]!])!.time));
    }
    assert.deepEqual([...times], [takenAt], "the members share the group's takenAt");
  });
});
