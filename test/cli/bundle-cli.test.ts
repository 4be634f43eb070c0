/**
 * `lifeboat bundle build --failback-image`: the boot environment made along
 * with the bundle needs the server's agent directory and the single
 * executable, and says so before building anything.
 */
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { lifeboat } from "../support/cli.js";

void describe("bundle build --failback-image", () => {
  let tmp = "";
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-bundle-cli-"));
  });
  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  void it("without --agent-config is a usage error naming it, and nothing is built", async () => {
    const r = await lifeboat([
      "bundle",
      "build",
      "--data-dir",
      tmp,
      "--failback-image",
      path.join(tmp, "fb.img"),
    ]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--agent-config/);
    assert.deepEqual(await readdir(tmp), []);
  });

  void it("with --no-sea is a usage error: the boot environment runs the single executable", async () => {
    const r = await lifeboat([
      ...["bundle", "build", "--data-dir", tmp, "--no-sea"],
      ...["--failback-image", path.join(tmp, "fb.img"), "--agent-config", tmp],
    ]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /single executable/);
    assert.deepEqual(await readdir(tmp), []);
  });
});
