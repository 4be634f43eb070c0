/**
 * The control plane's repository checks on a real repository on disk: a
 * verify job that meets a corrupted pack fails with REPOSITORY_DAMAGED,
 * records its counts, appends a `repository.damaged` event that a webhook
 * receives signed, and /metrics and /api/v1/repository show it; the
 * schedule refreshes stats and asks for verifies when they are due.
 */
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { promises as fs } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { after, before, it } from "node:test";
import { type EventView, listEvents } from "../../src/control/events.js";
import { JobRunner } from "../../src/control/job-runner.js";
import { createJob, getJob, requestTerminate } from "../../src/control/jobs.js";
import {
  type RepositoryStatus,
  repositoryCheckTick,
  repositoryStatus,
  verifyAndRecord,
  verifyJobHandler,
} from "../../src/control/repository-checks.js";
import { WebhookDeliverer } from "../../src/control/webhook-delivery.js";
import { type Repository, importDisks } from "../../src/store/index.js";
import { forEachDatabase } from "../support/databases.js";
import { writeMixedImage } from "../support/images.js";
import { newRepository, tempDir } from "../support/repo.js";
import { type TestApp, captureLogger, testApp } from "./helpers.js";
import { addPit, addServer } from "./seed.js";

const CHUNK = 64 * 1024;
let dir = "";
before(async () => {
  dir = await tempDir("lifeboat-repo-checks-");
});
after(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

let n = 0;
/** A repository on disk holding one PIT of server db-1 (a 1 MiB disk), and its directory. */
async function repositoryWithPit(): Promise<{ repo: Repository; repoDir: string }> {
  const repoDir = path.join(dir, `repo-${++n}`);
  const image = path.join(dir, `disk-${n}.img`);
  await writeMixedImage(image, 1 << 20, 7, 256 << 10);
  const repo = await newRepository({ dir: repoDir, chunkSize: CHUNK });
  await importDisks(repo, { server: "db-1", disks: [image] });
  return { repo, repoDir };
}

async function packFiles(repoDir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const e of await fs.readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else out.push(p);
    }
  };
  await walk(path.join(repoDir, "packs"));
  return out.sort();
}

/** The value of one sample in a scrape (a plain reader: metrics.test.ts checks the format itself). */
function sample(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "m").exec(text);
  return m ? Number(m[1]) : undefined;
}

