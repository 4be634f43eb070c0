/**
 * Disks that come and go while the agent runs (agent/disk-changes.ts),
 * without root: the engine's side (applyDiskChange) against a stand-in
 * session and disks, and the service's DiskMonitor against image files and
 * a stand-in engine, on a manual clock.
 */
import assert from "node:assert/strict";
import { mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import {
  type AgentConfig,
  type AgentDisk,
  agentConfigSchema,
  loadAgentConfig,
  saveAgentConfig,
} from "../../src/agent/index.js";
import { type DiskChangeHost, DiskMonitor, applyDiskChange } from "../../src/agent/disk-changes.js";
import type { DiskRun } from "../../src/agent/disk-run.js";
import { ManualClock, silentLogger, systemClock } from "../../src/base/index.js";
import type { AgentSession } from "../../src/wire/index.js";

const img = (index: number, p: string): AgentDisk => ({ index, path: p, kind: "image", id: p });

/** A disk as the engine holds it, as far as applyDiskChange looks. */
function fakeRun(cfg: AgentDisk): DiskRun & { closed: boolean } {
  const run = {
    cfg,
    closed: false,
    tracker: undefined,
    owed: undefined,
    reader: {
      close: () => {
        run.closed = true;
        return Promise.resolve();
      },
    },
  };
  return run as unknown as DiskRun & { closed: boolean };
}

/** A session with `frames` unacknowledged until ack() (or never). */
function fakeSession(frames: number) {
  let acked: () => void = () => undefined;
  const state = { frames, reconnects: 0 };
  const session = {
    get inFlight() {
      return { frames: state.frames, bytes: state.frames * 100 };
    },
    lastAcked: 10,
    whenAcked: () => new Promise<void>((r) => (acked = r)),
    reconnect: () => state.reconnects++,
  } as unknown as AgentSession;
  return {
    session,
    state,
    ack: () => {
      state.frames = 0;
      acked();
    },
  };
}

void describe("disk changes", () => {
  let tmp = "";
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-disk-changes-"));
  });
  after(() => rm(tmp, { recursive: true, force: true }));

  void it("lets a disk go once what was sent is acknowledged, opens new ones, reconnects once", async () => {
    const [d0, d1, d2, d3, d4] = [0, 1, 2, 3, 4].map((i) => img(i, `/d${i}.img`)) as [
      AgentDisk,
      AgentDisk,
      AgentDisk,
      AgentDisk,
      AgentDisk,
    ];
    const one = fakeRun(d1);
    const disks = [fakeRun(d0), one];
    const s = fakeSession(3);
    let stopping = false;
    const host: DiskChangeHost = {
      disks,
      session: s.session,
      open: (cfg) => (cfg.index === 4 ? Promise.reject(new Error("gone")) : Promise.resolve(fakeRun(cfg))),
      stopping: () => stopping,
      clock: systemClock,
      log: silentLogger,
    };
    const done = applyDiskChange({ want: [d0, d2, d3, d4], rescan: new Set([3]) }, host);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(one.closed, false, "not before the frames sent are acknowledged");
    assert.equal(disks.length, 2);
    s.ack();
    const r = await done;
    assert.deepEqual(r, { added: [2, 3], removed: [1], failed: [4] });
    assert.equal(one.closed, true);
    assert.deepEqual(
      disks.map((d) => [d.cfg.index, d.owed]),
      [
        [0, undefined],
        [2, "initial"],
        [3, "rescan"],
      ],
    );
    assert.equal(s.state.reconnects, 1);

    // Nothing to change: no reconnect. A stop ends a wait on a link that is down.
    assert.deepEqual(await applyDiskChange({ want: [d0, d2, d3], rescan: new Set() }, host), {
      added: [],
      removed: [],
      failed: [],
    });
    assert.equal(s.state.reconnects, 1);
    const down = fakeSession(5);
    const waiting = applyDiskChange({ want: [d0], rescan: new Set() }, { ...host, session: down.session });
    setTimeout(() => (stopping = true), 100);
    await assert.rejects(waiting, { code: "AGENT_STOPPING" });
    assert.equal(disks.length, 3, "nothing let go");
  });

  void it("a disk whose file is gone is missing, comes back with a rescan, and is retired after the grace period", async () => {
    const dir = path.join(tmp, "agent");
    const [a, b] = [path.join(tmp, "a.img"), path.join(tmp, "b.img")];
    for (const f of [a, b]) await writeFile(f, Buffer.alloc(1 << 20, 7));
    const config: AgentConfig = agentConfigSchema.parse({
      version: 1,
      endpoint: "https://lifeboat.example:8443",
      serverId: "srv_1",
      serverName: "db1",
      hostname: "db1",
      disks: [img(0, a), img(1, b)],
      settings: { missingDiskGraceSeconds: 60 },
    });
    await saveAgentConfig(dir, config);
    const clock = new ManualClock(1_000_000);
    const calls: { want: number[]; rescan: number[] }[] = [];
    let running = [0, 1];
    const engine = {
      get diskIndexes() {
        return running;
      },
      changeDisks: (want: AgentDisk[], rescan: number[]) => {
        calls.push({ want: want.map((d) => d.index), rescan });
        const added = want.map((d) => d.index).filter((i) => !running.includes(i));
        const removed = running.filter((i) => !want.some((d) => d.index === i));
        running = want.map((d) => d.index);
        return Promise.resolve({ added, removed, failed: [] });
      },
    };
    let changes = 0;
    const monitor = new DiskMonitor({
      configDir: dir,
      config,
      engine: () => engine,
      onChange: () => changes++,
      clock,
      logger: silentLogger,
    });
    await monitor.probeAtStart();
    await monitor.tick();
    assert.deepEqual(calls, [], "nothing changed");

    // Gone: let go at once, shown as missing.
    await rename(b, `${b}.away`);
    await monitor.tick();
    assert.deepEqual(calls.at(-1), { want: [0], rescan: [0] });
    assert.deepEqual(
      monitor.missingStatus().map((d) => [d.index, d.state, d.missingSince]),
      [[1, "MISSING", 1_000_000]],
    );
    assert.ok(changes > 0, "the service hears of it");
    // Back within the grace period: replicated again after a rescan.
    clock.advance(30_000);
    await rename(`${b}.away`, b);
    await monitor.tick();
    assert.deepEqual(calls.at(-1), { want: [0, 1], rescan: [0, 1] });
    assert.deepEqual(monitor.missingStatus(), []);

    // Gone for the grace period: retired in config.json; its index is not given again.
    await rm(b);
    await monitor.tick();
    clock.advance(59_000);
    await monitor.tick();
    assert.equal((await loadAgentConfig(dir)).disks.length, 2, "not before the grace period");
    clock.advance(1_000);
    await monitor.tick();
    const after = await loadAgentConfig(dir);
    assert.deepEqual(
      after.disks.map((d) => d.index),
      [0],
    );
    assert.deepEqual(
      after.retiredDisks.map((d) => [d.index, d.reason]),
      [[1, "missing"]],
    );
    assert.deepEqual(monitor.missingStatus(), []);
    assert.deepEqual(running, [0]);

    // The last disk is never retired, however long it is gone.
    await rm(a);
    await monitor.tick();
    clock.advance(120_000);
    await monitor.tick();
    assert.deepEqual(
      (await loadAgentConfig(dir)).disks.map((d) => d.index),
      [0],
    );
    assert.deepEqual(
      monitor.missingStatus().map((d) => d.index),
      [0],
    );
    assert.deepEqual(running, []);
  });
});
