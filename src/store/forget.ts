import { LifeboatError } from "../base/index.js";
import { restoreAllReferenced } from "./gc.js";
import { acquireLock } from "./locks.js";
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
 * Runs under the GC lock and puts back trashed objects first (gc.ts explains why).
 */
export async function forgetPits(
  repo: Repository,
  policy: RetentionPolicy,
  opts: { server?: string; dryRun?: boolean; pits?: string[] } = {},
): Promise<ForgetReport> {
  const plan = async (): Promise<ForgetReport> => {
    const pits = await listPits(repo, { ...(opts.server ? { server: opts.server } : {}), damaged: [] });
    if (opts.pits) {
      const missing = opts.pits.filter((id) => !pits.some((p) => p.id === id));
      if (missing.length) {
        throw new LifeboatError(
          "PIT_NOT_FOUND",
          `no PIT ${missing.join(", ")}${opts.server ? ` of ${opts.server}` : ""}`,
          {
            hint: "list PITs with `lifeboat pits list`",
            exitCode: 2,
          },
        );
      }
    }
    const servers = [...new Set(pits.map((p) => p.server))].sort();
    const now = repo.clock.now();
    const report: ForgetReport = { dryRun: Boolean(opts.dryRun), servers: [], forgotten: 0 };
    for (const server of servers) {
      const mine = pits.filter((x) => x.server === server);
      const named = opts.pits;
      const p = named
        ? {
            keep: mine
              .filter((x) => !named.includes(x.id))
              .map((x) => ({ id: x.id, reasons: ["not named"] })),
            forget: mine
              .filter((x) => named.includes(x.id))
              .map((x) => ({ id: x.id, ageMs: Math.max(0, now - x.timeMs) })),
          }
        : planRetention(mine, policy, now);
      report.servers.push({ server, ...p });
    }
    return report;
  };
  if (opts.dryRun) return plan();
  const lock = await acquireLock(repo, "gc", "forget");
  lock.keepAlive();
  try {
    const report = await plan();
    await restoreAllReferenced(repo);
    for (const s of report.servers) {
      for (const f of s.forget) {
        await deletePit(repo, f.id);
        report.forgotten++;
      }
    }
    return report;
  } finally {
    await lock.release();
  }
}
