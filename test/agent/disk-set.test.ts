/**
 * The agent's disk list and its edits (agent/disk-set.ts): index allocation
 * that never reuses a retired index, the checks a new disk must pass (with
 * their stable codes), config.json written whole under its lock, and
 * `lifeboat agent disks list|add|remove` as an operator runs it.
 */
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import {
  type AgentConfig,
  type BlockDeviceInfo,
  addDisks,
  agentConfigSchema,
  agentPaths,
  checkNewDisk,
  editAgentConfig,
  findDisk,
  loadAgentConfig,
  nextDiskIndex,
  retireDisk,
  saveAgentConfig,
} from "../../src/agent/index.js";
import { requireCapability } from "../support/capabilities.js";
import { type Run, lifeboat } from "../support/cli.js";
import { loopDiskForTest } from "../support/loop-disk.js";

const errorCode = (r: Run) => (JSON.parse(r.stderr.trim().split("\n").pop()!) as { code: string }).code;

function configWith(disks: AgentConfig["disks"], over: Partial<AgentConfig> = {}): AgentConfig {
  return agentConfigSchema.parse({
    version: 1,
    endpoint: "https://lifeboat.example:8443",
    serverId: "srv_1",
    serverName: "db1",
    hostname: "db1",
    disks,
    ...over,
  });
}

const img = (index: number, p: string) => ({ index, path: p, kind: "image" as const, id: p });

