/**
 * A replicator in a process of its own: it registers with a replicator
 * token, gets the repository and a server certificate over its mutual-TLS
 * identity, and serves the agents of the servers assigned to it. An agent
 * learns the address from its settings; the embedded replicator sends
 * assigned servers away; an unassigned agent is refused by the separate one.
 */
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentService } from "../../src/agent/service.js";
import { installAgent } from "../../src/agent/install.js";
import { startStandaloneReplicator } from "../../src/replicator/standalone.js";
import { exportDisk, listPits } from "../../src/store/index.js";
import { AgentSession, connectWire } from "../../src/wire/index.js";
import { prng, randomBuffer } from "../support/images.js";
import { type Site, startSite } from "../support/lifeboat-site.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

void describe("a separate replicator", () => {
  let tmp = "";
  let site: Site;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-standalone-"));
    site = await startSite(tmp);
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it("registers, serves its assigned server's agent, refuses others", { timeout: 120_000 }, async () => {
    const token = await site.api<{ token: string }>("/api/v1/tokens", {
      method: "POST",
      body: { role: "replicator", uses: 1 },
    });
    const dataDir = path.join(tmp, "rep1");
    const rep = await startStandaloneReplicator({
      endpoint: site.url,
      caPem: site.caPem,
      dataDir,
      listen: "127.0.0.1:0",
      name: "rep1",
      token: token.token,
    });
    try {
      assert.equal((await stat(path.join(dataDir, "keys", "repo.key"))).mode & 0o777, 0o600);
      assert.equal((await stat(path.join(dataDir, "replicator.key"))).mode & 0o777, 0o600);

      // An agent of a server assigned to rep1.
      const image = path.join(tmp, "disk.img");
      const content = randomBuffer(prng(7), 8 * 1024 * 1024);
      content.fill(0, 2 * 1024 * 1024, 3 * 1024 * 1024);
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
        hostname: "app7",
        blockSize: 65536,
        disks: [{ path: image, kind: "image", id: image, sizeBytes: content.length }],
        inventory: {},
      });
      await site.api(`/api/v1/servers/${installed.serverId}/settings/replication`, {
        method: "PUT",
        body: { replicatorId: rep.replicatorId },
      });
      const svc = await AgentService.start({ configDir });
      try {
        for (let i = 0; i < 300 && svc.replication.status()?.state !== "CONTINUOUS"; i++) await sleep(100);
        const point = await svc.replication.requestPoint();
        assert.ok(point.pitId);
        const repo = await site.openRepo();
        try {
          const pit = (await listPits(repo, { server: installed.serverName })).find(
            (p) => p.id === point.pitId,
          );
          assert.ok(pit, "the PIT is in the site's repository");
          const out = path.join(tmp, "out.img");
          await exportDisk(repo, pit, 0, out);
          assert.ok((await readFile(out)).equals(content));
        } finally {
          await repo.close();
        }
      } finally {
        await svc.stop();
      }

      // An agent whose server is not assigned to rep1 is refused there, and may retry.
      const other = await site.register("app8");
      let refused!: (code: string) => void;
      const refusal = new Promise<string>((r) => (refused = r));
      const s = new AgentSession({
        connect: () =>
          connectWire({
            host: "127.0.0.1",
            port: rep.port,
            caPem: site.caPem,
            certPem: other.certPem,
            keyPem: other.keyPem,
          }),
        agent: { serverId: other.serverId, hostname: "app8", version: "test" },
        disks: [{ index: 0, id: "x", sizeBytes: 65536, blockSize: 65536 }],
        backoff: { minMs: 10, maxMs: 50 },
        onDisconnect: (e) => refused(e.code),
      });
      void s.start().catch(() => undefined);
      assert.equal(await refusal, "REPLICATOR_NOT_ASSIGNED");
      await s.close();
    } finally {
      await rep.close();
    }
  });
});
