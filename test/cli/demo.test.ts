/**
 * `lifeboat demo` as an operator runs it: a child process that starts a
 * server and an agent in itself, protects a generated ext4 disk, takes two
 * PITs, launches a drill from the second and checks its filesystem against
 * the source; it leaves nothing behind (directory, loop device, mount),
 * also when stopped with Ctrl-C.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { access } from "node:fs/promises";
import { describe, it } from "node:test";
import { BIN, lifeboat } from "../support/cli.js";
import { skipUnless } from "../support/capabilities.js";

const loopsOf = (dir: string) => execFileSync("losetup", ["-a"], { encoding: "utf8" }).includes(dir);
const mountsOf = (dir: string) => execFileSync("mount", [], { encoding: "utf8" }).includes(dir);

function checkRun(stdout: string): string {
  assert.match(stdout, /^OK: /m);
  assert.match(stdout, /7\. drill job_\w+ from PIT [0-9a-f]{24} /);
  assert.match(stdout, /e2fsck clean; \d+ files match their SHA-256 at PIT time; database integrity ok/);
  assert.match(stdout, /drill terminated: its directory .* is removed/);
  assert.match(stdout, /verify --read-data .*: no damage in \d+ PITs/);
  assert.equal(stdout.match(/^ *(?:5\. )?PIT [0-9a-f]{24}: \w+-consistent/gm)?.length, 2, stdout);
  const dir = /^demo directory: (.+)$/m.exec(stdout)?.[1];
  assert.ok(dir, stdout);
  return dir;
}

void describe("lifeboat demo", () => {
  void it(
    "without a loop device: an ext4 image file in scan mode, checked file by file and byte for byte",
    { timeout: 180_000 },
    async () => {
      const r = await lifeboat(["demo", "--exit", "--size-mib", "32", "--source", "image"]);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      const dir = checkRun(r.stdout);
      assert.match(r.stdout, /an ext4 image file made with mkfs\.ext4 -d/);
      assert.match(r.stdout, /disk byte-identical to the source image/);
      assert.match(r.stdout, /initial sync [\d.]+s \(scan mode\)/);
      await assert.rejects(access(dir), "the throw-away directory is removed");
    },
  );

  void it(
    "as root: ext4 on a loop device written to while it replicates, traced; loop device and mount released",
    { timeout: 180_000, ...skipUnless("loop", "tracefs") },
    async () => {
      const r = await lifeboat(["demo", "--exit", "--size-mib", "64"]);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      const dir = checkRun(r.stdout);
      assert.match(
        r.stdout,
        /running as root: ext4 on \/dev\/loop\d+, mounted at .*, written to by another process while it replicates/,
      );
      assert.match(r.stdout, /initial sync [\d.]+s \(trace mode\)/);
      assert.match(r.stdout, /wrote 8 more files and 160 database rows, each synced/);
      assert.ok(!loopsOf(dir) && !mountsOf(dir), "no loop device or mount of the demo is left");
      await assert.rejects(access(dir), "the throw-away directory is removed");
    },
  );

  void it(
    "keeps running until Ctrl-C, then releases everything; Ctrl-C in the middle stops with 130 and cleans up too",
    { timeout: 180_000, ...skipUnless("loop") },
    async () => {
      const stopAt = async (marker: RegExp) => {
        const child = spawn(process.execPath, [BIN, "demo", "--stay", "--size-mib", "32"], {
          stdio: ["ignore", "pipe", "pipe"],
        });
        let out = "";
        let sent = false;
        child.stdout.on("data", (d: Buffer) => {
          out += d.toString();
          if (!sent && marker.test(out)) {
            sent = true;
            child.kill("SIGINT");
          }
        });
        child.stderr.on("data", (d: Buffer) => (out += d.toString()));
        const code = await new Promise<number | null>((resolve) => child.once("close", resolve));
        const dir = /^demo directory: (.+)$/m.exec(out)?.[1];
        assert.ok(dir && sent, out);
        assert.ok(!loopsOf(dir) && !mountsOf(dir), `nothing of ${dir} is left mounted or attached`);
        await assert.rejects(access(dir), "the throw-away directory is removed");
        return { code, out };
      };
      const up = await stopAt(/press Ctrl-C to stop/);
      assert.equal(up.code, 0, up.out);
      assert.match(up.out, /console: +https:\/\/127\.0\.0\.1:\d+\//);
      assert.match(up.out, /API key file: .*admin-api\.key/);
      const mid = await stopAt(/^3\. agent installed/m);
      assert.equal(mid.code, 130, mid.out);
      assert.match(mid.out, /DEMO_INTERRUPTED|interrupted/);
    },
  );

  void it("refuses a size too small for the demo's filesystem as a usage error", async () => {
    const r = await lifeboat(["demo", "--size-mib", "1"]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--size-mib/);
  });
});
