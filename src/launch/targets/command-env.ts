import { childPath } from "./executables.js";
import type { TargetRun } from "./types.js";

/**
 * The whole environment of the operator's command: the launch's facts and
 * PATH, nothing else of the service's environment (which may hold secrets).
 * Documented in docs/launch-targets.md; a script relies on these names.
 */
export function commandEnv(run: TargetRun): Record<string, string> {
  const { facts, disks } = run;
  const ordered = [...disks].sort((a, b) => a.index - b.index);
  const env: Record<string, string> = {
    PATH: childPath(),
    LIFEBOAT_JOB_ID: facts.jobId,
    LIFEBOAT_JOB_TYPE: facts.jobType,
    LIFEBOAT_SERVER: facts.server.name,
    LIFEBOAT_SERVER_ID: facts.server.id,
    LIFEBOAT_PIT_ID: facts.pit.id,
    LIFEBOAT_PIT_TIME: new Date(facts.pit.timeMs).toISOString(),
    LIFEBOAT_CONSISTENCY: facts.pit.consistency,
    LIFEBOAT_DISK_COUNT: String(ordered.length),
    LIFEBOAT_DISKS: ordered.map((d) => d.path).join(":"),
    LIFEBOAT_WORK_DIR: run.workDir,
  };
  for (const d of ordered) env[`LIFEBOAT_DISK_${d.index}`] = d.path;
  return env;
}
