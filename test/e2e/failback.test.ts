import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { AgentService } from "../../src/agent/service.js";
import { createLogger, isLifeboatError } from "../../src/base/index.js";
import { importDisks, readHead } from "../../src/store/index.js";
import { AgentSession, connectWire } from "../../src/wire/index.js";
import { skipUnless } from "../support/capabilities.js";
import { type FaultProxy, startFaultProxy } from "../support/fault-proxy.js";
import { type Site, startSite } from "../support/lifeboat-site.js";
import { type LoopDisk, createLoopDisk, unmountForTest } from "../support/loop-disk.js";
import { exportPit, sleep, until } from "../support/pit-check.js";
import { type JobView, installTestAgent, takePit, waitForJob } from "../support/site-actions.js";

const run = promisify(execFile);
const MiB = 1 << 20;
const DISK_MIB = 64;
const CHUNKS = (DISK_MIB * MiB) / (64 * 1024);

interface FailbackView {
  id: string;
  jobId: string;
  state: string;
  pass: number;
  completedPass: number;
  bytesSent: number;
  chunksSent: number;
  chunksCompared: number;
  cutoverPitId: string | null;
  verify: { chunks: number; mismatched: number } | null;
  backlog: { chunks: number; bytes: number } | null;
  error: { code: string; message: string } | null;
}

const log = (name: string) => createLogger(process.env.LIFEBOAT_TEST_LOG ?? "silent", name);
const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

