/**
 * A fleet on the replicator pool: a control plane on PostgreSQL, three
 * replicator processes and thirty agents (image files, scan mode). The pool
 * spreads the servers evenly, every agent reaches CONTINUOUS, every server
 * gets a PIT, the repository verifies, and one PIT of each replicator's
 * servers reads back as its disk. The run is bench/scale.ts's, small.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { it } from "node:test";
import { runPoolFleet } from "../../bench/scale.js";
import { connectionUrl, forEachDatabase } from "../support/databases.js";

const AGENTS = 30;
const REPLICATORS = 3;

forEachDatabase("a fleet of 30 agents on 3 replicators", (open, dialect) => {
  if (dialect !== "postgres") return; // the fleet shape is PostgreSQL's; SQLite sites run one process
  void it(
    "spreads, syncs, makes a PIT of every server, and reads them back",
    { timeout: 900_000 },
    async () => {
      const database = await open();
      const dir = await mkdtemp(path.join(os.tmpdir(), "lifeboat-fleet-"));
      try {
        const r = await runPoolFleet({
          dir,
          databaseUrl: await connectionUrl(database),
          agents: AGENTS,
          replicators: REPLICATORS,
          diskBytes: 2 * 1024 * 1024,
          readBack: true,
        });
        process.stdout.write(`# fleet: ${JSON.stringify(r)}\n`);
        assert.deepEqual(Object.values(r.spread), [10, 10, 10], "the pool spreads the servers evenly");
        assert.equal(r.pits, AGENTS, "a PIT of every server");
        assert.equal(r.verifyOk, true);
        assert.equal(r.readBack.length, REPLICATORS);
        assert.ok(
          r.readBack.every((b) => b.equal),
          JSON.stringify(r.readBack),
        );
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  );
});
