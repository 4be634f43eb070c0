/**
 * Two control-plane instances on one PostgreSQL behind a TCP pass-through
 * balancer (HAProxy, test/support/tcp-balancer.ts); kill -9 of the one
 * running a launch job.
 *
 * Both `lifeboat server start` processes use one data directory (config, CA,
 * keys, launch root, a local repository) and one database; the job claim
 * timeout is lowered to CLAIM_S (config.json jobClaimTimeoutSeconds). An
 * agent replicates an image file through the balancer (its stream lands on
 * either instance's embedded replicator) and makes a PIT. Scheduled work
 * runs once across the pair: the PIT is recorded once, and the agent's stop
 * gives one `server.disconnected` event although both instances sweep.
 * Then a drill to the image target is asked for through the balancer; while
 * it materializes, the instance that claimed it (jobs.claimed_by) gets
 * SIGKILL. The other must take the stale claim over and finish the job:
 * succeeded, the image equal to the PIT, one finish (one `job.finished`
 * event, one "succeeded" line), the takeover in the job's log. The time from
 * the kill to the takeover and to the end is printed.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { it } from "node:test";
import { AgentService } from "../../src/agent/service.js";
import { installAgent } from "../../src/agent/install.js";
import { createLogger } from "../../src/base/index.js";
import { initServer } from "../../src/control/init.js";
import { createApiDispatcher, fetchJson } from "../../src/net/index.js";
import { exportDisk, listPits, openRepository } from "../../src/store/index.js";
import { strictCapabilities } from "../support/capabilities.js";
import { lifeboatService } from "../support/cli.js";
import { connectionUrl, forEachDatabase } from "../support/databases.js";
import { type TcpBalancer, startTcpBalancer, tcpBalancerMissing } from "../support/tcp-balancer.js";

const MiB = 1 << 20;
/** Big enough that materializing it takes a few seconds here: the kill lands in the middle. */
const DISK_MIB = Number(process.env.LIFEBOAT_TEST_PAIR_DISK_MIB ?? 128);
const CLAIM_S = 5;
const HEARTBEAT_TIMEOUT_S = 4;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, ms: number, f: () => Promise<T | undefined | false>): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

async function sha256File(file: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest("hex");
}

