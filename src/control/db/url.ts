import path from "node:path";
import { LifeboatError } from "../../base/index.js";

/**
 * Where the control plane keeps its state, as the operator wrote it:
 *   sqlite:/var/lib/lifeboat/control.db    (also sqlite:///abs/path, or a plain path)
 *   sqlite::memory:                        (tests only: gone when closed)
 *   postgres://user:password@host:5432/lifeboat?sslmode=require   (or postgresql://)
 *
 * Everything this module returns for display has the password removed:
 * a URL can reach a log line, an error or `doctor` output.
 */
export type DatabaseLocation =
  | { dialect: "sqlite"; file: string; display: string }
  | { dialect: "postgres"; connectionString: string; display: string; password: string };

export function parseDatabaseUrl(url: string): DatabaseLocation {
  const text = url.trim();
  if (text === "") throw badUrl("(empty)", "the database URL is empty");
  if (/^postgres(ql)?:\/\//i.test(text)) return parsePostgres(text);
  if (/^sqlite:/i.test(text)) {
    let rest = text.slice("sqlite:".length);
    if (rest.startsWith("//")) rest = rest.slice(2); // sqlite:///abs/path → /abs/path
    if (rest === ":memory:") return { dialect: "sqlite", file: ":memory:", display: "sqlite::memory:" };
    if (!rest.startsWith("/")) {
      throw badUrl(text, "a sqlite: URL needs an absolute path (sqlite:/var/lib/lifeboat/control.db)");
    }
    return { dialect: "sqlite", file: rest, display: `sqlite:${rest}` };
  }
  // Any other scheme is a mistake; no scheme means a file path (relative: to the working directory).
  if (/^[a-z][a-z0-9+.-]*:/i.test(text)) {
    throw badUrl(redactUrl(text), "unsupported database URL scheme");
  }
  const file = path.resolve(text);
  return { dialect: "sqlite", file, display: `sqlite:${file}` };
}

function parsePostgres(text: string): DatabaseLocation {
  let u: URL;
  let hostname: string;
  try {
    u = new URL(text);
    hostname = u.hostname;
  } catch {
    // user@/db?host=/socket/dir has an empty host, which URL refuses; pg accepts it the same way.
    try {
      u = new URL(text.replace("@/", "@placeholder/"));
      hostname = "";
    } catch {
      throw badUrl(redactUrl(text), "the PostgreSQL URL is malformed");
    }
  }
  if (u.port !== "" && !(Number(u.port) > 0 && Number(u.port) < 65536)) {
    throw badUrl(redactUrl(text), `port ${u.port} is not a TCP port`);
  }
  const database = decodeURIComponent(u.pathname.replace(/^\//, ""));
  if (database === "" || database.includes("/")) {
    throw badUrl(redactUrl(text), "the PostgreSQL URL names no database (postgres://user@host:5432/DBNAME)");
  }
  if (hostname === "" && !u.searchParams.has("host")) {
    throw badUrl(redactUrl(text), "the PostgreSQL URL names no host (or ?host=/socket/dir)");
  }
  const password = decodeURIComponent(u.password) || (u.searchParams.get("password") ?? "");
  return { dialect: "postgres", connectionString: text, display: redactUrl(text), password };
}

/** The URL with any password (user:PASSWORD@ or ?password=) replaced by "***". */
export function redactUrl(url: string): string {
  return url
    .replace(/^([a-z][a-z0-9+.-]*:\/\/[^/@:?#]*:)[^@/?#]*@/i, "$1***@")
    .replace(/([?&]password=)[^&#]*/gi, "$1***");
}

/** Removes a password from text that might echo it (a driver's error message). */
export function scrubSecret(text: string, secret: string): string {
  return secret.length >= 1 ? text.split(secret).join("***") : text;
}

function badUrl(shown: string, why: string): LifeboatError {
  return new LifeboatError("DB_BAD_URL", `database URL ${shown}: ${why}`, {
    hint: "use sqlite:/absolute/path.db, a plain file path, or postgres://user:password@host:5432/dbname",
    exitCode: 2,
  });
}
