import assert from "node:assert/strict";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { assertPrivateFile } from "../../src/net/index.js";

void describe("assertPrivateFile", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "lifeboat-private-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const file = async (name: string, mode: number): Promise<string> => {
    const p = path.join(dir, name);
    await writeFile(p, "secret");
    await chmod(p, mode);
    return p;
  };

  void it("accepts a file only its owner can access", async () => {
    await assertPrivateFile(await file("a.key", 0o600), "CA private key");
    await assertPrivateFile(await file("b.key", 0o400), "CA private key");
  });

  for (const mode of [0o640, 0o604, 0o644, 0o610, 0o601, 0o660, 0o777]) {
    void it(`refuses mode ${mode.toString(8)} naming the file and chmod 600`, async () => {
      const p = await file(`m${mode.toString(8)}.key`, mode);
      await assert.rejects(
        assertPrivateFile(p, "admin API key"),
        (err: Error & { code: string; hint: string }) => {
          assert.equal(err.code, "FILE_MODE_INSECURE");
          assert.match(err.message, /^admin API key /);
          assert.ok(err.message.includes(p));
          assert.ok(err.message.includes(`0${mode.toString(8)}`));
          assert.ok(err.hint.startsWith(`chmod 600 ${p}`));
          return true;
        },
      );
    });
  }

  void it("quotes a path with spaces in the hint", async () => {
    const p = await file("with space.key", 0o644);
    await assert.rejects(assertPrivateFile(p, "key"), { hint: new RegExp(`^chmod 600 '${p}'`) });
  });

  void it("says FILE_MISSING for a file that is not there or not a file", async () => {
    await assert.rejects(assertPrivateFile(path.join(dir, "nope.key"), "install token"), {
      code: "FILE_MISSING",
      message: /install token .*nope\.key does not exist/,
    });
    const sub = path.join(dir, "sub");
    await mkdir(sub, { mode: 0o700 });
    await assert.rejects(assertPrivateFile(sub, "key"), { code: "FILE_MISSING" });
  });
});
