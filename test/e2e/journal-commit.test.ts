/**
 * Crash consistency without a filesystem: a writer on a bare loop device
 * keeps a journal the way databases do. Each record is N journal blocks
 * (O_DIRECT, fsync), then one commit block naming their checksums (O_DIRECT,
 * fsync); before a slot is reused its commit block is zeroed (fsync). At any
 * instant, then, every commit block on the device has all its journal blocks.
 * Nothing can be frozen, so PITs are `crash` (the trace saw no write while the
 * dirty blocks were read) or `none`; every `crash` one must keep the invariant.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { Replication } from "../../src/agent/replication.js";
import { createLogger } from "../../src/base/index.js";
import { requireCapability } from "../support/capabilities.js";
import { type Site, startSite, agentSettings } from "../support/lifeboat-site.js";
import { loopDiskForTest } from "../support/loop-disk.js";
import { assertPitIsSnapshot, exportPit, sleep, snapshotDevice, until } from "../support/pit-check.js";

const B = 4096;
const SLOTS = 64;
const N = 8;
const MAGIC = "LBCOMMIT";

/** Journal block j of slot k: the record's blocks lie far apart, in different 64 KiB blocks. */
const journalOffset = (k: number, j: number): number => (SLOTS + j * SLOTS + k) * B;

/** The writer, run as `node -e` in the repository (for @ronomon/direct-io). */
const WRITER = `
const fs = require("node:fs");
const crypto = require("node:crypto");
const dio = require("@ronomon/direct-io");
const [dev] = process.argv.slice(1);
const B = ${B}, SLOTS = ${SLOTS}, N = ${N};
const jOff = (k, j) => (SLOTS + j * SLOTS + k) * B; // as journalOffset
const fd = fs.openSync(dev, fs.constants.O_RDWR | dio.O_DIRECT);
const buf = dio.getAlignedBuffer(B, B);
const wait = new Int32Array(new SharedArrayBuffer(4));
for (let seq = 1; ; seq++) {
  const k = seq % SLOTS;
  buf.fill(0);
  fs.writeSync(fd, buf, 0, B, k * B);
  fs.fsyncSync(fd);
  const sums = [];
  for (let j = 0; j < N; j++) {
    crypto.randomFillSync(buf);
    buf.writeUInt32LE(seq, 0);
    fs.writeSync(fd, buf, 0, B, jOff(k, j));
    sums.push(crypto.createHash("sha256").update(buf).digest());
  }
  fs.fsyncSync(fd);
  buf.fill(0);
  buf.write("${MAGIC}", 0);
  buf.writeUInt32LE(seq, 8);
  buf.writeUInt32LE(k, 12);
  buf.writeUInt32LE(N, 16);
  sums.forEach((s, j) => s.copy(buf, 32 + j * 32));
  fs.writeSync(fd, buf, 0, B, k * B);
  fs.fsyncSync(fd);
  // Records come in bursts with quiet gaps, as a database's commits do: a point read in a gap is crash-consistent.
  Atomics.wait(wait, 0, 0, seq % 4 === 0 ? 300 + Math.random() * 300 : Math.random() * 20);
}
`;

/** Checks every commit block of `img`; returns how many there were. */
function checkJournal(img: Buffer, what: string): number {
  let commits = 0;
  for (let k = 0; k < SLOTS; k++) {
    const c = img.subarray(k * B, (k + 1) * B);
    if (c.toString("latin1", 0, MAGIC.length) !== MAGIC) {
      assert.ok(
        c.every((x) => x === 0),
        `${what}: slot ${k} holds neither a commit nor zeros`,
      );
      continue;
    }
    commits++;
    const seq = c.readUInt32LE(8);
    assert.equal(c.readUInt32LE(12), k, `${what}: commit in slot ${k} names its slot`);
    assert.equal(c.readUInt32LE(16), N);
    for (let j = 0; j < N; j++) {
      const o = journalOffset(k, j);
      const block = img.subarray(o, o + B);
      const sum = createHash("sha256").update(block).digest();
      assert.ok(
        sum.equals(c.subarray(32 + j * 32, 64 + j * 32)),
        `${what}: commit ${seq} (slot ${k}) names journal block ${j} at ${o}, which holds record ${block.readUInt32LE(0)}`,
      );
    }
  }
  return commits;
}

