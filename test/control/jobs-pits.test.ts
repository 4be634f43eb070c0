import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, it } from "node:test";
import { isLifeboatError } from "../../src/base/index.js";
import { createJob, logJobStep } from "../../src/control/jobs.js";
import { forEachDatabase } from "../support/databases.js";
import { runLifeboat } from "../support/cli.js";
import { T0, testApp } from "./helpers.js";
import { startTlsServer } from "./tls-helpers.js";

let tmp = "";
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-jobs-"));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

interface JobView {
  id: string;
  type: string;
  state: string;
  serverIds: string[];
  params: Record<string, unknown>;
  result: unknown;
  createdAt: string;
  updatedAt: string;
  finishedAt: string | null;
}

forEachDatabase("jobs and the PIT catalog", (open, dialect) => {
  void it("jobs: created by a function, advanced with a step log, listed and shown to any operator", async () => {
    const t = await testApp(await open());
    const drill = await createJob(t.database, t.clock, {
      type: "drill",
      serverIds: ["srv_a"],
      params: { pit: "latest" },
      createdBy: "apikey:key_x",
    });
    t.clock.advance(1000);
    const recovery = await createJob(t.database, t.clock, {
      type: "recovery",
      serverIds: ["srv_b", "srv_a"],
      createdBy: "system",
    });
    t.clock.advance(1000);
    await logJobStep(t.database, t.clock, drill.id, { message: "materializing disk 0", state: "running" });
    t.clock.advance(500);
    await logJobStep(t.database, t.clock, drill.id, { level: "warn", message: "initramfs lacks virtio_blk" });
    t.clock.advance(500);
    await logJobStep(t.database, t.clock, drill.id, {
      message: "image written",
      state: "succeeded",
      result: { images: ["/srv/out/disk0.img"] },
    });
    await assert.rejects(
      logJobStep(t.database, t.clock, drill.id, { message: "again", state: "running" }),
      (err) => isLifeboatError(err, "JOB_FINISHED"),
    );
    await assert.rejects(logJobStep(t.database, t.clock, "job_nope", { message: "x" }), (err) =>
      isLifeboatError(err, "JOB_NOT_FOUND"),
    );
    // concurrent writers never take the same seq
    await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        logJobStep(t.database, t.clock, recovery.id, { message: `step ${i}` }),
      ),
    );

    const list = await t.app.inject({ url: "/api/v1/jobs", headers: t.auth("viewer") });
    assert.equal(list.statusCode, 200, list.body);
    const jobs = list.json<{ jobs: JobView[] }>().jobs;
    assert.deepEqual(
      jobs.map((j) => [j.id, j.type, j.state]),
      [
        [recovery.id, "recovery", "pending"],
        [drill.id, "drill", "succeeded"],
      ],
    );
    const filtered = await t.app.inject({ url: "/api/v1/jobs?server=srv_b", headers: t.auth("viewer") });
    assert.deepEqual(
      filtered.json<{ jobs: JobView[] }>().jobs.map((j) => j.id),
      [recovery.id],
    );
    const byState = await t.app.inject({ url: "/api/v1/jobs?state=succeeded", headers: t.auth("viewer") });
    assert.deepEqual(
      byState.json<{ jobs: JobView[] }>().jobs.map((j) => j.id),
      [drill.id],
    );
    const one = await t.app.inject({ url: `/api/v1/jobs/${drill.id}`, headers: t.auth("operator") });
    const shown = one.json<{
      job: JobView;
      log: { seq: number; level: string; message: string; at: string }[];
    }>();
    assert.equal(shown.job.state, "succeeded");
    assert.deepEqual(shown.job.result, { images: ["/srv/out/disk0.img"] });
    assert.equal(shown.job.createdAt, new Date(T0).toISOString());
    assert.equal(shown.job.updatedAt, new Date(T0 + 3000).toISOString());
    assert.equal(shown.job.finishedAt, new Date(T0 + 3000).toISOString());
    assert.deepEqual(
      shown.log.map((l) => [l.seq, l.level, l.message]),
      [
        [1, "info", "materializing disk 0"],
        [2, "warn", "initramfs lacks virtio_blk"],
        [3, "info", "image written"],
      ],
    );
    const rec = await t.app.inject({ url: `/api/v1/jobs/${recovery.id}`, headers: t.auth("viewer") });
    assert.deepEqual(
      rec.json<{ log: { seq: number }[] }>().log.map((l) => l.seq),
      Array.from({ length: 20 }, (_, i) => i + 1),
    );
    const missing = await t.app.inject({ url: "/api/v1/jobs/job_nope", headers: t.auth("viewer") });
    assert.equal(missing.statusCode, 404);
    assert.equal(missing.json<{ code: string }>().code, "JOB_NOT_FOUND");
    for (const url of ["/api/v1/jobs", `/api/v1/jobs/${drill.id}`])
      assert.equal((await t.app.inject({ url })).statusCode, 401, url);
    const bad = await t.app.inject({ url: "/api/v1/jobs?limit=0", headers: t.auth("viewer") });
    assert.equal(bad.statusCode, 400);
    assert.match(bad.body, /limit/);
    await t.app.close();
  });

  void it(`PIT catalog: GET /api/v1/pits?server= reads the control database (${dialect})`, async () => {
    const t = await testApp(await open());
    const pit = (id: string, server: string, serverId: string | null, seq: number) => ({
      id,
      repository_id: "repo_1",
      server_id: serverId,
      server_name: server,
      seq,
      time_ms: T0 + seq * 600_000,
      consistency: "filesystem" as const,
      disks_json: JSON.stringify([{ index: 0, sizeBytes: 2 ** 34 }]),
      labels_json: JSON.stringify({ by: "schedule" }),
    });
    await t.database.db
      .insertInto("pits")
      .values([
        pit("a".repeat(24), "web-1", "srv_w", 2),
        pit("b".repeat(24), "web-1", "srv_w", 1),
        pit("c".repeat(24), "db-1", null, 1),
      ])
      .execute();
    const get = (q: string) =>
      t.app.inject({ url: `/api/v1/pits${q}`, headers: t.auth("viewer") }).then((r) => {
        assert.equal(r.statusCode, 200, r.body);
        return r.json<{ pits: { id: string; seq: number; time: string; serverId: string | null }[] }>().pits;
      });
    assert.deepEqual(
      (await get("?server=web-1")).map((p) => [p.id[0], p.seq]),
      [
        ["b", 1],
        ["a", 2],
      ],
    );
    assert.deepEqual(
      (await get("?server=srv_w")).map((p) => p.id[0]),
      ["b", "a"],
    );
    assert.deepEqual(
      (await get("?server=db-1")).map((p) => [p.id[0], p.serverId]),
      [["c", null]],
    );
    assert.equal((await get("")).length, 3);
    assert.equal((await get("?server=nope")).length, 0);
    assert.equal((await t.app.inject({ url: "/api/v1/pits" })).statusCode, 401);
    await t.app.close();
  });

  void it("lifeboat jobs list|show over the API", async () => {
    const database = await open();
    const t = await startTlsServer(database, path.join(tmp, `${dialect}-cli`));
    try {
      const clock = { now: () => Date.now(), sleep: () => Promise.resolve() };
      // A type the server's job runner does not run (it would claim a pending drill and run it).
      const job = await createJob(database, clock, {
        type: "failback",
        serverIds: ["srv_1"],
        createdBy: "system",
      });
      await logJobStep(database, clock, job.id, { message: "materializing disk 0", state: "running" });
      const api = [
        "--endpoint",
        t.url,
        "--ca-file",
        path.join(t.dataDir, "ca.pem"),
        "--api-key-file",
        path.join(t.dataDir, "admin-api.key"),
      ];
      const list = await runLifeboat(["jobs", "list", "--json", "--server", "srv_1", ...api], tmp);
      assert.equal(list.code, 0, list.stderr);
      assert.deepEqual(
        (JSON.parse(list.stdout) as { jobs: JobView[] }).jobs.map((j) => [j.id, j.state]),
        [[job.id, "running"]],
      );
      const show = await runLifeboat(["jobs", "show", job.id, ...api], tmp);
      assert.equal(show.code, 0, show.stderr);
      assert.match(show.stdout, /state: running/);
      assert.match(show.stdout, /info {2}materializing disk 0/);
      const missing = await runLifeboat(["jobs", "show", "job_nope", "--json", ...api], tmp);
      assert.equal(missing.code, 1);
      assert.equal((JSON.parse(missing.stderr) as { code: string }).code, "JOB_NOT_FOUND");
    } finally {
      await t.close();
    }
  });
});
