import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import { DiskReader } from "../../src/agent/index.js";
import { requireCapability } from "../support/capabilities.js";
import { prng, randomBuffer, seedFromEnv } from "../support/images.js";
import { deviceOffsetOf, loopDiskForTest } from "../support/loop-disk.js";

const run = promisify(execFile);

/** A buffered (page-cache) read of `length` bytes of a device. */
async function bufferedRead(device: string, offset: number, length: number): Promise<Buffer> {
  const fh = await fs.open(device, "r");
  try {
    const b = Buffer.alloc(length);
    await fh.read(b, 0, length, offset);
    return b;
  } finally {
    await fh.close();
  }
}

void describe("DiskReader", () => {
  void it("reads the filesystem's new bytes where the device's page cache is stale", async (t) => {
    if (!requireCapability(t, "root", "loop")) return;
    const disk = await loopDiskForTest(t, { sizeMiB: 32 });
    const file = path.join(disk.mountPoint!, "data");
    const seed = seedFromEnv();
    const rand = prng(seed);
    const before = randomBuffer(rand, 64 << 10);
    const after = randomBuffer(rand, 64 << 10);

    await fs.writeFile(file, before, { flush: true });
    await run("sync", ["-f", file]);
    const at = await deviceOffsetOf(file, 8192);

    // Prime the device's page cache: the buffered read sees the first content.
    assert.deepEqual(await bufferedRead(disk.device, at, 4096), before.subarray(8192, 12288));

    const fh = await fs.open(file, "r+");
    await fh.write(after, 0, after.length, 0);
    await fh.sync();
    await fh.close();
    assert.equal(await deviceOffsetOf(file, 8192), at, "ext4 overwrote the block in place");

    const stale = await bufferedRead(disk.device, at, 4096);
    assert.deepEqual(
      stale,
      before.subarray(8192, 12288),
      "the buffered read of the device should still return the old block (DESIGN.md, Facts)",
    );

    const reader = await DiskReader.open(disk.device);
    t.after(() => reader.close());
    assert.equal(reader.direct, true);
    assert.equal(reader.isBlockDevice, true);
    assert.equal(reader.size, disk.sizeBytes);
    assert.deepEqual(await reader.read(at, 4096), after.subarray(8192, 12288), `seed ${seed}`);
    // An unaligned range across blocks.
    assert.deepEqual(await reader.read(at + 100, 9000), (await fs.readFile(file)).subarray(8292, 17292));
  });

  void it("reads any ranges of an image file exactly, in bounded pieces, up to its unaligned end", async (t) => {
    const seed = seedFromEnv();
    const rand = prng(seed);
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-reader-"));
    t.after(() => fs.rm(dir, { recursive: true, force: true }));
    const image = path.join(dir, "disk.img");
    const content = randomBuffer(rand, (3 << 20) + 1234);
    await fs.writeFile(image, content);

    const reader = await DiskReader.open(image, { chunkSize: 64 << 10, depth: 3 });
    t.after(() => reader.close());
    assert.equal(reader.size, content.length);
    assert.equal(reader.chunkSize, 64 << 10);

    const ranges = [
      { offset: 0, length: 1 },
      { offset: 4095, length: 2 },
      { offset: 70000, length: 300000 },
      { offset: content.length - 5000, length: 5000 },
      { offset: 12345, length: 0 },
    ];
    for (let i = 0; i < 20; i++) {
      const offset = Math.floor(rand() * content.length);
      ranges.push({ offset, length: Math.floor(rand() * Math.min(500000, content.length - offset)) });
    }
    for (const r of ranges) {
      const got: Buffer[] = [];
      let next = r.offset;
      await reader.readRanges([r], async (off, data) => {
        assert.equal(off, next, "pieces arrive in order and without gaps");
        assert.ok(data.length <= reader.chunkSize, "no piece is larger than the buffer");
        next += data.length;
        // The view stays valid while the callback works, with later reads in flight.
        await new Promise((resolve) => setImmediate(resolve));
        got.push(Buffer.from(data));
      });
      assert.deepEqual(
        Buffer.concat(got),
        content.subarray(r.offset, r.offset + r.length),
        `range ${r.offset}+${r.length}, seed ${seed}`,
      );
    }
    // All ranges in one call: pieces of consecutive ranges share the reads in flight.
    const all: Buffer[] = [];
    await reader.readRanges(ranges, (_off, data) => void all.push(Buffer.from(data)));
    assert.deepEqual(
      Buffer.concat(all),
      Buffer.concat(ranges.map((r) => content.subarray(r.offset, r.offset + r.length))),
    );
    await assert.rejects(reader.read(content.length - 10, 11), { code: "DISK_RANGE_OUTSIDE" });
  });

  void it("keeps many small reads in flight in its buffers, and hands each piece over intact", async (t) => {
    const seed = seedFromEnv();
    const rand = prng(seed);
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-reader-"));
    t.after(() => fs.rm(dir, { recursive: true, force: true }));
    const image = path.join(dir, "disk.img");
    const content = randomBuffer(rand, 8 << 20);
    await fs.writeFile(image, content);
    for (const depth of [1, 2, 3]) {
      const reader = await DiskReader.open(image, { chunkSize: 256 << 10, depth });
      t.after(() => reader.close());
      // Count the device reads in flight at once.
      const handle = (reader as unknown as { handle: fs.FileHandle }).handle;
      const read = handle.read.bind(handle) as (...a: unknown[]) => Promise<unknown>;
      let inFlight = 0;
      let most = 0;
      (handle as unknown as { read: (...a: unknown[]) => Promise<unknown> }).read = async (...a) => {
        most = Math.max(most, ++inFlight);
        try {
          return await read(...a);
        } finally {
          inFlight--;
        }
      };
      // Scattered small blocks (what continuous shipping reads), with a large range among them.
      const ranges = [];
      for (let i = 0; i < 200; i++) {
        const length = 4096 * (1 + Math.floor(rand() * 16));
        ranges.push({ offset: Math.floor(rand() * (content.length - length)), length });
        if (i === 100) ranges.push({ offset: 1 << 20, length: 700 << 10 });
      }
      const got: Buffer[] = [];
      await reader.readRanges(ranges, async (_off, data) => {
        // Later reads run meanwhile: none may land in this piece's part of the buffer.
        await new Promise((resolve) => setImmediate(resolve));
        got.push(Buffer.from(data));
      });
      assert.deepEqual(
        Buffer.concat(got),
        Buffer.concat(ranges.map((r) => content.subarray(r.offset, r.offset + r.length))),
        `depth ${depth}, seed ${seed}`,
      );
      assert.ok(most > depth, `depth ${depth}: at most ${most} reads were in flight at once`);
    }
  });

  void it("names the disk when it cannot be opened", async () => {
    await assert.rejects(DiskReader.open("/nonexistent/disk.img"), (err: Error & { code?: string }) => {
      assert.equal(err.code, "DISK_UNREADABLE");
      assert.match(err.message, /\/nonexistent\/disk\.img/);
      return true;
    });
  });
});
