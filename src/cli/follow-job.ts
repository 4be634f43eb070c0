import type { ApiClient } from "./api-client.js";

export interface JobLine {
  seq: number;
  at: string;
  level: string;
  message: string;
}

export const FINISHED_STATES = ["succeeded", "failed", "terminated"];

/**
 * Follows a job's log over the API until the job ends (or `until` says stop):
 * each new line goes to `onLine`. Returns the job's final state.
 */
export async function followJob(
  api: ApiClient,
  jobId: string,
  onLine: (l: JobLine) => void,
  opts: { after?: number; stopWhenFinished?: boolean } = {},
): Promise<string> {
  let after = opts.after ?? 0;
  for (;;) {
    const r = await api.call<{ state: string; log: JobLine[] }>(
      `/api/v1/jobs/${encodeURIComponent(jobId)}/log?after=${after}&waitSeconds=20`,
      { timeoutMs: 40_000 },
    );
    for (const l of r.log) {
      onLine(l);
      after = Math.max(after, l.seq);
    }
    if (r.log.length === 0 && FINISHED_STATES.includes(r.state) && opts.stopWhenFinished !== false)
      return r.state;
  }
}

export function formatJobLine(l: JobLine): string {
  return `${l.at} ${l.level.padEnd(5)} ${l.message}`;
}
