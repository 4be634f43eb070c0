import { z } from "zod";
import { PROFILE_NAMES, isProfileName } from "../launch/index.js";
import { parseRetention } from "../store/index.js";
import type { Database, SettingsKind } from "./db/index.js";
import { httpError } from "./http-error.js";

/** A Database or, inside a transaction, `{ db: trx }`. */
export type SettingsDb = Pick<Database, "db">;

/**
 * Replication and launch settings. Three layers, later wins, field by field:
 * the built-in defaults here, the template (settings row with scope
 * "default"), and a server's own override (scope = the server id). Rows hold
 * only the fields they override; a field present in a row wins even when its
 * value is null (for bandwidthMbps, null is "unlimited").
 */
export const SETTINGS_KINDS = ["replication", "launch"] as const satisfies readonly SettingsKind[];
export type SettingsSource = "builtin" | "default" | "server";

const retention = z
  .string()
  .min(1)
  .max(200)
  .superRefine((v, ctx) => {
    try {
      parseRetention(v);
    } catch (err) {
      ctx.addIssue({ code: "custom", message: err instanceof Error ? err.message : String(err) });
    }
  });
const shortText = z.string().min(1).max(4096);

export const replicationSettingsSchema = z.strictObject({
  /** Megabits per second; null: unlimited. */
  bandwidthMbps: z.number().positive().max(1_000_000).nullable(),
  pitIntervalMinutes: z.number().int().min(1).max(1440),
  /** As parseRetention reads it: "10m:1h,1h:24h,1d:7d". */
  retention,
  consistency: z.enum(["application", "filesystem", "crash"]),
  preFreezeHook: shortText.nullable(),
  postThawHook: shortText.nullable(),
  replicatorId: z.string().min(1).max(64).nullable(),
  tags: z.array(z.string().min(1).max(64)).max(64),
  /** The recovery point objective: the newest PIT may be at most this old (metrics, rpo.ts). */
  rpoMinutes: z.number().int().min(1).max(10_080),
});
const address = z
  .string()
  .min(2)
  .max(64)
  .regex(/^[0-9A-Fa-f.:]+$/, "an IPv4 or IPv6 address");
export const launchSettingsSchema = z.strictObject({
  target: z.enum(["image", "block", "qemu", "command"]),
  /** A boot profile of launch/inspect (the drivers the target platform needs). */
  bootProfile: z.string().refine(isProfileName, {
    error: (issue) =>
      `unknown boot profile ${JSON.stringify(issue.input)}; the profiles are ${PROFILE_NAMES.join(", ")}`,
  }),
  outputDir: shortText.nullable(),
  /** Executables run after the target succeeded, with the target command's environment; each must exit 0. */
  postLaunchChecks: z.array(shortText).max(64),
  /** The launched copy's hostname; null: "<server>-drill" for a drill, unchanged for a recovery. */
  hostname: z
    .string()
    .regex(/^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/, "a host name")
    .nullable(),
  /** Addresses rewritten in the launched copy's network configuration. */
  addressMap: z.array(z.strictObject({ from: address, to: address })).max(256),
  /** Block target: one device per disk, in disk order. */
  blockDevices: z.array(z.string().min(1).max(4096)).max(64),
  /** qemu target: a regular expression; the boot succeeded when a serial console line matches it. */
  successPattern: z.string().min(1).max(1024),
  bootTimeoutSeconds: z.number().int().min(5).max(86_400),
  qemuMemoryMiB: z.number().int().min(64).max(1_048_576),
  /** qemu target: "none" isolates the VM; "user" gives it user-mode networking without reaching the host. */
  qemuNetwork: z.enum(["none", "user"]),
  /** qemu target: "auto" uses KVM when /dev/kvm works, else TCG (emulation). */
  qemuAccel: z.enum(["auto", "kvm", "tcg"]),
  /** qemu target: direct kernel boot, for disks without a boot loader (paths on the control-plane host). */
  qemuKernel: shortText.nullable(),
  qemuInitrd: shortText.nullable(),
  qemuAppend: shortText.nullable(),
  /** command target: the executable (no shell); the disk paths and PIT facts are in its environment. */
  command: shortText.nullable(),
  commandTimeoutSeconds: z.number().int().min(1).max(86_400),
});
export type ReplicationSettings = z.infer<typeof replicationSettingsSchema>;
export type LaunchSettings = z.infer<typeof launchSettingsSchema>;

export const SETTINGS_SCHEMAS = {
  replication: replicationSettingsSchema,
  launch: launchSettingsSchema,
} as const;
/** An override: any subset of the fields. */
export const OVERRIDE_SCHEMAS = {
  replication: replicationSettingsSchema.partial(),
  launch: launchSettingsSchema.partial(),
} as const;

