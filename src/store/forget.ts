import { withGcLock } from "./gc.js";
import { deletePit, listPits } from "./pit.js";
import type { Repository } from "./repository.js";
import { type RetentionPolicy, planRetention } from "./retention.js";

export interface ForgetReport {
  dryRun: boolean;
  servers: {
    server: string;
    keep: { id: string; reasons: string[] }[];
    forget: { id: string; ageMs: number }[];
  }[];
  forgotten: number;
}

/**
 * Applies a retention policy to each server's PITs. Only PIT objects are
 * deleted; the data they alone referenced goes at the next `store gc`.
 * Runs under the GC lock (gc.ts explains why).
 */
export async function forgetPits(
  repo: Repository,
  policy: RetentionPolicy,
  opts: { server?: string; dryRun?: boolean } = {},
): Promise<ForgetReport> {
  const plan = async (): Promise<ForgetReport> => {
    const pits = await listPits(repo, opts.server ? { server: opts.server } : {});
    const servers = [...new Set(pits.map((p) => p.server))].sort();
    const now = repo.clock.now();
    const report: ForgetReport = { dryRun: Boolean(opts.dryRun), servers: [], forgotten: 0 };
    for (const server of servers) {
      const p = planRetention(
        pits.filter((x) => x.server === server),
        policy,
        now,
      );
      report.servers.push({ server, ...p });
    }
    return report;
  };
  if (opts.dryRun) return plan();
  return withGcLock(repo, "forget", async () => {
    const report = await plan();
    for (const s of report.servers) {
      for (const f of s.forget) {
        await deletePit(repo, f.id);
        report.forgotten++;
      }
    }
    return report;
  });
}