async function readDevice(device: string, bytes: number): Promise<Buffer> {
  const fh = await fs.open(device, "r");
  try {
    const buf = Buffer.alloc(bytes);
    let got = 0;
    while (got < bytes) {
      const { bytesRead } = await fh.read(buf, got, bytes - got, got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return buf;
  } finally {
    await fh.close();
  }
}

/**
 * Failback end to end on loop devices: an ext4 source replicates; a
 * recovery writes its PIT onto another loop device (the recovered instance),
 * which gets new files and its own agent; the original server's agent is
 * refused when it comes back (split brain), receives the failback once its
 * disk is unmounted, survives a cut link mid-pass, and after the cut-over
 * its disk is byte-identical to the cut-over PIT, passes fsck and holds the
 * new files; it then replicates again sending chunk references only.
 */
void describe("failback", { ...skipUnless("root", "loop", "tracefs", "fsfreeze"), timeout: 600_000 }, () => {
  let tmp = "";
  let site: Site;
  let proxy: FaultProxy;
  let orig: LoopDisk;
  let rec: LoopDisk;
  const services: AgentService[] = [];
  let origDir = "";
  let origId = { serverId: "", serverName: "" };
  let recName = "";
  let recoveryJob = "";
  let origService: AgentService | undefined;

  async function startAgent(configDir: string, name: string): Promise<AgentService> {
    const svc = await AgentService.start({
      configDir,
      logger: log(name),
      settingsIntervalMs: 1000,
      failbackBatchChunks: 16,
    });
    services.push(svc);
    return svc;
  }

  const failback = (id: string) => site.api<FailbackView>(`/api/v1/failbacks/${id}`);

  before(async () => {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-failback-"));
    site = await startSite(tmp);
    proxy = await startFaultProxy({ host: "127.0.0.1", port: site.port });
    orig = await createLoopDisk({ sizeMiB: DISK_MIB });
    rec = await createLoopDisk({ sizeMiB: DISK_MIB, ext4: false });
    spawnSync("sh", ["-c", `head -c ${12 * MiB} /dev/urandom > ${orig.mountPoint}/base && sync`]);
    await fs.writeFile(path.join(orig.mountPoint!, "before.txt"), "written before the disaster\n");
    spawnSync("sync");
    // The original server's agent reaches the site through a proxy the test can cut.
    const a = await installTestAgent(site, {
      dir: tmp,
      name: "orig",
      device: orig.device,
      endpoint: `https://127.0.0.1:${proxy.port}`,
    });
    origDir = a.configDir;
    origId = { serverId: a.serverId, serverName: a.serverName };
    origService = await startAgent(origDir, "orig");
  });

  after(async () => {
    for (const s of services) await s.stop().catch(() => undefined);
    await unmountForTest(path.join(tmp, "rec-mnt"));
    await proxy?.close();
    await site?.close();
    await orig?.cleanup();
    await rec?.cleanup();
    await fs.rm(tmp, { recursive: true, force: true });
  });

  void it("a recovery fences the original server; its agent coming back is refused, with an event, and nothing is written", async () => {
    await takePit(site, origId.serverName);
    // The disaster: the original server goes down.
    await origService!.stop();
    origService = undefined;
    const { job } = await site.api<{ job: JobView }>("/api/v1/launches", {
      method: "POST",
      body: {
        servers: [origId.serverName],
        mode: "recovery",
        target: "block",
        devices: [rec.device],
        pit: "latest",
      },
    });
    recoveryJob = job.id;
    const done = await waitForJob(site, job.id);
    assert.equal(done.state, "succeeded", JSON.stringify(done.result));
    const events = await site.api<{ events: { type: string; serverId: string | null }[] }>("/api/v1/events");
    assert.ok(events.events.some((e) => e.type === "server.failed_over" && e.serverId === origId.serverId));

    const repo = await site.openRepo();
    const headBefore = JSON.stringify(await readHead(repo, origId.serverName));
    await repo.close();
    // The old agent comes back: its settings say fenced, so it does not replicate...
    origService = await startAgent(origDir, "orig");
    const status = JSON.parse(await fs.readFile(path.join(origDir, "state", "status.json"), "utf8")) as {
      state: string;
    };
    await until(
      "the old agent reports FENCED",
      async () => {
        const s = JSON.parse(await fs.readFile(path.join(origDir, "state", "status.json"), "utf8")) as {
          state: string;
        };
        return s.state === "FENCED";
      },
      10_000,
      () => status,
    );
    // ...and a stream it opens anyway (an old release, a race) is refused at the replicator.
    const [certPem = "", keyPem = ""] = await Promise.all(
      ["agent.pem", "agent.key"].map((f) => fs.readFile(path.join(origDir, f), "utf8")),
    );
    const session = new AgentSession({
      connect: () => connectWire({ host: "127.0.0.1", port: site.port, caPem: site.caPem, certPem, keyPem }),
      agent: { serverId: origId.serverId, hostname: "orig", version: "test" },
      disks: [{ index: 0, id: orig.device, sizeBytes: orig.sizeBytes, blockSize: 64 * 1024 }],
    });
    await assert.rejects(session.start(), (err) => isLifeboatError(err) && err.code === "SOURCE_FENCED");
    await session.close().catch(() => undefined);
    const after = await site.api<{ events: { type: string; serverId: string | null }[] }>("/api/v1/events");
    assert.ok(after.events.some((e) => e.type === "server.split_brain" && e.serverId === origId.serverId));
    const repo2 = await site.openRepo();
    assert.equal(
      JSON.stringify(await readHead(repo2, origId.serverName)),
      headBefore,
      "the replica is untouched",
    );
    await repo2.close();
  });

  void it("the recovered instance replicates with its own agent; a failback onto a smaller disk is refused", async () => {
    // The recovered instance runs: new files on it.
    const mnt = path.join(tmp, "rec-mnt");
    await fs.mkdir(mnt, { recursive: true });
    await run("mount", [rec.device, mnt]);
    spawnSync("sh", ["-c", `head -c ${3 * MiB} /dev/urandom > ${mnt}/during-outage.bin && sync`]);
    await fs.writeFile(path.join(mnt, "orders.txt"), "order 1 taken during the outage\n");
    spawnSync("sync");
    const r = await installTestAgent(site, {
      dir: tmp,
      name: "orig-recovered",
      device: rec.device,
      recoveryOf: recoveryJob,
    });
    recName = r.serverName;
    await startAgent(r.configDir, "rec");
    await takePit(site, recName);

    // A server whose only disk is smaller than the recovered instance's.
    const small = path.join(tmp, "small.img");
    await fs.writeFile(small, Buffer.alloc(16 * MiB));
    await site.register("small-server");
    const repo = await site.openRepo();
    await importDisks(repo, { server: "small-server", disks: [small], consistency: "crash" });
    await repo.close();
    await assert.rejects(
      site.api("/api/v1/failbacks", { method: "POST", body: { source: recName, to: "small-server" } }),
      (err) => isLifeboatError(err) && err.code === "FAILBACK_DISK_TOO_SMALL",
    );
  });

  void it("fails back: refused while mounted, only differences travel, a cut link resumes, cut-over verifies block for block", async (t) => {
    // An operator's `jobs terminate` of a failback cancels it; the original server stays fenced.
    const abandoned = await site.api<FailbackView>("/api/v1/failbacks", {
      method: "POST",
      body: { source: recoveryJob },
    });
    await site.api(`/api/v1/jobs/${abandoned.jobId}/terminate`, { method: "POST", body: {} });
    assert.equal((await failback(abandoned.id)).state, "cancelled");
    const { job: abandonedJob } = await site.api<{ job: { state: string } }>(
      `/api/v1/jobs/${abandoned.jobId}`,
    );
    assert.equal(abandonedJob.state, "terminated");

    const started = await site.api<FailbackView>("/api/v1/failbacks", {
      method: "POST",
      body: { source: recoveryJob },
    });
    // The original disk is still mounted: the agent refuses to write it and says why.
    await until(
      "the target reports its mounted disk",
      async () => (await failback(started.id)).error?.code === "FAILBACK_TARGET_MOUNTED",
      30_000,
      () => failback(started.id),
    );
    const waiting = await failback(started.id);
    assert.equal(waiting.chunksSent, 0);
    // The whole first pass is still ahead: every chunk of the disk, to compare.
    assert.deepEqual(waiting.backlog, { chunks: CHUNKS, bytes: DISK_MIB * MiB });
    await run("umount", [orig.mountPoint!]);

    // Cut the link in the middle of the first pass; it resumes from its cursor.
    await until("pass 1 under way", async () => (await failback(started.id)).chunksCompared > 0, 30_000);
    proxy.cut("drop");
    await sleep(1500);
    proxy.restore();
    await until(
      "pass 1 complete",
      async () => (await failback(started.id)).completedPass >= 1,
      120_000,
      () => failback(started.id),
    );
    const first = await failback(started.id);
    assert.ok(
      first.chunksCompared <= CHUNKS + 2 * 16,
      `pass 1 resumed instead of starting over: ${first.chunksCompared} chunks compared for ${CHUNKS}`,
    );
    // Only what differs travelled: the 3 MiB file and filesystem metadata, not the 64 MiB disk.
    assert.ok(first.bytesSent > 3 * MiB * 0.9, `the new file travelled: ${first.bytesSent}`);
    assert.ok(first.bytesSent < 10 * MiB, `only differences travel: ${first.bytesSent} bytes`);

    // Continuous: a write on the recovered instance follows in a changes pass.
    const mnt = path.join(tmp, "rec-mnt");
    spawnSync("sh", ["-c", `head -c ${MiB} /dev/urandom > ${mnt}/later.bin && sync`]);
    await until(
      "the change follows",
      async () => (await failback(started.id)).bytesSent > first.bytesSent + MiB * 0.9,
      60_000,
      () => failback(started.id),
    );

    const cut = await site.api<FailbackView>(`/api/v1/failbacks/${started.id}/cutover`, {
      method: "POST",
      body: {},
    });
    assert.equal(cut.state, "cutover");
    await until(
      "ready",
      async () => (await failback(started.id)).state === "ready",
      120_000,
      () => failback(started.id),
    );
    const ready = await failback(started.id);
    assert.ok(ready.cutoverPitId);
    assert.equal(ready.backlog, null, "nothing left once ready");
    assert.equal(ready.verify?.mismatched, 0);
    assert.equal(ready.verify?.chunks, CHUNKS);

    // Byte-identical to the cut-over PIT, and a sound filesystem holding the outage's files.
    const out = path.join(tmp, "cutover.img");
    await exportPit(site, recName, ready.cutoverPitId, out);
    const want = await fs.readFile(out);
    const got = await readDevice(orig.device, want.length);
    assert.equal(sha256(got), sha256(want), "the original disk equals the cut-over PIT");
    await run("e2fsck", ["-f", "-n", orig.device]);
    const check = path.join(tmp, "orig-check");
    await fs.mkdir(check, { recursive: true });
    await run("mount", ["-o", "ro", orig.device, check]);
    try {
      assert.equal(
        await fs.readFile(path.join(check, "orders.txt"), "utf8"),
        "order 1 taken during the outage\n",
      );
      assert.equal(
        await fs.readFile(path.join(check, "before.txt"), "utf8"),
        "written before the disaster\n",
      );
    } finally {
      await run("umount", [check]);
    }
    const { job } = await site.api<{ job: { state: string }; log?: unknown }>(`/api/v1/jobs/${ready.jobId}`);
    assert.equal(job.state, "succeeded");

    // The original direction resumes without a full resync: references, not the disk's bytes.
    await until(
      "the original server replicates again",
      () => origService!.replication.status()?.state === "CONTINUOUS",
      60_000,
      () => origService!.replication.status(),
    );
    const sent = origService!.replication.counters.bytesSent;
    t.diagnostic(
      `pass 1: ${first.chunksSent} of ${first.chunksCompared} chunks differed, ${first.bytesSent} bytes sent; ` +
        `in all ${ready.bytesSent} bytes (${ready.chunksSent} chunks) for a ${DISK_MIB} MiB disk; ` +
        `resuming the original direction sent ${sent} bytes`,
    );
    assert.ok(sent < (DISK_MIB * MiB) / 10, `resumed with ${sent} bytes, not a full copy`);
    // Its disk is not mounted (a data disk waiting for its workload): crash-consistent is what is true.
    await takePit(site, origId.serverName, "crash");
  });
});
