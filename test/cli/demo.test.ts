/**
 * `lifeboat demo` as an operator runs it: a child process that starts a
 * server and an agent in itself, replicates a generated image, takes two
 * PITs, restores the second and checks it; it ends with an OK line and
 * leaves nothing behind.
 */
import assert from "node:assert/strict";
import { access } from "node:fs/promises";
import { describe, it } from "node:test";
import { lifeboat } from "../support/cli.js";

void describe("lifeboat demo", () => {
  void it(
    "replicates, snapshots and restores a 32 MiB image byte for byte",
    { timeout: 180_000 },
    async () => {
      const r = await lifeboat(["demo", "--size-mib", "32"]);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /^OK: /m);
      assert.match(
        r.stdout,
        /7\. drill job_\w+ from PIT [0-9a-f]{24} .*: disk byte-identical to the source image/,
      );
      assert.match(r.stdout, /drill terminated: its directory .* is removed/);
      assert.match(r.stdout, /verify --read-data .*: no damage in \d+ PITs/);
      assert.equal(r.stdout.match(/^ *(?:5\. )?PIT [0-9a-f]{24}: \w+-consistent/gm)?.length, 2, r.stdout);
      const dir = /^demo directory: (.+)$/m.exec(r.stdout)?.[1];
      assert.ok(dir, r.stdout);
      await assert.rejects(access(dir), "the throw-away directory is removed");
    },
  );

  void it("refuses a size of zero as a usage error", async () => {
    const r = await lifeboat(["demo", "--size-mib", "0"]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--size-mib/);
  });
});
