/**
 * A disk that grows or shrinks while the agent runs (an image file here, in
 * scan mode, so no root is needed): the agent notices, tells the replicator
 * the new size, and the next PIT has the disk at its new size with its
 * content exact.
 */
import assert from "node:assert/strict";
import { appendFile, mkdtemp, readFile, rm, truncate, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { Replication } from "../../src/agent/replication.js";
import { exportDisk, listPits } from "../../src/store/index.js";
import { prng, randomBuffer } from "../support/images.js";
import { type Site, startSite, agentSettings } from "../support/lifeboat-site.js";

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

void describe("a disk that changes size", () => {
  let tmp = "";
  let site: Site;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-resize-"));
    site = await startSite(tmp);
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it(
    "grows and shrinks: each PIT has the disk at its size then, byte for byte",
    { timeout: 120_000 },
    async () => {
      const image = path.join(tmp, "disk.img");
      const rand = prng(11);
      await writeFile(image, randomBuffer(rand, 4 * MiB));
      const who = await site.register("resize1");
      const rep = new Replication({
        serverId: who.serverId,
        hostname: "resize1",
        version: "test",
        disks: [{ index: 0, path: image, kind: "image", id: image }],
        blockSize: 65536,
        settings: agentSettings({ tracker: "scan" }),
        sizeCheckMs: 100,
        connect: () => site.connect(who),
      });
      await rep.start();
      const check = async (want: number) => {
        await sleep(500); // past a size check
        const point = await rep.requestPoint();
        assert.deepEqual(point.disks, [{ index: 0, sizeBytes: want }]);
        const repo = await site.openRepo();
        try {
          const pit = (await listPits(repo, { server: who.serverName })).find((p) => p.id === point.pitId);
          assert.ok(pit);
          assert.equal(pit.disks[0]!.sizeBytes, want);
          const out = path.join(tmp, `out-${want}.img`);
          await exportDisk(repo, pit, 0, out);
          assert.ok((await readFile(out)).equals(await readFile(image)), `the PIT of ${want} bytes`);
        } finally {
          await repo.close();
        }
      };
      try {
        await check(4 * MiB);
        await appendFile(image, randomBuffer(rand, 2 * MiB + 4096)); // not a whole number of blocks
        await check(6 * MiB + 4096);
        await truncate(image, 3 * MiB);
        await check(3 * MiB);
      } finally {
        await rep.stop();
      }
    },
  );
});
