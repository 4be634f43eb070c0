/**
 * An agent behind an HTTPS proxy: with HTTPS_PROXY in its environment, both
 * its control connection (registration is done before; heartbeats, settings)
 * and its data connection go through HTTP CONNECT tunnels to the one port,
 * with TLS and the CA checks end to end inside them; NO_PROXY naming the
 * server sends it direct again.
 */
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentService } from "../../src/agent/service.js";
import { installAgent } from "../../src/agent/install.js";
import { exportDisk, listPits } from "../../src/store/index.js";
import { prng, randomBuffer } from "../support/images.js";
import { type Site, startSite } from "../support/lifeboat-site.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A forward proxy that only tunnels (CONNECT), recording each target. */
async function connectProxy(): Promise<{ url: string; targets: string[]; close(): Promise<void> }> {
  const targets: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = http.createServer((_req, res) => res.writeHead(405).end());
  server.on("connect", (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
    const target = req.url ?? "";
    targets.push(target);
    const [host, port] = [
      target.slice(0, target.lastIndexOf(":")),
      Number(target.slice(target.lastIndexOf(":") + 1)),
    ];
    const upstream = net.connect(port, host, () => {
      client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      if (head.length) upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {
        client.destroy();
        upstream.destroy();
      });
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    targets,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

void describe("an agent behind an HTTPS proxy", () => {
  let tmp = "";
  let site: Site;
  const saved = { HTTPS_PROXY: process.env.HTTPS_PROXY, NO_PROXY: process.env.NO_PROXY };
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-proxy-"));
    site = await startSite(tmp);
  });
  after(async () => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it(
    "replicates through CONNECT tunnels for control and data; NO_PROXY goes direct",
    { timeout: 120_000 },
    async () => {
      const proxy = await connectProxy();
      try {
        const image = path.join(tmp, "disk.img");
        const content = randomBuffer(prng(11), 4 * 1024 * 1024);
        await writeFile(image, content);
        const token = await site.api<{ token: string }>("/api/v1/tokens", {
          method: "POST",
          body: { role: "agent", uses: 1 },
        });
        const configDir = path.join(tmp, "agent");
        const installed = await installAgent({
          configDir,
          endpoint: site.url,
          token: token.token,
          caPem: site.caPem,
          hostname: "behind-proxy",
          blockSize: 65536,
          disks: [{ path: image, kind: "image", id: image, sizeBytes: content.length }],
          inventory: {},
        });
        const endpoint = new URL(site.url).host;

        process.env.HTTPS_PROXY = proxy.url;
        delete process.env.NO_PROXY;
        const svc = await AgentService.start({ configDir });
        try {
          for (let i = 0; i < 300 && svc.replication.status()?.state !== "CONTINUOUS"; i++) await sleep(100);
          assert.equal(svc.replication.status()?.state, "CONTINUOUS");
          const point = await svc.replication.requestPoint();
          assert.ok(point.pitId);
          const repo = await site.openRepo();
          try {
            const pit = (await listPits(repo, { server: installed.serverName })).find(
              (p) => p.id === point.pitId,
            );
            assert.ok(pit);
            const out = path.join(tmp, "out.img");
            await exportDisk(repo, pit, 0, out);
            assert.ok((await readFile(out)).equals(content), "the PIT is the disk, sent through the proxy");
          } finally {
            await repo.close();
          }
        } finally {
          await svc.stop();
        }
        // At least one tunnel for the API and one for the data stream, all to the server's one port.
        assert.ok(proxy.targets.length >= 2, `tunnels: ${proxy.targets.join(", ")}`);
        assert.ok(
          proxy.targets.every((t) => t === endpoint),
          `every tunnel went to ${endpoint}: ${proxy.targets.join(", ")}`,
        );

        // NO_PROXY naming the server: direct, no new tunnel.
        const before = proxy.targets.length;
        process.env.NO_PROXY = "127.0.0.1";
        const direct = await AgentService.start({ configDir });
        try {
          for (let i = 0; i < 300 && direct.replication.status()?.state !== "CONTINUOUS"; i++)
            await sleep(100);
          assert.equal(direct.replication.status()?.state, "CONTINUOUS");
        } finally {
          await direct.stop();
        }
        assert.equal(proxy.targets.length, before, "NO_PROXY sent it direct");
      } finally {
        await proxy.close();
      }
    },
  );
});
