import assert from "node:assert/strict";
import { execFile, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, promises as fs } from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import { mountedFilesystems, withFrozen } from "../../src/agent/index.js";
import { requireCapability } from "../support/capabilities.js";
import { loopDiskForTest } from "../support/loop-disk.js";

const run = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Starts a process that writes a file on `dir` and fsyncs it. */
function writer(dir: string, name: string): ChildProcess & { done: Promise<number | null> } {
  const child = spawn(
    "dd",
    ["if=/dev/zero", `of=${path.join(dir, name)}`, "bs=4k", "count=1", "conv=fsync"],
    {
      stdio: "ignore",
    },
  );
  const done = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return Object.assign(child, { done });
}

/** True when a write to `dir` completes within `ms` (false: it is blocked, the fs is frozen). */
async function writable(dir: string, ms = 5000): Promise<boolean> {
  const w = writer(dir, `probe-${Math.random().toString(16).slice(2)}`);
  const r = await Promise.race([w.done, sleep(ms).then(() => "timeout" as const)]);
  if (r === "timeout") {
    spawnSync("fsfreeze", ["-u", dir], { stdio: "ignore" });
    await w.done;
    return false;
  }
  return r === 0;
}

// A timeout so that a hang fails the run instead of stalling it.
void describe("freeze", { timeout: 300_000 }, () => {
  void it("finds the writable ext4 mounted from a disk, and nothing on an unmounted one", async (t) => {
    if (!requireCapability(t, "root", "loop")) return;
    const disk = await loopDiskForTest(t, { sizeMiB: 32 });
    const bare = await loopDiskForTest(t, { sizeMiB: 8, ext4: false });
    const found = await mountedFilesystems(disk.device);
    assert.deepEqual(found, [
      {
        mountPoint: disk.mountPoint,
        fsType: "ext4",
        source: disk.device,
        dev: `${disk.major}:${disk.minor}`,
      },
    ]);
    assert.deepEqual(await mountedFilesystems(bare.device), []);
    // A bind mount of the same filesystem is frozen once, by its root mount.
    const bind = path.join(disk.dir, "bind");
    await fs.mkdir(path.join(disk.mountPoint!, "sub"));
    await fs.mkdir(bind);
    await run("mount", ["--bind", path.join(disk.mountPoint!, "sub"), bind]);
    try {
      assert.deepEqual(
        (await mountedFilesystems(disk.device)).map((f) => f.mountPoint),
        [disk.mountPoint],
      );
    } finally {
      await run("umount", [bind]);
    }
  });

  void it("blocks another process's write while frozen; the write completes after the thaw", async (t) => {
    if (!requireCapability(t, "root", "loop", "fsfreeze")) return;
    const disk = await loopDiskForTest(t, { sizeMiB: 32 });
    const mp = disk.mountPoint!;
    let w: ReturnType<typeof writer> | undefined;
    const res = await withFrozen(await mountedFilesystems(disk.device), async () => {
      w = writer(mp, "during-freeze");
      const r = await Promise.race([w.done, sleep(500).then(() => "blocked" as const)]);
      return r;
    });
    assert.equal(res.value, "blocked", "the write waited for the thaw");
    assert.equal(res.capHit, false);
    assert.equal(res.frozen.length, 1);
    assert.equal(await w!.done, 0, "the write completed after the thaw");
    assert.equal((await fs.stat(path.join(mp, "during-freeze"))).size, 4096);
  });

  void it("freezes every filesystem given, together", async (t) => {
    if (!requireCapability(t, "root", "loop", "fsfreeze")) return;
    const a = await loopDiskForTest(t, { sizeMiB: 32 });
    const b = await loopDiskForTest(t, { sizeMiB: 32 });
    const both = [...(await mountedFilesystems(a.device)), ...(await mountedFilesystems(b.device))];
    const writers: ReturnType<typeof writer>[] = [];
    const res = await withFrozen(both, async () => {
      writers.push(writer(a.mountPoint!, "a"), writer(b.mountPoint!, "b"));
      const done = writers.map((w) => w.done.then(() => "done"));
      return Promise.race([...done, sleep(500).then(() => "blocked")]);
    });
    assert.equal(res.value, "blocked");
    assert.deepEqual(
      res.frozen.map((f) => f.mountPoint),
      [a.mountPoint, b.mountPoint],
    );
    assert.ok(res.frozenMs > 0);
    assert.deepEqual(await Promise.all(writers.map((w) => w.done)), [0, 0]);
  });

  void it("thaws at the cap and says so", async (t) => {
    if (!requireCapability(t, "root", "loop", "fsfreeze")) return;
    const disk = await loopDiskForTest(t, { sizeMiB: 32 });
    let aborted = false;
    const res = await withFrozen(
      await mountedFilesystems(disk.device),
      (signal) =>
        new Promise<string>((resolve, reject) => {
          const slow = setTimeout(() => resolve("finished"), 20_000);
          signal.addEventListener("abort", () => {
            aborted = true;
            clearTimeout(slow);
            reject(signal.reason as Error);
          });
        }),
      { capMs: 300 },
    );
    assert.equal(res.capHit, true);
    assert.equal(res.value, undefined);
    assert.ok(aborted, "the callback's signal was aborted");
    assert.ok(await writable(disk.mountPoint!), "thawed");
  });

  void it("thaws when the callback fails, and rethrows its error", async (t) => {
    if (!requireCapability(t, "root", "loop", "fsfreeze")) return;
    const disk = await loopDiskForTest(t, { sizeMiB: 32 });
    await assert.rejects(
      withFrozen(await mountedFilesystems(disk.device), () => Promise.reject(new Error("read failed"))),
      /read failed/,
    );
    assert.ok(await writable(disk.mountPoint!), "thawed");
  });

  void it("refuses to start on a filesystem frozen by someone else, leaving it as it was", async (t) => {
    if (!requireCapability(t, "root", "loop", "fsfreeze")) return;
    const a = await loopDiskForTest(t, { sizeMiB: 32 });
    const b = await loopDiskForTest(t, { sizeMiB: 32 });
    const both = [...(await mountedFilesystems(a.device)), ...(await mountedFilesystems(b.device))];
    await run("fsfreeze", ["-f", b.mountPoint!]);
    t.after(() => run("fsfreeze", ["-u", b.mountPoint!]).catch(() => undefined));
    let ran = false;
    await assert.rejects(
      withFrozen(both, () => {
        ran = true;
        return Promise.resolve();
      }),
      { code: "FREEZE_FAILED" },
    );
    assert.equal(ran, false);
    assert.ok(await writable(a.mountPoint!), "the first filesystem was thawed again");
  });

  void it("thaws when the process is told to terminate while frozen", async (t) => {
    if (!requireCapability(t, "root", "loop", "fsfreeze")) return;
    const disk = await loopDiskForTest(t, { sizeMiB: 32 });
    const index = path.resolve(import.meta.dirname, "../../src/agent/index.js");
    assert.ok(existsSync(index));
    const script = `
      const { mountedFilesystems, withFrozen } = await import(${JSON.stringify(index)});
      await withFrozen(await mountedFilesystems(${JSON.stringify(disk.device)}), async () => {
        process.stdout.write("frozen\\n");
        await new Promise((r) => setTimeout(r, 30000));
      }, { capMs: 60000 });`;
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    const exited = new Promise<NodeJS.Signals | null>((r) => child.on("exit", (_c, sig) => r(sig)));
    await new Promise<void>((resolve, reject) => {
      child.stdout.on("data", (d: Buffer) => d.toString().includes("frozen") && resolve());
      child.on("exit", () => reject(new Error("child exited before freezing")));
    });
    child.kill("SIGTERM");
    assert.equal(await exited, "SIGTERM", "the signal keeps its default meaning");
    assert.ok(await writable(disk.mountPoint!), "thawed by the signal handler");
  });
});
