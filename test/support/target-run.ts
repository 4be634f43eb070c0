/** A TargetRun for target tests: fixed facts, a temporary work directory, and the log kept in memory. */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import type { TestContext } from "node:test";
import type { LaunchedDisk, TargetRun } from "../../src/launch/targets/index.js";

export interface RecordedRun extends TargetRun {
  lines: { level: string; message: string }[];
  abort: AbortController;
}

export function targetRun(t: TestContext, disks: LaunchedDisk[] = []): RecordedRun {
  const workDir = mkdtempSync(path.join(os.tmpdir(), "lifeboat-target-"));
  t.after(() => rmSync(workDir, { recursive: true, force: true }));
  const lines: { level: string; message: string }[] = [];
  const abort = new AbortController();
  return {
    facts: {
      jobId: "job-0123",
      jobType: "drill",
      server: { id: "srv-42", name: "web-1" },
      pit: {
        id: "0123456789abcdef01234567",
        timeMs: Date.UTC(2026, 10, 29, 8, 30, 0),
        consistency: "application",
      },
    },
    disks,
    workDir,
    log: (level, message) => lines.push({ level, message }),
    signal: abort.signal,
    lines,
    abort,
  };
}