void describe("crash consistency of a journal on a bare device", () => {
  let tmp = "";
  let site: Site;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-journal-"));
    site = await startSite(tmp);
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it(
    "every crash-consistent PIT has each committed record's journal blocks",
    { timeout: 300_000 },
    async (t) => {
      if (!requireCapability(t, "root", "loop", "tracefs")) return;
      const disk = await loopDiskForTest(t, { sizeMiB: 32, ext4: false });
      const who = await site.register("journal-1");
      const rep = new Replication({
        serverId: who.serverId,
        hostname: "journal-1",
        version: "test",
        disks: [{ index: 0, path: disk.device, kind: "device", id: "loop-journal" }],
        blockSize: 64 * 1024,
        settings: agentSettings({ tracker: "trace" }),
        connect: () => site.connect(who),
        logger: createLogger(process.env.LIFEBOAT_TEST_LOG ?? "silent", "agent"),
      });
      await rep.start();
      const writer = spawn(process.execPath, ["-e", WRITER, disk.device], {
        stdio: ["ignore", "ignore", "pipe"],
        cwd: path.resolve(import.meta.dirname, "../../.."),
      });
      let writerErr = "";
      writer.stderr.on("data", (d: Buffer) => (writerErr += d.toString()));
      const writerExit = new Promise<number | null>((r) => writer.on("exit", (code) => r(code)));
      try {
        await until("initial sync", () => rep.status()?.state === "CONTINUOUS", 120_000);
        await sleep(1000);
        assert.equal(writer.exitCode, null, `the writer runs: ${writerErr}`);
        const rescans = rep.counters.rescans;
        const levels: string[] = [];
        let checked = 0;
        let commits = 0;
        for (let i = 0; i < 12; i++) {
          await sleep(300 + Math.random() * 700);
          const point = await rep.requestPoint();
          levels.push(point.consistency);
          assert.ok(point.pitId, "the replicator named the PIT");
          assert.ok(
            ["crash", "none"].includes(point.consistency),
            `no freeze on a bare device: ${point.consistency}`,
          );
          if (point.consistency === "none") continue;
          const out = path.join(tmp, `pit-${i}.img`);
          await exportPit(site, who.serverName, point.pitId, out);
          const img = await readFile(out);
          await rm(out);
          commits += checkJournal(img, `PIT ${point.pitId} (${point.consistency})`);
          checked++;
        }
        t.diagnostic(`levels ${levels.join(",")}`);
        assert.equal(writer.exitCode, null, `the writer ran throughout: ${writerErr}`);
        assert.ok(checked >= 3, `at least 3 crash-consistent PITs to check; levels ${levels.join(",")}`);
        assert.ok(commits >= checked * 10, `the PITs held committed records (${commits})`);

        // Points read while the writer wrote (`none`) must still ship what the replica can apply:
        // a patch that does not match makes the replicator ask for a rescan.
        assert.equal(rep.counters.rescans, rescans, `no rescan; levels ${levels.join(",")}`);

        // Once the writer stops, the replica catches up with the device exactly: no write was lost on the way.
        writer.kill("SIGKILL");
        await writerExit;
        await until(
          "the agent to catch up",
          () => {
            const s = rep.status();
            return s?.state === "CONTINUOUS" && s.backlogBytes === 0;
          },
          120_000,
          () => rep.status(),
        );
        const last = await rep.requestPoint();
        assert.equal(last.consistency, "crash", "nothing written while the last point was read");
        assert.ok(last.pitId);
        const device = path.join(tmp, "device.img");
        await snapshotDevice(disk.device, device);
        await assertPitIsSnapshot(site, who.serverName, last.pitId, device, path.join(tmp, "last.img"), {
          fsck: false,
        });
      } finally {
        writer.kill("SIGKILL");
        await writerExit;
        await rep.stop();
      }
    },
  );
});