export const BUILTIN_SETTINGS: { replication: ReplicationSettings; launch: LaunchSettings } = {
  replication: {
    bandwidthMbps: null,
    pitIntervalMinutes: 10,
    retention: "10m:1h,1h:24h,1d:7d",
    consistency: "filesystem",
    preFreezeHook: null,
    postThawHook: null,
    replicatorId: null,
    tags: [],
    rpoMinutes: 30,
  },
  launch: {
    target: "image",
    bootProfile: "kvm",
    outputDir: null,
    postLaunchChecks: [],
    hostname: null,
    addressMap: [],
    blockDevices: [],
    successPattern: "login:|Reached target .*Multi-User|lifeboat-boot-ok",
    bootTimeoutSeconds: 600,
    qemuMemoryMiB: 2048,
    qemuNetwork: "none",
    qemuAccel: "auto",
    qemuKernel: null,
    qemuInitrd: null,
    qemuAppend: null,
    command: null,
    commandTimeoutSeconds: 3600,
  },
};

export type Override = Record<string, unknown>;

export interface EffectiveSettings {
  settings: Record<string, unknown>;
  /** For every field, the layer its value came from. */
  sources: Record<string, SettingsSource>;
}

/** The stored override of `scope` ("default" or a server id), {} when there is none. */
export async function readOverride(db: SettingsDb, scope: string, kind: SettingsKind): Promise<Override> {
  const row = await db.db
    .selectFrom("settings")
    .select("json")
    .where("scope", "=", scope)
    .where("kind", "=", kind)
    .executeTakeFirst();
  if (row === undefined) return {};
  return parseOverride(kind, row.json);
}

/**
 * A stored override's fields. A field stored by an older version that no
 * longer validates (bootProfile "generic" before profiles were checked) is
 * ignored, not fatal: the layer below shows through.
 */
export function parseOverride(kind: SettingsKind, json: string): Override {
  const raw = JSON.parse(json) as Override;
  const parsed = OVERRIDE_SCHEMAS[kind].safeParse(raw);
  if (parsed.success) return parsed.data;
  const keep: Override = {};
  for (const [k, v] of Object.entries(raw))
    if (OVERRIDE_SCHEMAS[kind].safeParse({ [k]: v }).success) keep[k] = v;
  return keep;
}

/** Built-ins, then the template, then the server's override (serverId null: the template alone). */
export async function effectiveSettings(
  db: SettingsDb,
  serverId: string | null,
  kind: SettingsKind,
): Promise<EffectiveSettings> {
  const settings: Record<string, unknown> = { ...BUILTIN_SETTINGS[kind] };
  const sources: Record<string, SettingsSource> = {};
  for (const k of Object.keys(settings)) sources[k] = "builtin";
  const layers: [SettingsSource, Override][] = [["default", await readOverride(db, "default", kind)]];
  if (serverId !== null) layers.push(["server", await readOverride(db, serverId, kind)]);
  for (const [source, override] of layers)
    for (const [k, v] of Object.entries(override)) {
      if (!(k in settings)) continue;
      settings[k] = v;
      sources[k] = source;
    }
  return { settings, sources };
}

/**
 * Applies a patch to an override: a field set to null is removed (the layer
 * below shows through); for bandwidthMbps, "unlimited" stores null. Throws
 * 400 REQUEST_INVALID naming the first invalid field.
 */
export function applyPatch(kind: SettingsKind, current: Override, patch: Override): Override {
  const next: Override = { ...current };
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete next[k];
    else if (kind === "replication" && k === "bandwidthMbps" && v === "unlimited") next[k] = null;
    else next[k] = v;
  }
  const parsed = OVERRIDE_SCHEMAS[kind].safeParse(next);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = issue.path.length > 0 ? `body.${issue.path.map(String).join(".")}` : "body";
    throw httpError(
      400,
      "REQUEST_INVALID",
      `${field}: ${issue.message}`,
      "fix the request; the API is described at /api/v1/openapi.json",
    );
  }
  return parsed.data;
}

/** Writes (or, for an empty override, deletes) the row of `scope`. */
export async function writeOverride(
  db: SettingsDb,
  scope: string,
  kind: SettingsKind,
  override: Override,
  updatedBy: string,
  now: number,
): Promise<void> {
  if (Object.keys(override).length === 0) {
    await db.db.deleteFrom("settings").where("scope", "=", scope).where("kind", "=", kind).execute();
    return;
  }
  const json = JSON.stringify(override);
  await db.db
    .insertInto("settings")
    .values({ scope, kind, json, updated_at: now, updated_by: updatedBy })
    .onConflict((oc) =>
      oc.columns(["scope", "kind"]).doUpdateSet({ json, updated_at: now, updated_by: updatedBy }),
    )
    .execute();
}
