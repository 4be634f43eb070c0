import { z } from "zod";
import { BUILTIN_SETTINGS, type SettingsDb, parseOverride } from "./settings.js";

/**
 * Readiness before disaster: whether a server would boot on the platform of
 * its launch settings' boot profile, as its agent last found its live system
 * (`inventory.boot` of its heartbeats, src/agent/boot-inventory.ts). The
 * agent judges every profile with inspect's verdicts; this picks the one the
 * server would be launched with. Null when the agent has not reported one
 * (an older agent, or not yet).
 */
export interface Readiness {
  profile: string;
  ready: boolean;
  verdict: string;
  problems: { code: string; severity: "error" | "warning"; message: string; remedy: string }[];
  /** When the agent last read the system (ISO 8601). */
  checkedAt: string;
  source: "agent";
}

const problemSchema = z.object({
  code: z.string().max(64),
  severity: z.enum(["error", "warning"]),
  message: z.string().max(4096),
  remedy: z.string().max(4096),
});
/** Only what readiness reads; the agent's inventory holds more, and may hold more fields later. */
const bootSchema = z.object({
  checkedAt: z.string().max(64),
  profiles: z.record(
    z.string().max(64),
    z.object({
      ready: z.boolean(),
      verdict: z.string().max(4096),
      problems: z.array(problemSchema).max(1000),
    }),
  ),
});

export function readinessOf(inventory: unknown, profile: string): Readiness | null {
  const boot = (inventory as { boot?: unknown } | null | undefined)?.boot;
  if (boot === undefined || boot === null) return null;
  const parsed = bootSchema.safeParse(boot);
  if (!parsed.success) return null;
  const { checkedAt, profiles } = parsed.data;
  const v = Object.hasOwn(profiles, profile) ? profiles[profile] : undefined;
  if (v === undefined)
    return {
      profile,
      ready: false,
      verdict: `not known for profile ${profile}: the agent does not check it`,
      problems: [
        {
          code: "LAUNCH_READINESS_UNKNOWN",
          severity: "error",
          message: `the server's agent reports the profiles ${Object.keys(profiles).join(", ") || "(none)"}, not ${profile}`,
          remedy: `upgrade the agent on the server, or run lifeboat inspect --profile ${profile} on a PIT`,
        },
      ],
      checkedAt,
      source: "agent",
    };
  return { profile, ready: v.ready, verdict: v.verdict, problems: v.problems, checkedAt, source: "agent" };
}

/**
 * The effective launch bootProfile of each server (built-in, then the
 * template, then the server's override, as effectiveSettings layers them),
 * with one query for all of them.
 */
export async function bootProfiles(db: SettingsDb, serverIds: string[]): Promise<Map<string, string>> {
  const rows = await db.db
    .selectFrom("settings")
    .select(["scope", "json"])
    .where("kind", "=", "launch")
    .execute();
  const profileOf = (scope: string): string | undefined => {
    const row = rows.find((r) => r.scope === scope);
    const v = row === undefined ? undefined : parseOverride("launch", row.json).bootProfile;
    return typeof v === "string" ? v : undefined;
  };
  const template = profileOf("default") ?? BUILTIN_SETTINGS.launch.bootProfile;
  return new Map(serverIds.map((id) => [id, profileOf(id) ?? template]));
}
