import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, it } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { syncFileSystem } from "../../src/store/backends/fs-sync.js";

const execFileAsync = promisify(execFile);

let tmp = "";
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-fs-sync-"));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** The sync helper shells this process started (children running the request loop). */
function helpers(): number[] {
  const out = execFileSync("ps", ["-o", "pid=,args=", "--ppid", String(process.pid)], { encoding: "utf8" });
  return out
    .split("\n")
    .filter((l) => l.includes("read -r d"))
    .map((l) => Number(l.trim().split(/\s+/)[0]));
}

void it("answers requests in order through one long-lived helper, and reports a failure with the reason", async () => {
  await writeFile(path.join(tmp, "a"), "x");
  await Promise.all([syncFileSystem(tmp), syncFileSystem(os.tmpdir()), syncFileSystem(tmp)]);
  const first = helpers();
  assert.equal(first.length, 1, "one helper process");
  for (let i = 0; i < 5; i++) await syncFileSystem(tmp);
  assert.deepEqual(helpers(), first, "the same helper serves every request");

  const missing = path.join(tmp, "no such dir");
  // Failures between successes: each request gets its own answer.
  const results = await Promise.allSettled([
    syncFileSystem(tmp),
    syncFileSystem(missing),
    syncFileSystem(tmp),
  ]);
  assert.deepEqual(
    results.map((r) => r.status),
    ["fulfilled", "rejected", "fulfilled"],
  );
  const err = (results[1] as PromiseRejectedResult).reason as Error;
  assert.match(err.message, /no such dir/);
  assert.match(err.message, /No such file or directory/);
});

void it("starts a new helper when the old one died, failing only the requests it held", async () => {
  await syncFileSystem(tmp);
  const [pid] = helpers();
  assert.ok(pid);
  process.kill(pid, "SIGKILL");
  // The death is noticed; the next request runs on a new helper.
  for (let i = 0; i < 50 && helpers().includes(pid); i++) await new Promise((r) => setTimeout(r, 20));
  await syncFileSystem(tmp).catch(() => syncFileSystem(tmp));
  const now = helpers();
  assert.equal(now.length, 1);
  assert.notEqual(now[0], pid);
});

void it("does not keep a process alive once nothing waits for it", async () => {
  const module = fileURLToPath(new URL("../../src/store/backends/fs-sync.js", import.meta.url));
  const script = `import { syncFileSystem } from ${JSON.stringify(module)}; await syncFileSystem(${JSON.stringify(tmp)}); console.log("synced");`;
  const { stdout } = await execFileAsync(process.execPath, ["--input-type=module", "-e", script], {
    timeout: 10_000,
  });
  assert.equal(stdout.trim(), "synced");
});
