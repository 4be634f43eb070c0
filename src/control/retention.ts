import { type Repository, forgetPits, listPits, parseRetention, planRetention } from "../store/index.js";
import type { Database } from "./db/index.js";
import { effectiveSettings } from "./settings.js";

/**
 * The server's retention policy, applied after each of its PITs: PITs it no
 * longer keeps are forgotten in the repository (their data goes at the next
 * `store gc`) and in the catalog. The policy thins out scheduled PITs; a PIT
 * taken on demand (its point id starts with "d") is kept until it is older
 * than the policy's longest horizon, so that an operator's PIT before a
 * risky change is not thinned out by the next scheduled one.
 */
export async function applyRetention(
  database: Database,
  repo: Repository,
  serverId: string,
  server: string,
): Promise<void> {
  const { settings } = await effectiveSettings(database, serverId, "replication");
  const policy = parseRetention(String(settings.retention));
  const pits = await listPits(repo, { server, damaged: [] });
  const now = repo.clock.now();
  const horizon = Math.max(...policy.tiers.map((t) => t.keepMs));
  const onDemand = (p: (typeof pits)[number]) => (p.labels.point ?? "").startsWith("d");
  const forget = [
    ...planRetention(
      pits.filter((p) => !onDemand(p)),
      policy,
      now,
    ).forget.map((f) => f.id),
    ...pits.filter((p) => onDemand(p) && now - p.timeMs > horizon).map((p) => p.id),
  ];
  if (!forget.length) return;
  await forgetPits(repo, policy, { server, pits: forget });
  await database.db.deleteFrom("pits").where("id", "in", forget).execute();
}
