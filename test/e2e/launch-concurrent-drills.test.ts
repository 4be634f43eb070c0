/**
 * Two drills of one replicated server at once, while its agent replicates a
 * live workload: both drills succeed, each into its own directory with the
 * PIT's bytes, and the agent is not disturbed (it stays CONTINUOUS, keeps
 * shipping, never rescans).
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentService } from "../../src/agent/service.js";
import { createLogger } from "../../src/base/index.js";
import { requireCapability } from "../support/capabilities.js";
import { type Site, startSite } from "../support/lifeboat-site.js";
import { createLoopDisk } from "../support/loop-disk.js";
import { sleep, until } from "../support/pit-check.js";
import { type JobView, installTestAgent, takePit, waitForJob } from "../support/site-actions.js";

interface DrillOutputs {
  images: string[];
  manifest: string;
  report: string;
}

void describe("concurrent drills of a replicating server", () => {
  let tmp = "";
  let site: Site;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-launch-concurrent-"));
    site = await startSite(tmp);
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it(
    "two drills at once both succeed into distinct outputs; replication goes on undisturbed",
    { timeout: 180_000 },
    async (t) => {
      if (!requireCapability(t, "root", "loop", "tracefs", "fsfreeze")) return;
      // Cleaned up last, once the workload and the agent stopped (t.after hooks run in order).
      const disk = await createLoopDisk({ sizeMiB: 48 });
      let stopAgent = async () => {};
      let stopWorkload = async () => {};
      t.after(async () => {
        await stopWorkload();
        await stopAgent();
        await disk.cleanup();
      });
      const mp = disk.mountPoint!;
      spawnSync("sh", ["-c", `head -c 8M /dev/urandom > ${mp}/base && sync`]);
      const agent = await installTestAgent(site, { dir: tmp, name: "busy-01", device: disk.device });
      const svc = await AgentService.start({
        configDir: agent.configDir,
        logger: createLogger(process.env.LIFEBOAT_TEST_LOG ?? "silent", "busy-01"),
      });
      stopAgent = () => svc.stop();
      const rep = svc.replication;
      await until("the agent in CONTINUOUS", () => rep.status()?.state === "CONTINUOUS", 120_000);
      const workload = spawn(
        "sh",
        [
          "-c",
          `i=0; while :; do i=$((i % 8 + 1));
         dd if=/dev/urandom of=${mp}/f$i bs=16k count=$((i % 4 + 1)) conv=fsync status=none;
         dd if=/dev/urandom of=${mp}/base bs=4k count=1 seek=$((i * 53)) conv=notrunc,fsync status=none;
         sleep 0.05;
       done`,
        ],
        { stdio: "ignore" },
      );
      const stopped = new Promise((r) => workload.once("exit", r));
      stopWorkload = async () => {
        workload.kill("SIGKILL");
        await stopped;
      };
      const pitId = await takePit(site, agent.serverName);
      await until(
        "the agent back in CONTINUOUS after the PIT",
        () => rep.status()?.state === "CONTINUOUS",
        30_000,
      );

      const rescans = rep.counters.rescans;
      const sent = rep.counters.bytesSent;
      const [a, b] = await Promise.all(
        [0, 1].map(() =>
          site.api<{ job: JobView }>("/api/v1/launches", {
            method: "POST",
            body: { servers: [agent.serverName], pit: pitId },
          }),
        ),
      );
      assert.notEqual(a!.job.id, b!.job.id);
      // While both drills run, sample the agent: always CONTINUOUS, lag small.
      const states = new Set<string>();
      let maxLag = 0;
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          const s = rep.status();
          if (s) {
            states.add(s.state);
            maxLag = Math.max(maxLag, s.lagSeconds);
          }
          await sleep(100);
        }
      })();
      let done: JobView[];
      try {
        done = await Promise.all([waitForJob(site, a!.job.id), waitForJob(site, b!.job.id)]);
      } finally {
        sampling = false;
        await sampler;
      }
      const sentDuring = rep.counters.bytesSent - sent;
      for (const j of done) assert.equal(j.state, "succeeded", JSON.stringify(j.result));
      // They ran at the same time: each started before the other finished.
      const spans = await Promise.all(
        done.map(async (j) => {
          const r = await site.api<{ job: { finishedAt: string }; log: { at: string }[] }>(
            `/api/v1/jobs/${j.id}`,
          );
          return { start: Date.parse(r.log[0]!.at), end: Date.parse(r.job.finishedAt) };
        }),
      );
      assert.ok(
        spans[0]!.start < spans[1]!.end && spans[1]!.start < spans[0]!.end,
        `the drills overlap: ${JSON.stringify(spans)}`,
      );
      const outputs = done.map((j) => (j.result as { outputs: DrillOutputs }).outputs);
      const [oa, ob] = outputs as [DrillOutputs, DrillOutputs];
      assert.equal(oa.images.length, 1);
      assert.notEqual(
        path.dirname(oa.images[0]!),
        path.dirname(ob.images[0]!),
        "each drill has its own directory",
      );
      assert.notEqual(oa.manifest, ob.manifest);
      for (const o of outputs) await stat(o.images[0]!);
      const manifests = await Promise.all(
        outputs.map(
          async (o) =>
            JSON.parse(await readFile(o.manifest, "utf8")) as {
              pit: { id: string };
              disks: { sha256: string }[];
            },
        ),
      );
      for (const m of manifests) assert.equal(m.pit.id, pitId);
      assert.equal(
        manifests[0]!.disks[0]!.sha256,
        manifests[1]!.disks[0]!.sha256,
        "both drills read the same PIT",
      );

      assert.deepEqual([...states], ["CONTINUOUS"], "the agent stayed CONTINUOUS during the drills");
      assert.ok(maxLag < 10, `lag stayed small: ${maxLag} s`);
      assert.ok(sentDuring > 0, "the agent shipped the workload's writes while the drills ran");
      assert.equal(rep.counters.rescans, rescans, "no rescan");
      assert.equal(rep.status()?.state, "CONTINUOUS");
    },
  );
});
