import { readFile } from "node:fs/promises";
import path from "node:path";
import { z } from "zod";
import { LifeboatError } from "../base/index.js";

/**
 * The control plane's configuration (D/config.json): one zod schema, validated
 * once at start, unknown keys rejected, every problem reported together, the
 * result frozen. Paths of the key files are fixed relative to the data
 * directory (the operator contract names them), so they are not configurable.
 */
export const DEFAULT_DATA_DIR = "/var/lib/lifeboat";

export const configSchema = z
  .object({
    version: z.literal(1),
    dataDir: z.string().min(1),
    /** host:port the HTTPS listener binds. */
    listen: z
      .string()
      .regex(/^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$/, "host:port")
      .default("0.0.0.0:443"),
    /** sqlite:FILE or postgres://... */
    databaseUrl: z.string().min(1),
    /** A directory or s3://bucket/prefix?endpoint=... */
    repository: z.string().min(1),
    /** Names and addresses in the server certificate. */
    hostnames: z.array(z.string().min(1)).min(1),
    /** An agent not heard from for this long is shown as offline. */
    heartbeatTimeoutSeconds: z.number().int().positive().default(120),
    /** Largest request body accepted (bytes); larger ones get 413. */
    bodyLimitBytes: z
      .number()
      .int()
      .positive()
      .default(1024 * 1024),
    /** Where launches write (ROOT/<server>/<job-id>/); default D/launches. */
    launchRoot: z.string().min(1).optional(),
    /** Registrations per client address per minute. */
    registerRateLimitPerMinute: z.number().int().positive().default(30),
    /**
     * A job whose control-plane instance has not renewed its claim for this
     * long (the instance died) is taken over by another instance. Claims are
     * renewed every 10 s, or a third of this when shorter.
     */
    jobClaimTimeoutSeconds: z.number().int().min(3).default(60),
  })
  .strict();

export type ControlConfig = Readonly<z.infer<typeof configSchema>>;

/** The files of a data directory, as the operator contract names them. */
export function dataPaths(dataDir: string) {
  const keys = path.join(dataDir, "keys");
  return {
    config: path.join(dataDir, "config.json"),
    caCert: path.join(dataDir, "ca.pem"),
    serverCert: path.join(dataDir, "server.pem"),
    signingCert: path.join(dataDir, "signing.pem"),
    adminApiKey: path.join(dataDir, "admin-api.key"),
    keys,
    caKey: path.join(keys, "ca.key"),
    serverKey: path.join(keys, "server.key"),
    signingKey: path.join(keys, "signing.key"),
    repoKey: path.join(keys, "repo.key"),
    /** The signed agent bundle served at /downloads/agent/ (`lifeboat bundle build`). */
    agentBundle: path.join(dataDir, "downloads", "agent"),
  };
}

/** Validates a parsed config.json; CONFIG_INVALID lists every problem. */
export function parseConfig(value: unknown, source = "config"): ControlConfig {
  const r = configSchema.safeParse(value);
  if (!r.success) {
    const problems = r.error.issues.map((i) => `${i.path.join(".") || "(top)"}: ${i.message}`);
    throw new LifeboatError("CONFIG_INVALID", `${source} is not valid: ${problems.join("; ")}`, {
      hint: "fix the listed settings (see docs) and start again",
      exitCode: 2,
    });
  }
  return Object.freeze({ ...r.data, hostnames: Object.freeze([...r.data.hostnames]) as string[] });
}

export async function loadConfig(file: string): Promise<ControlConfig> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    throw new LifeboatError("CONFIG_NOT_FOUND", `cannot read ${file}`, {
      hint: "run `lifeboat server init --data-dir D` first, or give the right --data-dir / --config",
      cause: err,
      exitCode: 2,
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new LifeboatError("CONFIG_INVALID", `${file} is not JSON`, {
      hint: "fix the file",
      cause: err,
      exitCode: 2,
    });
  }
  return parseConfig(json, file);
}