forEachDatabase("two control-plane instances behind a TCP balancer", (open, dialect) => {
  if (dialect !== "postgres") return; // several instances share PostgreSQL; SQLite sites run one process
  void it(
    "kill -9 of the instance running a launch job: the other takes it over and finishes it once",
    { timeout: 300_000 },
    async (t) => {
      const missing = tcpBalancerMissing();
      if (missing) {
        if (strictCapabilities) throw new Error(`under LIFEBOAT_TEST_STRICT=1: ${missing}`);
        t.skip(missing);
        return;
      }
      const database = await open();
      const tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-cp-pair-"));
      const cleanups: (() => Promise<unknown>)[] = [];
      try {
        const dataDir = path.join(tmp, "server");
        const init = await initServer({ dataDir, databaseUrl: await connectionUrl(database) });
        const configFile = path.join(dataDir, "config.json");
        const config = JSON.parse(await readFile(configFile, "utf8")) as Record<string, unknown>;
        config.jobClaimTimeoutSeconds = CLAIM_S;
        config.heartbeatTimeoutSeconds = HEARTBEAT_TIMEOUT_S;
        await writeFile(configFile, JSON.stringify(config));

        // Two instances, one data directory, one database.
        const instances: {
          name: string;
          port: number;
          proc: ReturnType<typeof lifeboatService>;
          dead: boolean;
        }[] = [];
        for (const name of ["cp1", "cp2"]) {
          const port = await freePort();
          const proc = lifeboatService([
            "server",
            "start",
            "--data-dir",
            dataDir,
            "--listen",
            `127.0.0.1:${port}`,
          ]);
          const inst = { name, port, proc, dead: false };
          instances.push(inst);
          cleanups.push(async () => {
            if (inst.dead) return;
            proc.child.kill("SIGTERM");
            await Promise.race([proc.exited, sleep(10_000)]);
            proc.child.kill("SIGKILL");
          });
        }
        const caPem = await readFile(path.join(dataDir, "ca.pem"), "utf8");
        const operator = createApiDispatcher({ caPem });
        cleanups.push(() => operator.close());
        const call = <T>(base: string, p: string, body?: unknown) =>
          fetchJson<T>(operator, `${base}${p}`, {
            ...(body !== undefined ? { method: "POST", body } : {}),
            headers: { authorization: `Bearer ${init.adminApiKey}` },
          });
        for (const i of instances)
          await until(`${i.name} answering`, 60_000, () =>
            call(`https://127.0.0.1:${i.port}`, "/api/v1/jobs").then(
              () => true,
              () => false,
            ),
          );

        const balancer: TcpBalancer = await startTcpBalancer(
          instances.map((i) => ({ name: i.name, host: "127.0.0.1", port: i.port })),
        );
        cleanups.push(() => balancer.stop());
        // Clients see only the balancer. A request on a kept-alive connection to the killed
        // instance fails once; reads are asked again (writes are only made while both run).
        const api = async <T>(p: string, body?: unknown): Promise<T> => {
          for (let attempt = 0; ; attempt++) {
            try {
              return await call<T>(balancer.url, p, body);
            } catch (err) {
              if (body !== undefined || attempt >= 5) throw err;
              await sleep(200);
            }
          }
        };

        // An agent on an image file of random bytes replicates through the balancer, and makes a PIT.
        const image = path.join(tmp, "disk.img");
        await writeFile(image, randomBytes(DISK_MIB * MiB));
        const { token } = await api<{ token: string }>("/api/v1/tokens", { role: "agent", uses: 1 });
        const agentDir = path.join(tmp, "agent");
        const installed = await installAgent({
          configDir: agentDir,
          endpoint: balancer.url,
          token,
          caPem,
          hostname: "app-01",
          blockSize: 64 * 1024,
          disks: [{ path: image, kind: "image", id: image, sizeBytes: DISK_MIB * MiB }],
          inventory: {},
        });
        const syncStart = Date.now();
        const agent = await AgentService.start({
          configDir: agentDir,
          logger: createLogger(process.env.LIFEBOAT_TEST_LOG ?? "silent", "agent"),
          settingsIntervalMs: 1000,
        });
        let agentRunning = true;
        cleanups.push(() => (agentRunning ? agent.stop() : Promise.resolve()));
        await until("the agent CONTINUOUS", 180_000, () => {
          const s = agent.replication.status();
          return Promise.resolve(s?.connected && s.disks.every((d) => d.state === "CONTINUOUS"));
        });
        const syncSeconds = (Date.now() - syncStart) / 1000;
        const point = await agent.replication.requestPoint();
        assert.ok(point.pitId, "a PIT was made");
        const pitId = point.pitId;
        await until("the PIT in the catalog", 30_000, async () => {
          const r = await api<{ pits: { id: string }[] }>(`/api/v1/pits?server=${installed.serverId}`);
          return r.pits.some((p) => p.id === pitId);
        });

        // Scheduled work once across the pair. The agent stops: both instances sweep every second,
        // one server.disconnected event.
        await agent.stop();
        agentRunning = false;
        await until("the server DISCONNECTED", 30_000, async () => {
          const s = await database.db
            .selectFrom("servers")
            .select("state")
            .where("id", "=", installed.serverId)
            .executeTakeFirst();
          return s?.state === "DISCONNECTED";
        });
        await sleep(3000); // a few more sweeps of each instance
        const eventsOf = async (type: string) =>
          database.db.selectFrom("events").selectAll().where("type", "=", type).execute();
        const disconnected = (await eventsOf("server.disconnected")).filter(
          (e) => e.server_id === installed.serverId,
        );
        assert.equal(disconnected.length, 1, "one server.disconnected event across two sweeping instances");
        // The PIT is in the catalog once, with one pit.created event.
        const repo = await openRepository(String(config.repository), {
          keyFile: path.join(dataDir, "keys", "repo.key"),
        });
        cleanups.push(() => repo.close());
        const repoPits = (await listPits(repo, {})).map((p) => p.id).sort();
        const catalog = (
          await database.db
            .selectFrom("pits")
            .select("id")
            .where("server_id", "=", installed.serverId)
            .execute()
        )
          .map((p) => p.id)
          .sort();
        assert.deepEqual(catalog, repoPits, "the catalog holds each of the repository's PITs once");
        assert.equal((await eventsOf("pit.created")).length, repoPits.length, "one pit.created per PIT");

        // The drill, through the balancer.
        const { job } = await api<{ job: { id: string } }>("/api/v1/launches", {
          servers: [installed.serverName],
          pit: pitId,
          target: "image",
        });
        const jobRow = () =>
          database.db.selectFrom("jobs").selectAll().where("id", "=", job.id).executeTakeFirstOrThrow();
        const jobLog = () =>
          database.db.selectFrom("job_log").selectAll().where("job_id", "=", job.id).orderBy("seq").execute();
        // Killed while it materializes: claimed, and its log says materialize began.
        const claimedBy = await until("the job claimed and materializing", 60_000, async () => {
          const row = await jobRow();
          assert.equal(
            row.state === "succeeded",
            false,
            "the job ended before the kill: make DISK_MIB larger",
          );
          if (row.state !== "running" || row.claimed_by === null) return undefined;
          const log = await jobLog();
          return log.some((l) => l.message.endsWith(": materialize")) ? row.claimed_by : undefined;
        });
        const pid = Number(claimedBy.split(":")[1]);
        const victim = instances.find((i) => i.proc.child.pid === pid);
        const survivor = instances.find((i) => i !== victim);
        assert.ok(victim && survivor, `claimed by ${claimedBy}, one of our instances`);
        const killedAt = Date.now();
        victim.proc.child.kill("SIGKILL");
        await victim.proc.exited;
        victim.dead = true;
        assert.notEqual((await jobRow()).state, "succeeded", "the job was still running at the kill");

        const resumed = await until("the survivor takes the job over", 60_000, async () => {
          const log = await jobLog();
          return log.find((l) => l.message.startsWith("resumed on "));
        });
        const takeoverMs = Date.now() - killedAt;
        const done = await until("the job finished", 120_000, async () => {
          const j = await api<{ job: { id: string; state: string; result: unknown } }>(
            `/api/v1/jobs/${job.id}`,
          );
          return ["succeeded", "failed", "terminated"].includes(j.job.state) ? j.job : undefined;
        });
        const finishedMs = Date.now() - killedAt;
        assert.equal(done.state, "succeeded", JSON.stringify(done.result));
        const row = await jobRow();
        assert.notEqual(row.claimed_by, claimedBy);
        assert.equal(
          Number(row.claimed_by!.split(":")[1]),
          survivor.proc.child.pid,
          "finished by the survivor",
        );
        assert.ok(resumed.message.includes(row.claimed_by!), resumed.message);

        // Once: one finish line, one job.finished event; the log shows both claims in order.
        await sleep(3000); // a few more passes of the survivor's runner: a second finish would show
        const log = await jobLog();
        const messages = log.map((l) => l.message);
        assert.equal(messages.filter((m) => m === "succeeded").length, 1, messages.join("\n"));
        const finished = (await eventsOf("job.finished")).filter(
          (e) => (JSON.parse(e.payload_json) as { jobId: string }).jobId === job.id,
        );
        assert.equal(finished.length, 1, "one job.finished event");
        const started = messages.findIndex((m) => m === `started on ${claimedBy}`);
        const resumedAt = messages.findIndex((m) => m.startsWith("resumed on "));
        assert.ok(started >= 0 && resumedAt > started, messages.join("\n"));
        assert.equal((await jobRow()).state, "succeeded");

        // The image is the PIT: the store's export and the source image, byte for byte.
        const images = (done.result as { outputs: { images: string[] } }).outputs.images;
        assert.equal(images.length, 1);
        const exported = path.join(tmp, "export.img");
        const pit = (await listPits(repo, {})).find((p) => p.id === pitId)!;
        await exportDisk(repo, pit, 0, exported);
        const [launched, fromStore, source] = await Promise.all(
          [images[0]!, exported, image].map(sha256File),
        );
        assert.equal(fromStore, source, "the PIT is the source image");
        assert.equal(launched, fromStore, "the launched image is the PIT");

        // The balancer gave both instances clients, and took the killed one out.
        const conns = await balancer.connections();
        assert.ok(conns.cp1!.total > 0 && conns.cp2!.total > 0, JSON.stringify(conns));
        assert.equal(conns[victim.name]!.up, false, "the killed instance is down at the balancer");
        assert.equal(conns[survivor.name]!.up, true);

        process.stdout.write(
          `# control-plane kill -9: ${JSON.stringify({
            diskMiB: DISK_MIB,
            syncSeconds,
            claimTimeoutSeconds: CLAIM_S,
            victim: victim.name,
            takeoverMs,
            finishedMs,
            connections: conns,
          })}\n`,
        );
      } finally {
        for (const c of cleanups.reverse()) await c().catch(() => undefined);
        await rm(tmp, { recursive: true, force: true });
      }
    },
  );
});
