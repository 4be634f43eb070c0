import { Kysely, PostgresDialect } from "kysely";
import pg from "pg";
import { LifeboatError, type Logger } from "../../base/index.js";
import type { Schema } from "./schema.js";
import { scrubSecret } from "./url.js";

export interface PostgresOptions {
  /** Connections in the pool (default 10). */
  poolMax: number;
  /** How long to wait for a connection, also at open (default 10 s). */
  connectTimeoutMs: number;
}

const INT8_OID = 20;

/**
 * Types parsed per pool, not through pg's global registry (which would change
 * every other pg user in the process). int8 (bigint: our millisecond times and
 * byte counts, and count(*)) becomes a number; a value past 2^53 would lose
 * precision, so it is an error instead of a silently wrong number.
 */
const types: pg.CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: "text" | "binary") => {
    if (oid === INT8_OID && format !== "binary") {
      return (text: string) => {
        const n = Number(text);
        if (!Number.isSafeInteger(n)) throw new Error(`bigint ${text} does not fit a JavaScript number`);
        return n;
      };
    }
    return (
      format === "binary" ? pg.types.getTypeParser(oid, "binary") : pg.types.getTypeParser(oid, "text")
    ) as (value: unknown) => unknown;
  }) as pg.CustomTypesConfig["getTypeParser"],
};

/**
 * A pg Pool behind kysely. Several control-plane processes may share one
 * database; each has its own pool. Connects once before returning, so a wrong
 * URL, password or an unreachable server is reported at start, not at the
 * first request.
 */
export async function openPostgres(
  connectionString: string,
  display: string,
  password: string,
  logger: Logger,
  opts: PostgresOptions,
): Promise<Kysely<Schema>> {
  const pool = new pg.Pool({
    connectionString,
    max: opts.poolMax,
    connectionTimeoutMillis: opts.connectTimeoutMs,
    idleTimeoutMillis: 30_000,
    fallback_application_name: "lifeboat",
    types,
  });
  // An idle client whose server went away emits "error" on the pool; without a
  // listener that would crash the process. The next query reconnects.
  pool.on("error", (err) => {
    logger.warn({ database: display, err: scrubSecret(err.message, password) }, "PostgreSQL connection lost");
  });
  try {
    const client = await pool.connect();
    try {
      await client.query("select 1");
    } finally {
      client.release();
    }
  } catch (err) {
    await pool.end().catch(() => undefined);
    throw connectFailed(display, password, err);
  }
  return new Kysely<Schema>({ dialect: new PostgresDialect({ pool }) });
}

/** Maps what pg reports on connect to an operator's words. Never includes the password. */
export function connectFailed(display: string, password: string, err: unknown): LifeboatError {
  const code = (err as { code?: unknown }).code;
  const raw = err instanceof Error ? err.message : String(err);
  const message = scrubSecret(raw, password);
  // The original error may quote what we sent; keep only its scrubbed message.
  const cause = new Error(message);
  if (code === "28P01" || code === "28000" || /password|SASL|SCRAM/i.test(raw)) {
    return new LifeboatError("DB_AUTH_FAILED", `PostgreSQL at ${display} refused the login: ${message}`, {
      hint: "check the user and password in the database URL and the server's pg_hba.conf entry for this host",
      cause,
    });
  }
  if (code === "3D000") {
    return new LifeboatError("DB_NOT_FOUND", `PostgreSQL at ${display}: ${message}`, {
      hint: "create the database first (createdb -O USER DBNAME), or correct its name in the URL",
      cause,
    });
  }
  const transientServer = code === "57P03" || code === "53300"; // starting up; too many connections
  return new LifeboatError("DB_UNREACHABLE", `cannot reach PostgreSQL at ${display}: ${message}`, {
    hint: transientServer
      ? "the server is starting or out of connections; retry, or raise max_connections"
      : "check the host and port in the database URL, that PostgreSQL is running and listening there " +
        "(listen_addresses), and that no firewall is in the way",
    cause,
    retryable: true,
  });
}