async function receiver() {
  const received: { headers: http.IncomingHttpHeaders; body: string }[] = [];
  const server = http.createServer((req, res) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (c: string) => (body += c));
    req.on("end", () => {
      received.push({ headers: req.headers, body });
      res.writeHead(200).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    received,
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

async function runJobs(t: TestApp, repo: Repository, jobId: string) {
  const runner = new JobRunner({
    database: t.database,
    clock: t.clock,
    logger: captureLogger().logger,
    handlers: {
      verify: verifyJobHandler({ database: t.database, clock: t.clock, repo: () => Promise.resolve(repo) }),
    },
  });
  runner.start();
  try {
    for (let i = 0; i < 600; i++) {
      const j = await getJob(t.database, jobId);
      if (j && ["succeeded", "failed", "terminated"].includes(j.job.state)) return j;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.fail(`job ${jobId} did not finish`);
  } finally {
    await runner.close();
  }
}

forEachDatabase("repository checks", (open) => {
  void it("a verify job finds a corrupted pack: job failed, counts recorded, repository.damaged sent signed, shown in /metrics", async () => {
    const t = await testApp(await open());
    const { repo, repoDir } = await repositoryWithPit();
    const rx = await receiver();
    try {
      const packs = await packFiles(repoDir);
      assert.ok(packs.length >= 1);
      const packBytes = (await Promise.all(packs.map((p) => fs.stat(p)))).reduce((s, st) => s + st.size, 0);
      // Flip bytes in the middle of the first pack: chunks there no longer decrypt.
      const victim = packs[0]!;
      const bytes = await fs.readFile(victim);
      for (let i = 0; i < 64; i++) bytes[(bytes.length >> 1) + i]! ^= 0xff;
      await fs.writeFile(victim, bytes);

      const hook = await t.app.inject({
        method: "POST",
        url: "/api/v1/webhooks",
        headers: t.auth("admin"),
        payload: { url: rx.url, events: ["repository.damaged"] },
      });
      assert.equal(hook.statusCode, 201, hook.body);
      const secret = hook.json<{ secret: string }>().secret;

      // A viewer may not ask for a verify; an operator may.
      const refused = await t.app.inject({
        method: "POST",
        url: "/api/v1/repository/verify",
        headers: t.auth("viewer"),
        payload: { readData: true },
      });
      assert.equal(refused.statusCode, 403);
      assert.equal(refused.json<{ code: string }>().code, "AUTH_FORBIDDEN");
      const asked = await t.app.inject({
        method: "POST",
        url: "/api/v1/repository/verify",
        headers: t.auth("operator"),
        payload: { readData: true },
      });
      assert.equal(asked.statusCode, 202, asked.body);
      const { job, created } = asked.json<{ job: { id: string; type: string }; created: boolean }>();
      assert.equal(job.type, "verify");
      assert.equal(created, true);
      const again = await t.app.inject({
        method: "POST",
        url: "/api/v1/repository/verify",
        headers: t.auth("operator"),
        payload: {},
      });
      assert.equal(again.json<{ job: { id: string }; created: boolean }>().job.id, job.id, "one at a time");

      const done = await runJobs(t, repo, job.id);
      assert.equal(done.job.state, "failed");
      assert.equal((done.job.result as { error: { code: string } }).error.code, "REPOSITORY_DAMAGED");
      assert.ok(
        done.log.some((l) => l.level === "error" && /^DAMAGED chunk /.test(l.message)),
        "the log names it",
      );

      const status = (
        await t.app.inject({ url: "/api/v1/repository", headers: t.auth("viewer") })
      ).json<RepositoryStatus>();
      const v = status.verify!;
      assert.equal(v.ok, false);
      assert.equal(v.readData, true);
      assert.equal(v.jobId, job.id);
      assert.ok(v.damage.objects >= 1);
      assert.equal(v.damage.byKind.chunk, v.damage.objects, "damaged chunks, the pack itself is there");
      assert.equal(v.damage.pits, 1);
      assert.deepEqual(v.damage.servers, ["db-1"]);
      assert.equal(status.stats!.storedBytes.packs, packBytes, "stats refreshed after the verify");

      const events = await listEvents(t.database, { types: ["repository.damaged"] });
      assert.equal(events.length, 1);
      const e = events[0]!;
      assert.equal(e.serverId, null);
      assert.deepEqual(
        {
          damagedObjects: e.payload.damagedObjects,
          byKind: e.payload.byKind,
          affectedPits: e.payload.affectedPits,
          servers: e.payload.servers,
          readData: e.payload.readData,
          jobId: e.payload.jobId,
        },
        {
          damagedObjects: v.damage.objects,
          byKind: v.damage.byKind,
          affectedPits: 1,
          servers: ["db-1"],
          readData: true,
          jobId: job.id,
        },
      );

      const d = new WebhookDeliverer({
        database: t.database,
        clock: t.clock,
        logger: captureLogger().logger,
        instance: "test-1",
      });
      try {
        assert.equal(await d.tick(), 1);
      } finally {
        await d.close();
      }
      assert.equal(rx.received.length, 1);
      const got = rx.received[0]!;
      assert.equal(got.headers["lifeboat-event"], "repository.damaged");
      const sig = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(String(got.headers["lifeboat-signature"]))!;
      assert.equal(createHmac("sha256", secret).update(`${sig[1]}.${got.body}`).digest("hex"), sig[2]);
      assert.equal((JSON.parse(got.body) as EventView).seq, e.seq);

      const scrape = await t.app.inject({ url: "/metrics", headers: t.auth("viewer") });
      assert.equal(sample(scrape.body, "lifeboat_repository_last_verify_success"), 0);
      assert.equal(sample(scrape.body, "lifeboat_repository_last_verify_damaged_objects"), v.damage.objects);
      assert.equal(
        sample(scrape.body, "lifeboat_repository_last_verify_timestamp_seconds"),
        Date.parse(v.at) / 1000,
      );
      assert.equal(sample(scrape.body, "lifeboat_repository_chunks"), v.referencedChunks);
      assert.match(
        scrape.body,
        new RegExp(`^lifeboat_repository_stored_bytes\\{kind="packs"\\} ${packBytes}$`, "m"),
      );
    } finally {
      await rx.close();
      await repo.close();
    }
  });

  void it("a sound repository: no event; the schedule refreshes stats and asks for verifies when due", async () => {
    const t = await testApp(await open());
    const { repo } = await repositoryWithPit();
    try {
      const opened = () => Promise.resolve(repo);
      // No PIT in the catalog yet: stats only.
      assert.deepEqual(await repositoryCheckTick(t.database, t.clock, opened), {
        stats: true,
        verifyJob: null,
      });
      assert.deepEqual(await repositoryCheckTick(t.database, t.clock, opened), {
        stats: false,
        verifyJob: null,
      });
      await addServer(t.database, "srv_1", "db-1");
      await addPit(t.database, "srv_1", "db-1", t.clock.now());
      t.clock.advance(25 * 3_600_000);
      const due = await repositoryCheckTick(t.database, t.clock, opened);
      assert.equal(due.stats, true);
      assert.ok(due.verifyJob);
      const first = await getJob(t.database, due.verifyJob);
      assert.deepEqual(first!.job.params, { readData: true }, "never read in full: a full read");
      assert.equal(first!.job.createdBy, "system");
      assert.equal(
        (await repositoryCheckTick(t.database, t.clock, opened)).verifyJob,
        null,
        "one waits already",
      );

      const done = await runJobs(t, repo, due.verifyJob);
      assert.equal(done.job.state, "succeeded", JSON.stringify(done.log));
      const status = await repositoryStatus(t.database);
      assert.equal(status.verify!.ok, true);
      assert.equal(status.verify!.lastReadDataAt, status.verify!.at);
      assert.deepEqual(await listEvents(t.database, { types: ["repository.damaged"] }), []);

      // A day later: a structural verify (the data was read less than a week ago).
      t.clock.advance(25 * 3_600_000);
      const next = await repositoryCheckTick(t.database, t.clock, opened);
      assert.deepEqual((await getJob(t.database, next.verifyJob!))!.job.params, { readData: false });
      await runJobs(t, repo, next.verifyJob!);
      const after = await repositoryStatus(t.database);
      assert.equal(after.verify!.readData, false);
      assert.equal(after.verify!.lastReadDataAt, status.verify!.at, "the last full read is remembered");

      // A verify that cannot finish (its repository's listing hangs) is terminated at once and records nothing.
      let release = () => {};
      const gate = new Promise<void>((r) => (release = r));
      const inner = repo.backend;
      const stuck = Object.create(repo) as Repository;
      Object.defineProperty(stuck, "backend", {
        value: {
          ...inner,
          properties: inner.properties,
          list: async function* (prefix: string) {
            await gate;
            yield* inner.list(prefix);
          },
        },
      });
      const hung = await createJob(t.database, t.clock, {
        type: "verify",
        serverIds: [],
        params: { readData: true },
        createdBy: "test",
      });
      const runner = new JobRunner({
        database: t.database,
        clock: t.clock,
        logger: captureLogger().logger,
        handlers: {
          verify: verifyJobHandler({
            database: t.database,
            clock: t.clock,
            repo: () => Promise.resolve(stuck),
          }),
        },
      });
      runner.start();
      try {
        for (let i = 0; (await getJob(t.database, hung.id))!.job.state !== "running"; i++) {
          assert.ok(i < 200, "the job runs");
          await new Promise((r) => setTimeout(r, 25));
        }
        await requestTerminate(t.database, t.clock, hung.id);
        for (let i = 0; (await getJob(t.database, hung.id))!.job.state === "running"; i++) {
          assert.ok(i < 200, "terminated without waiting for the verify");
          await new Promise((r) => setTimeout(r, 25));
        }
        assert.equal((await getJob(t.database, hung.id))!.job.state, "terminated");
      } finally {
        release();
        await runner.close();
      }
      assert.equal((await repositoryStatus(t.database)).verify!.jobId, next.verifyJob, "nothing recorded");

      // Straight through verifyAndRecord: a sound repository appends nothing.
      const v = await verifyAndRecord(t.database, t.clock, repo, { readData: false });
      assert.equal(v.ok, true);
      assert.equal(v.jobId, null);
    } finally {
      await repo.close();
    }
  });
});
