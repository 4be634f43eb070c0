/**
 * A rescan while the link to the replicator is down (an image file in scan
 * mode, through a TCP proxy that cuts the link): the agent waits for the
 * link to learn which blocks the repository holds, so an unchanged disk
 * costs references once the link is back, not its bytes again.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { Replication } from "../../src/agent/replication.js";
import { createLogger } from "../../src/base/index.js";
import { connectWire } from "../../src/wire/index.js";
import { startFaultProxy } from "../support/fault-proxy.js";
import { type Site, startSite } from "../support/lifeboat-site.js";
import { sleep, until } from "../support/pit-check.js";

const MiB = 1 << 20;
const DISK_MIB = 32;

void describe("a rescan while the link is down", () => {
  let tmp = "";
  let site: Site;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-scan-cut-"));
    site = await startSite(tmp);
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it("sends references once the link is back, not the disk's bytes", { timeout: 120_000 }, async (t) => {
    const image = path.join(tmp, "disk.img");
    await writeFile(image, randomBytes(DISK_MIB * MiB));
    const who = await site.register("scan-cut-1");
    const proxy = await startFaultProxy({ host: "127.0.0.1", port: site.port });
    t.after(() => proxy.close());
    const rep = new Replication({
      serverId: who.serverId,
      hostname: "scan-cut-1",
      version: "test",
      disks: [{ index: 0, path: image, kind: "image", id: "scan-cut-img" }],
      blockSize: 64 * 1024,
      settings: {
        pitIntervalSeconds: 0,
        freezeCapMs: 2000,
        lagThresholdSeconds: 30,
        stallSeconds: 300,
        bandwidthMbps: 0,
        tracker: "scan" as const,
      },
      connect: () =>
        connectWire({
          host: "127.0.0.1",
          port: proxy.port,
          caPem: site.caPem,
          certPem: who.certPem,
          keyPem: who.keyPem,
        }),
      logger: createLogger(process.env.LIFEBOAT_TEST_LOG ?? "silent", "agent"),
    });
    await rep.start();
    t.after(() => rep.stop());
    await until("initial sync", () => rep.status()?.state === "CONTINUOUS", 60_000);
    assert.ok(rep.counters.bytesSent > DISK_MIB * MiB * 0.9, `initial sync sent ${rep.counters.bytesSent}`);

    // Every frame acknowledged (durable at the replicator) before the cut.
    await until("the initial sync acknowledged", () => rep.status()?.backlogBytes === 0, 60_000);
    proxy.cut("drop");
    await until("the agent sees the cut", () => rep.status()?.connected === false, 30_000);
    const sent = rep.counters.bytesSent;
    const read = rep.counters.bytesRead;
    rep.requestRescan();
    await until("the rescan reads while the link is down", () => rep.counters.bytesRead > read, 30_000);
    await sleep(1000);
    proxy.restore();
    await until(
      "the rescan ends",
      () => rep.counters.rescans >= 1 && rep.status()?.state === "CONTINUOUS",
      60_000,
      () => rep.status(),
    );
    const resent = rep.counters.bytesSent - sent;
    t.diagnostic(`rescan of a ${DISK_MIB} MiB disk across a cut sent ${resent} bytes`);
    assert.ok(resent < 2 * MiB, `references, not blocks: ${resent} bytes sent for an unchanged disk`);
  });
});
