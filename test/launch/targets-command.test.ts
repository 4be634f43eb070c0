import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";
import { isLifeboatError } from "../../src/base/index.js";
import { runCommandTarget } from "../../src/launch/targets/index.js";
import { processRunning } from "../support/processes.js";
import { targetRun } from "../support/target-run.js";

async function script(dir: string, name: string, body: string): Promise<string> {
  const p = path.join(dir, name);
  await fs.writeFile(p, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  return p;
}

void describe("command target", () => {
  void it("runs the command with the launch's environment and nothing else", async (t) => {
    const run = targetRun(t, [
      { index: 1, path: "/dev/fake-b", sizeBytes: 2048 },
      { index: 0, path: "/var/lib/lifeboat/disk 0.img", sizeBytes: 1024 },
    ]);
    process.env.LIFEBOAT_TEST_SECRET = "must-not-leak";
    t.after(() => delete process.env.LIFEBOAT_TEST_SECRET);
    const cmd = await script(
      run.workDir,
      "launch.sh",
      'env | sort > "$LIFEBOAT_WORK_DIR/env.txt"\necho "booting $LIFEBOAT_SERVER"\necho warning >&2',
    );
    const out = await runCommandTarget(run, {
      command: cmd,
      args: ["--flag", "two words"],
      timeoutSeconds: 30,
    });
    assert.equal(out.ok, true, out.message);
    assert.match(out.message, /succeeded/);
    assert.equal(out.details.exitCode, 0);
    const env = Object.fromEntries(
      (await fs.readFile(path.join(run.workDir, "env.txt"), "utf8"))
        .trim()
        .split("\n")
        .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
    );
    // sh itself adds PWD (and SHLVL in some shells); everything else is ours.
    delete env.PWD;
    delete env.SHLVL;
    delete env._;
    assert.deepEqual(env, {
      PATH: process.env.PATH,
      LIFEBOAT_JOB_ID: "job-0123",
      LIFEBOAT_JOB_TYPE: "drill",
      LIFEBOAT_SERVER: "web-1",
      LIFEBOAT_SERVER_ID: "srv-42",
      LIFEBOAT_PIT_ID: "0123456789abcdef01234567",
      LIFEBOAT_PIT_TIME: "2026-11-29T08:30:00.000Z",
      LIFEBOAT_CONSISTENCY: "application",
      LIFEBOAT_DISK_COUNT: "2",
      LIFEBOAT_DISK_0: "/var/lib/lifeboat/disk 0.img",
      LIFEBOAT_DISK_1: "/dev/fake-b",
      LIFEBOAT_DISKS: "/var/lib/lifeboat/disk 0.img:/dev/fake-b",
      LIFEBOAT_WORK_DIR: run.workDir,
    });
    assert.ok(run.lines.some((l) => l.level === "info" && l.message === "command stdout: booting web-1"));
    assert.ok(run.lines.some((l) => l.level === "warn" && l.message === "command stderr: warning"));
  });

  void it("passes arguments as they are, without a shell", async (t) => {
    const run = targetRun(t);
    const cmd = await script(run.workDir, "args.sh", 'for a in "$@"; do echo "[$a]"; done');
    const out = await runCommandTarget(run, {
      command: cmd,
      args: ["two words", "$HOME", ";rm -rf /"],
      timeoutSeconds: 30,
    });
    assert.equal(out.ok, true);
    const said = run.lines
      .filter((l) => l.message.startsWith("command stdout:"))
      .map((l) => l.message.slice(16));
    assert.deepEqual(said, ["[two words]", "[$HOME]", "[;rm -rf /]"]);
  });

  void it("reports a failing command with its status and last error line", async (t) => {
    const run = targetRun(t);
    const cmd = await script(run.workDir, "fail.sh", "echo 'upload failed: quota exceeded' >&2\nexit 3");
    const out = await runCommandTarget(run, { command: cmd, timeoutSeconds: 30 });
    assert.equal(out.ok, false);
    assert.equal(out.details.exitCode, 3);
    assert.match(out.message, /failed with exit status 3 .*quota exceeded/);
  });

  void it("reports a command killed by a signal", async (t) => {
    const run = targetRun(t);
    const cmd = await script(run.workDir, "segv.sh", "kill -SEGV $$");
    const out = await runCommandTarget(run, { command: cmd, timeoutSeconds: 30 });
    assert.equal(out.ok, false);
    assert.equal(out.details.signal, "SIGSEGV");
    assert.match(out.message, /killed by SIGSEGV/);
  });

  void it("stops a command that runs past its timeout, with its children", async (t) => {
    const run = targetRun(t);
    const pidFile = path.join(run.workDir, "child.pid");
    // The child ignores SIGTERM: only the group's SIGKILL after the grace period stops it.
    const cmd = await script(
      run.workDir,
      "hang.sh",
      `sh -c 'trap "" TERM; echo $$ > ${pidFile}; sleep 60' &\nsleep 60`,
    );
    const t0 = Date.now();
    const out = await runCommandTarget(run, { command: cmd, timeoutSeconds: 1 });
    assert.equal(out.ok, false);
    assert.equal(out.details.timedOut, true);
    assert.match(out.message, /did not finish within 1 s/);
    assert.ok(Date.now() - t0 < 15_000);
    const child = Number(await fs.readFile(pidFile, "utf8"));
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(await processRunning(child), false);
  });

  void it("stops the command when the launch is cancelled", async (t) => {
    const run = targetRun(t);
    const cmd = await script(run.workDir, "wait.sh", "echo started\nexec sleep 60");
    setTimeout(() => run.abort.abort(), 300);
    const out = await runCommandTarget(run, { command: cmd, timeoutSeconds: 60 });
    assert.equal(out.ok, false);
    assert.equal(out.details.aborted, true);
    assert.match(out.message, /cancelled/);
  });

  void it("bounds long lines and the total logged", async (t) => {
    const run = targetRun(t);
    const cmd = await script(
      run.workDir,
      "loud.sh",
      "head -c 10000 /dev/zero | tr '\\0' x; echo; yes line | head -n 300000",
    );
    const out = await runCommandTarget(run, { command: cmd, timeoutSeconds: 30 });
    assert.equal(out.ok, true);
    const logged = run.lines.filter((l) => l.message.startsWith("command stdout:"));
    assert.match(logged[0]!.message, /^command stdout: x{4096} \[line cut\]$/);
    const bytes = logged.reduce((n, l) => n + l.message.length - "command stdout: ".length + 1, 0);
    assert.ok(bytes < (1 << 20) + 10_000, `logged ${bytes} bytes`);
    assert.ok(run.lines.some((l) => /further lines not logged/.test(l.message)));
  });

  void it("refuses a command that cannot be run", async (t) => {
    const run = targetRun(t);
    await assert.rejects(
      runCommandTarget(run, { command: path.join(run.workDir, "missing"), timeoutSeconds: 5 }),
      (err) => isLifeboatError(err, "LAUNCH_COMMAND_NOT_RUNNABLE") && /ENOENT/.test(err.message),
    );
  });
});
