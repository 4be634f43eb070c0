import type { FastifyInstance } from "fastify";
import { pino } from "pino";
import { ManualClock } from "../../src/base/index.js";
import { buildApp } from "../../src/control/app.js";
import { type ControlConfig, parseConfig } from "../../src/control/config.js";
import type { ApiKeyRole, Database } from "../../src/control/db/index.js";
import { issueSecret } from "../../src/control/secrets.js";
import { type CaCredentials, createCa } from "../../src/net/index.js";

export const T0 = 1_764_000_000_000;

let caPromise: Promise<CaCredentials> | undefined;
/** One CA for the test process: making one costs a key generation. */
export function testCa(): Promise<CaCredentials> {
  caPromise ??= createCa({ clock: new ManualClock(T0 - 86_400_000) });
  return caPromise;
}

export function testConfig(overrides: Partial<ControlConfig> = {}): ControlConfig {
  return parseConfig({
    version: 1,
    dataDir: "/nonexistent",
    databaseUrl: "sqlite::memory:",
    repository: "/nonexistent/repo",
    hostnames: ["localhost"],
    registerRateLimitPerMinute: 1000,
    ...overrides,
  });
}

/** Log lines the app wrote, as text, to look for leaked secrets. */
export interface CapturedLogs {
  lines: string[];
  text(): string;
}

export function captureLogger(): { logger: pino.Logger; logs: CapturedLogs } {
  const lines: string[] = [];
  const logger = pino({ level: "trace" }, { write: (s: string) => void lines.push(s) });
  return { logger, logs: { lines, text: () => lines.join("") } };
}

export async function addApiKey(
  database: Database,
  role: ApiKeyRole,
  clock = new ManualClock(T0),
): Promise<string> {
  const s = issueSecret("key");
  await database.db
    .insertInto("api_keys")
    .values({
      id: s.id,
      name: `${role} key`,
      role,
      key_hash: s.hash,
      created_at: clock.now(),
      created_by: "test",
      revoked_at: null,
      last_used_at: null,
    })
    .execute();
  return s.value;
}

export interface TestApp {
  app: FastifyInstance;
  database: Database;
  clock: ManualClock;
  ca: CaCredentials;
  keys: Record<ApiKeyRole, string>;
  logs: CapturedLogs;
  auth(role: ApiKeyRole): { authorization: string };
}

export async function testApp(database: Database, config: Partial<ControlConfig> = {}): Promise<TestApp> {
  const clock = new ManualClock(T0);
  const ca = await testCa();
  const { logger, logs } = captureLogger();
  const app = await buildApp({ database, config: testConfig(config), ca, clock, logger });
  const keys = {
    admin: await addApiKey(database, "admin"),
    operator: await addApiKey(database, "operator"),
    viewer: await addApiKey(database, "viewer"),
  };
  return {
    app,
    database,
    clock,
    ca,
    keys,
    logs,
    auth: (role) => ({ authorization: `Bearer ${keys[role]}` }),
  };
}
