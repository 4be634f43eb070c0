/**
 * Replication end to end into a repository on a real S3 server (Ceph RGW
 * under `npm run test:integration`): `server start` with an s3:// repository
 * in a fresh bucket, an agent replicating a disk image (scan mode) to its
 * embedded replicator, a PIT read back equal to the image, then a change and
 * a second PIT that holds the change while the first still holds the old
 * content, and a verify that reads every chunk back from the gateway.
 */
import assert from "node:assert/strict";
import { copyFile, mkdtemp, open, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { installAgent } from "../../src/agent/install.js";
import { AgentService } from "../../src/agent/service.js";
import { repositoryStats, verifyRepository } from "../../src/store/index.js";
import { prng, randomBuffer, writeMixedImage } from "../support/images.js";
import { type Site, startSite } from "../support/lifeboat-site.js";
import { exportPit, until } from "../support/pit-check.js";
import { externalS3Endpoint } from "../support/s3-external.js";
import { startS3Server, type TestS3Server } from "../support/s3-server.js";
import { takePit } from "../support/site-actions.js";

const MiB = 1 << 20;
const SIZE = 32 * MiB;
const skip =
  externalS3Endpoint() === undefined ? "no LIFEBOAT_TEST_S3_URL: run `npm run test:integration`" : false;

async function assertSameFile(got: string, want: string, what: string): Promise<void> {
  const [a, b] = await Promise.all([readFile(got), readFile(want)]);
  assert.equal(a.length, b.length, `${what}: size`);
  assert.ok(a.equals(b), `${what}: the bytes differ`);
}

void describe("replication into a repository on S3 (Ceph RGW)", { skip, timeout: 600_000 }, () => {
  let tmp = "";
  let s3: TestS3Server | undefined;
  let site: Site | undefined;
  let agent: AgentService | undefined;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-rgw-e2e-"));
  });
  after(async () => {
    await agent?.stop().catch(() => undefined);
    await site?.close().catch(() => undefined);
    await s3?.stop();
    await rm(tmp, { recursive: true, force: true });
  });

  void it("an agent's image reaches a PIT in the bucket and reads back equal", async () => {
    const timings: Record<string, number> = {};
    let t = Date.now();
    const lap = (name: string) => {
      timings[name] = Date.now() - t;
      t = Date.now();
    };
    s3 = await startS3Server({ prefix: "site/repo" });
    site = await startSite(tmp, { repository: s3.url });
    lap("siteMs");

    const image = path.join(tmp, "disk.img");
    await writeMixedImage(image, SIZE, 7, MiB);
    const { token } = await site.api<{ token: string }>("/api/v1/tokens", {
      method: "POST",
      body: { role: "agent", uses: 1 },
    });
    const configDir = path.join(tmp, "agent");
    const installed = await installAgent({
      configDir,
      endpoint: site.url,
      token,
      caPem: site.caPem,
      hostname: "rgw-app1",
      blockSize: 64 * 1024,
      disks: [{ path: image, kind: "image", id: image, sizeBytes: SIZE }],
      inventory: {},
    });
    agent = await AgentService.start({ configDir, settingsIntervalMs: 1000 });
    const svc = agent;
    await until(
      "the agent CONTINUOUS",
      () => {
        const s = svc.replication.status();
        return Boolean(s?.connected && s.disks.every((d) => d.state === "CONTINUOUS"));
      },
      180_000,
      () => svc.replication.status(),
    );
    lap("initialSyncMs");

    const first = await takePit(site, installed.serverName, "crash", 180_000);
    lap("pit1Ms");
    const before1 = path.join(tmp, "disk-at-pit1.img");
    await copyFile(image, before1);
    const out = path.join(tmp, "out.img");
    await exportPit(site, installed.serverName, first, out);
    await assertSameFile(out, before1, "PIT 1");
    await rm(out);
    lap("export1Ms");

    // 48 writes of 64 KiB here and there (3 MiB), then a second PIT.
    const rand = prng(99);
    const fh = await open(image, "r+");
    try {
      for (let i = 0; i < 48; i++) {
        const at = Math.floor(rand() * (SIZE / (64 * 1024))) * 64 * 1024;
        await fh.write(randomBuffer(rand, 64 * 1024), 0, 64 * 1024, at);
      }
    } finally {
      await fh.close();
    }
    const second = await takePit(site, installed.serverName, "crash", 180_000);
    lap("pit2Ms");
    await exportPit(site, installed.serverName, second, out);
    await assertSameFile(out, image, "PIT 2");
    await rm(out);
    await exportPit(site, installed.serverName, first, out);
    await assertSameFile(out, before1, "PIT 1 after PIT 2");
    lap("export2Ms");

    const repo = await site.openRepo();
    try {
      const stats = await repositoryStats(repo);
      assert.ok(stats.objects.packs > 0, `packs in the bucket: ${JSON.stringify(stats.objects)}`);
      const verified = await verifyRepository(repo, { readData: true });
      assert.equal(verified.ok, true, JSON.stringify(verified));
    } finally {
      await repo.close();
    }
    lap("verifyMs");
    console.log(`rgw replication timings: ${JSON.stringify(timings)}`);
  });
});
