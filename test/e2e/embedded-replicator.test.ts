/**
 * `lifeboat server start` embeds the replicator on its one port: a
 * registered agent streams a disk over the wire with its own certificate and
 * gets a PIT in the server's repository; another server's claim is refused,
 * and a decommissioned agent is refused at the next connection.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { isLifeboatError } from "../../src/base/index.js";
import { initServer } from "../../src/control/init.js";
import { startServer } from "../../src/control/start.js";
import { createApiDispatcher, fetchJson, generateKeyAndCsr } from "../../src/net/index.js";
import { exportDisk, listPits, openRepository } from "../../src/store/index.js";
import { AgentSession, connectWire, type PointDone } from "../../src/wire/index.js";
import { request } from "undici";
import { prng, randomBuffer } from "../support/images.js";

const CHUNK = 64 * 1024;
const sha = (b: Buffer) => createHash("sha256").update(b).digest();

void describe("the replicator embedded in server start", () => {
  let tmp = "";
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-embedded-"));
  });
  after(() => rm(tmp, { recursive: true, force: true }));

  void it("takes an agent's stream on the API port and makes its PIT; refuses other claims and revoked agents", async () => {
    const dataDir = path.join(tmp, "server");
    const init = await initServer({ dataDir });
    const server = await startServer(dataDir, { listen: "127.0.0.1:0", handleSignals: false });
    const caPem = await readFile(path.join(dataDir, "ca.pem"), "utf8");
    const operator = createApiDispatcher({ caPem });
    const auth = { authorization: `Bearer ${init.adminApiKey}` };
    const sessions: AgentSession[] = [];
    try {
      const token = await fetchJson<{ token: string }>(operator, `${server.url}/api/v1/tokens`, {
        method: "POST",
        headers: auth,
        body: { role: "agent", uses: 2 },
      });
      const register = async (hostname: string) => {
        const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: hostname });
        const r = await fetchJson<{ serverId: string; certificatePem: string }>(
          createApiDispatcher({ caPem }),
          `${server.url}/api/v1/register`,
          { body: { token: token.token, csr: csrPem, hostname } },
        );
        return { serverId: r.serverId, certPem: r.certificatePem, keyPem };
      };
      const db1 = await register("db1");
      const app1 = await register("app1");
      const disk = randomBuffer(prng(2), 32 * CHUNK);
      const session = (who: { certPem: string; keyPem: string }, claim: string) => {
        const done: PointDone[] = [];
        const s = new AgentSession({
          connect: () =>
            connectWire({
              host: "127.0.0.1",
              port: server.port,
              caPem,
              certPem: who.certPem,
              keyPem: who.keyPem,
            }),
          agent: { serverId: claim, hostname: "db1", version: "test" },
          disks: [{ index: 0, id: "vdb", sizeBytes: disk.length, blockSize: CHUNK }],
          backoff: { minMs: 10, maxMs: 100 },
          onPointDone: (d) => done.push(d),
        });
        sessions.push(s);
        return { s, done };
      };

      // The agent streams its disk and a point; the PIT lands in the server's repository.
      const { s, done } = session(db1, db1.serverId);
      await s.start();
      for (let i = 0; i < 32; i += 8) {
        const blocks = [];
        for (let k = i; k < i + 8; k++) {
          const data = disk.subarray(k * CHUNK, (k + 1) * CHUNK);
          blocks.push({ encoding: "raw" as const, sha256: sha(data), data: Buffer.from(data) });
        }
        await s.send({ type: "BLOCKS", disk: 0, offset: i * CHUNK, kind: "blocks", blocks });
      }
      const seq = await s.send({
        type: "POINT",
        pointId: "p1",
        consistency: "crash",
        takenAt: Date.now(),
        disks: [{ index: 0, sizeBytes: disk.length }],
      });
      await s.whenAcked(seq);
      for (let t = 0; done.length === 0 && t < 500; t++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(done.length, 1);
      const repo = await openRepository(path.join(dataDir, "repo"), {
        keyFile: path.join(dataDir, "keys", "repo.key"),
      });
      const pits = await listPits(repo, { server: "db1" });
      assert.equal(pits.length, 1);
      assert.equal(pits[0]!.id, done[0]!.pitId);
      const out = path.join(tmp, "out.img");
      await exportDisk(repo, pits[0]!, 0, out);
      assert.ok((await readFile(out)).equals(disk));
      await repo.close();

      // /metrics: what the embedded replicator applied for db1, while its stream is open.
      const scrape = await request(`${server.url}/metrics`, { dispatcher: operator, headers: auth });
      const text = await scrape.body.text();
      assert.match(
        text,
        new RegExp(
          `^lifeboat_server_replicated_bytes_total\\{server="db1",server_id="${db1.serverId}",replicator="embedded"\\} ${32 * CHUNK}$`,
          "m",
        ),
      );
      assert.match(text, /^lifeboat_replicator_sessions\{replicator="embedded",replicator_id=""\} 1$/m);

      // An agent claiming another server's id is refused for good.
      const liar = session(app1, db1.serverId).s;
      await assert.rejects(liar.start(), (err) => isLifeboatError(err, "AUTH_FORBIDDEN"));

      // Decommissioned: the certificate is refused at the next connection.
      await fetchJson(operator, `${server.url}/api/v1/servers/${app1.serverId}/decommission`, {
        method: "POST",
        headers: auth,
        body: {},
      });
      const revoked = session(app1, app1.serverId).s;
      await assert.rejects(revoked.start(), (err) => isLifeboatError(err));
    } finally {
      await Promise.all(sessions.map((x) => x.close().catch(() => undefined)));
      await server.close();
    }
  });
});
