/**
 * A fleet on the replicator pool, in the scale-out shape: two control-plane
 * instances on one PostgreSQL behind an HAProxy TCP balancer, the repository
 * on an S3-compatible server (test/support/s3-server.ts), three replicator
 * processes and thirty agents (image files in scan mode, and one loop device
 * in trace mode). The pool spreads the servers evenly, every agent reaches
 * CONTINUOUS, every server gets a PIT, the repository verifies, one PIT of
 * each replicator's servers reads back as its disk, and one drill per
 * replicator (through the balancer) launches an image equal to the disk.
 * The run is bench/scale.ts's, small.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { it } from "node:test";
import { runPoolFleet } from "../../bench/scale.js";
import { requireCapability, strictCapabilities } from "../support/capabilities.js";
import { connectionUrl, forEachDatabase } from "../support/databases.js";
import { loopDiskForTest } from "../support/loop-disk.js";
import { startS3Server } from "../support/s3-server.js";
import { tcpBalancerMissing } from "../support/tcp-balancer.js";

const AGENTS = 30;
const REPLICATORS = 3;
const DISK_BYTES = 2 * 1024 * 1024;

forEachDatabase("a fleet of 30 agents on 3 replicators and 2 control planes", (open, dialect) => {
  if (dialect !== "postgres") return; // the fleet shape is PostgreSQL's; SQLite sites run one process
  void it(
    "spreads, syncs (one device in trace mode), makes a PIT of every server, reads them back, drills one per replicator",
    { timeout: 900_000 },
    async (t) => {
      if (!requireCapability(t, "root", "loop", "tracefs")) return;
      const missing = tcpBalancerMissing();
      if (missing) {
        if (strictCapabilities) throw new Error(`under LIFEBOAT_TEST_STRICT=1: ${missing}`);
        t.skip(missing);
        return;
      }
      const database = await open();
      const s3 = await startS3Server({ prefix: "fleet" });
      const loop = await loopDiskForTest(t, { sizeMiB: DISK_BYTES / (1024 * 1024), ext4: false });
      const dir = await mkdtemp(path.join(os.tmpdir(), "lifeboat-fleet-"));
      try {
        const r = await runPoolFleet({
          dir,
          databaseUrl: await connectionUrl(database),
          agents: AGENTS,
          replicators: REPLICATORS,
          diskBytes: DISK_BYTES,
          controlPlanes: 2,
          repository: s3.url,
          devices: [{ path: loop.device, sizeBytes: loop.sizeBytes }],
          readBack: true,
          drills: true,
        });
        process.stdout.write(`# fleet: ${JSON.stringify(r)}\n`);
        assert.equal(r.controlPlanes, 2);
        assert.equal(r.repository, "s3");
        assert.deepEqual(Object.values(r.spread), [10, 10, 10], "the pool spreads the servers evenly");
        assert.deepEqual(
          r.devices.map((d) => d.tracker),
          ["trace"],
          "the loop device's agent traces",
        );
        assert.equal(r.pits, AGENTS, "a PIT of every server");
        assert.equal(r.verifyOk, true);
        assert.equal(r.readBack.length, REPLICATORS);
        assert.ok(
          r.readBack.every((b) => b.equal),
          JSON.stringify(r.readBack),
        );
        assert.deepEqual(
          r.drills.map((d) => d.replicator).sort(),
          Object.keys(r.spread).sort(),
          "a drill per replicator",
        );
        assert.ok(
          r.drills.every((d) => d.state === "succeeded" && d.equal),
          JSON.stringify(r.drills),
        );
        assert.ok(
          r.drills.some((d) => r.devices.some((x) => x.server === d.server)),
          "the trace-mode server is drilled",
        );
        const conns = Object.values(r.balancer ?? {});
        assert.equal(conns.length, 2);
        assert.ok(
          conns.every((c) => c.total > 0),
          `the balancer gave both instances clients: ${JSON.stringify(r.balancer)}`,
        );
      } finally {
        await rm(dir, { recursive: true, force: true });
        await s3.stop();
      }
    },
  );
});
