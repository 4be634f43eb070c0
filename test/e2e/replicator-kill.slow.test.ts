/**
 * kill -9 of the server (control plane and embedded replicator, run as
 * `lifeboat server start`) in the middle of a write burst, then a start on
 * the same port. The agent reconnects and resumes its stream: it sends again
 * at most one window, needs no rescan (the replicator keeps the stream
 * durably), and the next PIT is the device as it was while frozen.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import { Replication } from "../../src/agent/replication.js";
import { createLogger } from "../../src/base/index.js";
import { createApiDispatcher, fetchJson, generateKeyAndCsr } from "../../src/net/index.js";
import { openRepository } from "../../src/store/index.js";
import { DEFAULT_WINDOW, connectWire } from "../../src/wire/index.js";
import { agentSettings } from "../support/lifeboat-site.js";
import { requireCapability } from "../support/capabilities.js";
import { lifeboat, lifeboatService } from "../support/cli.js";
import { loopDiskForTest } from "../support/loop-disk.js";
import { assertPitIsSnapshot, sleep, snapshotDevice, until } from "../support/pit-check.js";

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

void describe("kill -9 of the replicator during a write burst", () => {
  let tmp = "";
  after(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  void it(
    "the agent resumes without a rescan and the next PIT equals the frozen device",
    { timeout: 420_000 },
    async (t) => {
      if (!requireCapability(t, "root", "loop", "tracefs", "fsfreeze")) return;
      tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-replicator-kill-"));
      const dataDir = path.join(tmp, "server");
      const port = await freePort();
      const init = await lifeboat(["server", "init", "--data-dir", dataDir, "--listen", `127.0.0.1:${port}`]);
      assert.equal(init.code, 0, init.stderr);
      const caPem = await readFile(path.join(dataDir, "ca.pem"), "utf8");
      const adminKey = (await readFile(path.join(dataDir, "admin-api.key"), "utf8")).trim();
      const url = `https://127.0.0.1:${port}`;
      const dispatcher = createApiDispatcher({ caPem });
      t.after(() => dispatcher.close());

      let server = lifeboatService([
        "server",
        "start",
        "--data-dir",
        dataDir,
        "--listen",
        `127.0.0.1:${port}`,
      ]);
      t.after(async () => {
        server.child.kill("SIGKILL");
        await server.exited;
      });
      const healthy = async (): Promise<boolean> => {
        try {
          await fetchJson(dispatcher, `${url}/healthz`, {});
          return true;
        } catch {
          return false;
        }
      };
      await until("the server to answer", healthy, 60_000, () => server.log().slice(-2000));

      const api = <T>(p: string, body: unknown): Promise<T> =>
        fetchJson<T>(dispatcher, `${url}${p}`, { body, headers: { authorization: `Bearer ${adminKey}` } });
      const token = await api<{ token: string }>("/api/v1/tokens", { role: "agent", uses: 1 });
      const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: "kill-1" });
      const who = await api<{ serverId: string; serverName: string; certificatePem: string }>(
        "/api/v1/register",
        {
          token: token.token,
          csr: csrPem,
          hostname: "kill-1",
        },
      );

      const disk = await loopDiskForTest(t, { sizeMiB: 128 });
      const mp = disk.mountPoint!;
      spawnSync("sh", ["-c", `head -c 24M /dev/urandom > ${mp}/base && sync`]);
      const frozenImage = path.join(tmp, "frozen.img");
      const rep = new Replication({
        serverId: who.serverId,
        hostname: "kill-1",
        version: "test",
        disks: [{ index: 0, path: disk.device, kind: "device", id: "loop-kill" }],
        blockSize: 64 * 1024,
        settings: agentSettings({ freezeCapMs: 15_000, tracker: "trace" }),
        connect: () => connectWire({ host: "127.0.0.1", port, caPem, certPem: who.certificatePem, keyPem }),
        logger: createLogger(process.env.LIFEBOAT_TEST_LOG ?? "silent", "agent"),
        whileFrozen: () => snapshotDevice(disk.device, frozenImage),
      });
      await rep.start();
      const burst = spawn(
        "sh",
        [
          "-c",
          `for i in 1 2 3 4 5 6 7 8; do
           dd if=/dev/urandom of=${mp}/burst$i bs=1M count=8 conv=fsync status=none;
           dd if=/dev/urandom of=${mp}/base bs=64k count=16 seek=$((i * 20)) conv=notrunc,fsync status=none;
         done`,
        ],
        { stdio: "ignore" },
      );
      const burstDone = new Promise<number | null>((r) => burst.on("exit", (code) => r(code)));
      try {
        await until("initial sync", () => rep.status()?.state === "CONTINUOUS", 120_000);
        const rescans = rep.counters.rescans;
        const resent0 = rep.session.resent;
        const connections = rep.session.connections;

        // Kill while the burst is being shipped: frames are in flight, after a checkpoint has made the
        // stream durable (an acknowledgement says so). A replicator killed before its first checkpoint
        // holds nothing of the stream, and the agent must then rescan; on a loaded machine that
        // checkpoint can come seconds after the agent reports CONTINUOUS.
        await until(
          "a durable checkpoint, then frames in flight",
          () => rep.session.lastAcked > 0 && rep.session.inFlight.frames > 0,
          60_000,
        );
        server.child.kill("SIGKILL");
        await server.exited;
        await until("the agent to see the server gone", () => rep.status()?.connected === false, 30_000);
        await sleep(2000);
        server = lifeboatService(["server", "start", "--data-dir", dataDir, "--listen", `127.0.0.1:${port}`]);
        await until("the server to answer again", healthy, 60_000, () => server.log().slice(-2000));

        assert.equal(await burstDone, 0, "the burst ran");
        await until("the agent to reconnect", () => rep.session.connections > connections, 90_000);
        await until(
          "the backlog to drain",
          () => {
            const s = rep.status();
            return (
              !!s && s.connected && s.state === "CONTINUOUS" && s.backlogBytes < 1 << 20 && s.lagSeconds < 5
            );
          },
          120_000,
          () => rep.status(),
        );
        const resent = rep.session.resent.frames - resent0.frames;
        assert.ok(resent <= DEFAULT_WINDOW.frames, `resent ${resent} frames: at most one window`);
        assert.equal(rep.counters.rescans, rescans, "no rescan after the replicator restarted");

        const point = await rep.requestPoint();
        assert.equal(point.consistency, "filesystem");
        assert.ok(point.pitId, "the replicator named the PIT");
        const repo = {
          openRepo: () =>
            openRepository(path.join(dataDir, "repo"), { keyFile: path.join(dataDir, "keys", "repo.key") }),
        };
        await assertPitIsSnapshot(repo, who.serverName, point.pitId, frozenImage, path.join(tmp, "pit.img"));
        assert.equal(rep.counters.rescans, rescans, "no rescan up to the PIT");
      } finally {
        burst.kill("SIGKILL");
        await burstDone;
        await rep.stop();
      }
    },
  );
});