void describe("agent disk set", () => {
  let tmp = "";
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-disk-set-"));
  });
  after(() => rm(tmp, { recursive: true, force: true }));

  const image = async (name: string, size = 1 << 20) => {
    const p = path.join(tmp, name);
    await writeFile(p, Buffer.alloc(size, 1));
    return p;
  };

  void it("a configuration written before disk changes parses as a listed one with nothing retired", () => {
    const c = configWith([img(0, "/a.img")]);
    assert.equal(c.diskSelection, "listed");
    assert.deepEqual(c.retiredDisks, []);
    assert.throws(
      () =>
        agentConfigSchema.parse({
          ...c,
          retiredDisks: [{ ...img(0, "/b.img"), retiredAt: "2026-01-01T00:00:00Z", reason: "removed" }],
        }),
      /disk index 0 is used twice/,
    );
  });

  void it("indexes: the next is above every index ever given, retired ones are not reused", () => {
    let c = configWith([img(0, "/a.img"), img(1, "/b.img")]);
    assert.equal(nextDiskIndex(c), 2);
    c = retireDisk(c, 1, "removed", Date.parse("2026-11-29T12:00:00Z")).config;
    assert.deepEqual(
      c.disks.map((d) => d.index),
      [0],
    );
    assert.deepEqual(c.retiredDisks, [
      { ...img(1, "/b.img"), retiredAt: "2026-11-29T12:00:00.000Z", reason: "removed" },
    ]);
    assert.equal(nextDiskIndex(c), 2, "index 1 stays retired");
    const { config, added } = addDisks(c, [
      { path: "/c.img", kind: "image", id: "/c.img" },
      { path: "/d.img", kind: "image", id: "/d.img" },
    ]);
    assert.deepEqual(
      added.map((d) => d.index),
      [2, 3],
    );
    assert.deepEqual(
      config.disks.map((d) => d.index),
      [0, 2, 3],
    );
    // The last disk cannot be removed; at index 255 there is no next.
    assert.throws(() => retireDisk(c, 0, "removed", 0), { code: "AGENT_DISK_LAST" });
    const full = configWith([img(255, "/z.img")]);
    assert.throws(() => nextDiskIndex(full), { code: "AGENT_DISK_INDEXES_EXHAUSTED" });
  });

  void it("finds a disk by index or path, and says when it was retired", () => {
    const c = retireDisk(configWith([img(0, "/a.img"), img(1, "/b.img")]), 0, "missing", 0).config;
    assert.equal(findDisk(c, "1").path, "/b.img");
    assert.equal(findDisk(c, "/b.img").index, 1);
    assert.throws(() => findDisk(c, "0"), {
      code: "AGENT_DISK_NOT_FOUND",
      message: /was retired .* \(missing\)/,
    });
    assert.throws(() => findDisk(c, "/nope.img"), { code: "AGENT_DISK_NOT_FOUND" });
  });

  void it("checks a new image file: exists, not empty, not configured, not in the agent's directory", async () => {
    const dir = path.join(tmp, "agent1");
    const a = await image("a.img");
    const b = await image("b.img");
    const c = configWith([img(0, a)]);
    const ok = await checkNewDisk(c, dir, b, { devices: [] });
    assert.deepEqual(ok, { path: b, kind: "image", id: b, sizeBytes: 1 << 20 });
    await assert.rejects(checkNewDisk(c, dir, a, { devices: [] }), { code: "AGENT_DISK_ALREADY_CONFIGURED" });
    await assert.rejects(checkNewDisk(c, dir, path.join(tmp, "none.img"), { devices: [] }), {
      code: "AGENT_DISK_INVALID",
    });
    await assert.rejects(checkNewDisk(c, dir, tmp, { devices: [] }), { code: "AGENT_DISK_INVALID" });
    const empty = path.join(tmp, "empty.img");
    await writeFile(empty, "");
    await assert.rejects(checkNewDisk(c, dir, empty, { devices: [] }), { code: "AGENT_DISK_INVALID" });
    await mkdir(path.join(dir, "state"), { recursive: true });
    const inside = path.join(dir, "state", "x.img");
    await writeFile(inside, Buffer.alloc(4096));
    await assert.rejects(checkNewDisk(c, dir, inside, { devices: [] }), { code: "AGENT_DISK_IS_STATE" });
  });

  void it("checks a new device: not configured under another name, no partition overlap", async (t) => {
    if (!requireCapability(t, "root", "loop")) return;
    const x = await loopDiskForTest(t, { sizeMiB: 8, ext4: false });
    const y = await loopDiskForTest(t, { sizeMiB: 8, ext4: false });
    const dir = path.join(tmp, "agent2");
    const dev = (d: typeof x) => ({ index: 0, path: d.device, kind: "device" as const, id: d.device });
    const info = (d: typeof x, partitions: BlockDeviceInfo["partitions"] = []): BlockDeviceInfo => ({
      name: path.basename(d.device),
      path: d.device,
      major: d.major,
      minor: d.minor,
      kind: "loop",
      sizeBytes: d.sizeBytes,
      removable: false,
      readOnly: false,
      logicalBlockSize: 512,
      backingFile: d.image,
      fsType: null,
      mounts: [],
      partitions,
    });
    // y presented as a partition of x: each overlaps the other.
    const asPart = {
      name: "p1",
      path: y.device,
      major: y.major,
      minor: y.minor,
      startBytes: 1 << 20,
      sizeBytes: 4 << 20,
      fsType: null,
      mounts: [],
    };
    const devices = [info(x, [asPart])];
    await assert.rejects(checkNewDisk(configWith([dev(x)]), dir, y.device, { devices }), {
      code: "AGENT_DISK_OVERLAPS",
      message: /is a partition of/,
    });
    await assert.rejects(checkNewDisk(configWith([dev(y)]), dir, x.device, { devices }), {
      code: "AGENT_DISK_OVERLAPS",
      message: /holds/,
    });
    // The same device, and the image under a configured loop device.
    const plain = [info(x), info(y)];
    await assert.rejects(checkNewDisk(configWith([dev(x)]), dir, x.device, { devices: plain }), {
      code: "AGENT_DISK_ALREADY_CONFIGURED",
    });
    await assert.rejects(checkNewDisk(configWith([dev(x)]), dir, x.image, { devices: plain }), {
      code: "AGENT_DISK_ALREADY_CONFIGURED",
    });
    await assert.rejects(checkNewDisk(configWith([img(0, y.image)]), dir, y.device, { devices: plain }), {
      code: "AGENT_DISK_ALREADY_CONFIGURED",
    });
    const ok = await checkNewDisk(configWith([dev(x)]), dir, y.device, { devices: plain });
    assert.equal(ok.kind, "device");
    assert.equal(ok.sizeBytes, 8 << 20);
  });

  void it("edits under the lock: concurrent additions both land, with distinct indexes", async () => {
    const dir = path.join(tmp, "agent3");
    await saveAgentConfig(dir, configWith([img(0, await image("e0.img"))]));
    const [p1, p2] = [await image("e1.img"), await image("e2.img")];
    await Promise.all(
      [p1, p2].map((p) =>
        editAgentConfig(dir, async (c) => {
          const r = addDisks(c, [await checkNewDisk(c, dir, p, { devices: [] })]);
          return { config: r.config, result: r.added };
        }),
      ),
    );
    const c = await loadAgentConfig(dir);
    assert.deepEqual(c.disks.map((d) => d.index).sort(), [0, 1, 2]);
    assert.deepEqual(c.disks.map((d) => d.path).sort(), [path.join(tmp, "e0.img"), p1, p2].sort());
    // An edit that throws writes nothing, and the lock is released.
    const before = await readFile(agentPaths(dir).config, "utf8");
    await assert.rejects(
      editAgentConfig(dir, (x) => ({ config: retireDisk(x, 9, "removed", 0).config, result: 0 })),
      { code: "AGENT_DISK_NOT_FOUND" },
    );
    assert.equal(await readFile(agentPaths(dir).config, "utf8"), before);
    await assert.rejects(readFile(agentPaths(dir).configLock), { code: "ENOENT" });
  });

  void it("lifeboat agent disks list, add and remove", async () => {
    const dir = path.join(tmp, "agent4");
    const a = await image("c0.img");
    const b = await image("c1.img", 2 << 20);
    await saveAgentConfig(dir, configWith([img(0, a)]));
    const cli = (...args: string[]) => lifeboat(["agent", "disks", ...args, "--config-dir", dir, "--json"]);

    const add = await cli("add", b);
    assert.equal(add.code, 0, add.stderr);
    assert.deepEqual(JSON.parse(add.stdout), {
      added: [{ index: 1, path: b, kind: "image", id: b, sizeBytes: 2 << 20 }],
      running: false,
    });
    const again = await cli("add", b);
    assert.equal(again.code, 2);
    assert.equal(errorCode(again), "AGENT_DISK_ALREADY_CONFIGURED");
    const missing = await cli("add", path.join(tmp, "nope.img"));
    assert.equal(missing.code, 2);
    assert.equal(errorCode(missing), "AGENT_DISK_INVALID");

    await writeFile(agentPaths(dir).dirty(0), "x");
    const rm0 = await cli("remove", a);
    assert.equal(rm0.code, 0, rm0.stderr);
    const removed = (JSON.parse(rm0.stdout) as { removed: { index: number; reason: string } }).removed;
    assert.equal(removed.index, 0);
    assert.equal(removed.reason, "removed");
    await assert.rejects(readFile(agentPaths(dir).dirty(0)), { code: "ENOENT" });
    const last = await cli("remove", "1");
    assert.equal(last.code, 2);
    assert.equal(errorCode(last), "AGENT_DISK_LAST");
    const gone = await cli("remove", "0");
    assert.equal(errorCode(gone), "AGENT_DISK_NOT_FOUND");

    const list = await cli("list");
    assert.equal(list.code, 0, list.stderr);
    const l = JSON.parse(list.stdout) as {
      diskSelection: string;
      running: boolean;
      disks: { index: number; state: string }[];
      retired: { index: number }[];
    };
    assert.equal(l.diskSelection, "listed");
    assert.equal(l.running, false);
    assert.deepEqual(
      l.disks.map((d) => [d.index, d.state]),
      [[1, "STOPPED"]],
    );
    assert.deepEqual(
      l.retired.map((d) => d.index),
      [0],
    );
    // A new disk after a removal gets index 2, not 0.
    const c2 = await image("c2.img");
    const add2 = await cli("add", c2);
    assert.equal((JSON.parse(add2.stdout) as { added: { index: number }[] }).added[0]!.index, 2);
  });
});
