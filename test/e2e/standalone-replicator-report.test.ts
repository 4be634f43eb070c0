/**
 * A separate replicator reports to the control plane: a PIT it makes enters
 * the catalog at once, with its pit.created event (not only at `store
 * reindex`), and what it ingested shows in /metrics per replicator.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { request } from "undici";
import { AgentService } from "../../src/agent/service.js";
import { installAgent } from "../../src/agent/install.js";
import type { EventView } from "../../src/control/events.js";
import { startStandaloneReplicator } from "../../src/replicator/standalone.js";
import { createApiDispatcher } from "../../src/net/index.js";
import { prng, randomBuffer } from "../support/images.js";
import { type Site, startSite } from "../support/lifeboat-site.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

void describe("a separate replicator's reports", () => {
  let tmp = "";
  let site: Site;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-standalone-report-"));
    site = await startSite(tmp);
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it(
    "its PIT is cataloged with a pit.created event at once; /metrics shows its ingest",
    { timeout: 120_000 },
    async () => {
      const token = await site.api<{ token: string }>("/api/v1/tokens", {
        method: "POST",
        body: { role: "replicator", uses: 1 },
      });
      const rep = await startStandaloneReplicator({
        endpoint: site.url,
        caPem: site.caPem,
        dataDir: path.join(tmp, "rep1"),
        listen: "127.0.0.1:0",
        name: "rep1",
        token: token.token,
      });
      const operator = createApiDispatcher({ caPem: site.caPem });
      try {
        // 4 MiB of random data and 4 MiB of zeros.
        const image = path.join(tmp, "disk.img");
        const content = Buffer.concat([randomBuffer(prng(11), 4 << 20), Buffer.alloc(4 << 20)]);
        await writeFile(image, content);
        const agentToken = await site.api<{ token: string }>("/api/v1/tokens", {
          method: "POST",
          body: { role: "agent", uses: 1 },
        });
        const configDir = path.join(tmp, "agent");
        const installed = await installAgent({
          configDir,
          endpoint: site.url,
          token: agentToken.token,
          caPem: site.caPem,
          hostname: "app9",
          blockSize: 65536,
          disks: [{ path: image, kind: "image", id: image, sizeBytes: content.length }],
          inventory: {},
        });
        await site.api(`/api/v1/servers/${installed.serverId}/settings/replication`, {
          method: "PUT",
          body: { replicatorId: rep.replicatorId },
        });
        const { latestSeq } = await site.api<{ latestSeq: number }>("/api/v1/events?limit=1");
        const svc = await AgentService.start({ configDir });
        try {
          for (let i = 0; i < 300 && svc.replication.status()?.state !== "CONTINUOUS"; i++) await sleep(100);
          const point = await svc.replication.requestPoint();
          assert.ok(point.pitId);

          // The PIT brings the replicator's heartbeat forward: its event comes within seconds.
          let created: EventView | undefined;
          for (let i = 0; i < 100 && created === undefined; i++) {
            const page = await site.api<{ events: EventView[] }>(
              `/api/v1/events?after=${latestSeq}&type=pit.created`,
            );
            created = page.events.find((e) => e.payload.pitId === point.pitId);
            if (created === undefined) await sleep(100);
          }
          assert.ok(created, "a pit.created event for the separate replicator's PIT");
          assert.equal(created.serverId, installed.serverId);
          assert.equal(created.server, installed.serverName);
          const pits = await site.api<{ pits: { id: string }[] }>(
            `/api/v1/pits?server=${installed.serverId}`,
          );
          assert.ok(
            pits.pits.some((p) => p.id === point.pitId),
            "the PIT is in the catalog",
          );

          // That heartbeat carried the ingest counters too.
          const scrape = await request(`${site.url}/metrics`, {
            dispatcher: operator,
            headers: { authorization: `Bearer ${site.adminKey}` },
          });
          const text = await scrape.body.text();
          const series = (name: string) => {
            const m = new RegExp(
              `^${name}\\{replicator="rep1",replicator_id="${rep.replicatorId}"\\} (\\d+)$`,
              "m",
            ).exec(text);
            assert.ok(
              m,
              `${name} for rep1 in:\n${text
                .split("\n")
                .filter((l) => l.includes("replicator"))
                .join("\n")}`,
            );
            return Number(m[1]);
          };
          const received = series("lifeboat_replicator_ingest_bytes_total");
          const stored = series("lifeboat_replicator_stored_bytes_total");
          console.log(`# separate replicator: received ${received} bytes, stored ${stored}`);
          // Every block was sent (uncompressed: random data does not shrink); the zeros are stored once.
          assert.ok(received >= 4 << 20 && received <= 8 << 20, `received ${received}`);
          assert.ok(stored >= 4 << 20 && stored < 5 << 20, `stored ${stored}: the random half, once`);
          assert.equal(series("lifeboat_replicator_sessions"), 1);
        } finally {
          await svc.stop();
        }
      } finally {
        await operator.close();
        await rep.close();
      }
    },
  );
});
