import { X509Certificate, createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile, stat, statfs } from "node:fs/promises";
import { createServer } from "node:net";
import path from "node:path";
import { connect as tlsConnect } from "node:tls";
import { type Clock, systemClock } from "../base/index.js";
import {
  type DoctorReport,
  type DoctorStep,
  EXPIRY_WARNING_MS,
  type StepOutcome,
  doctorReport,
  timedStep,
} from "../net/index.js";
import { type Backend, openBackend } from "../store/index.js";
import { type ControlConfig, dataPaths } from "./config.js";
import { migrationStatus, openDatabase, parseDatabaseUrl } from "./db/index.js";

const DAY_MS = 86_400_000;
/** A repository filesystem with less free space than this share is reported (warn). */
export const LOW_FREE_SHARE = 0.1;

const ok = (value: string): StepOutcome => ({ status: "ok", value, hint: "" });
const warn = (value: string, code: string, hint: string): StepOutcome => ({
  status: "warn",
  value,
  hint,
  code,
});
const fail = (value: string, code: string, hint: string): StepOutcome => ({
  status: "fail",
  value,
  hint,
  code,
});

/**
 * `lifeboat doctor --server`: the recovery site's own side, read from its
 * configuration and data directory without starting anything: the
 * certificates' validity (server, CA, release signing), the modes of the
 * private keys and secrets (0600) and of the keys directory (0700), the
 * database (reachable, migrated by this version), the repository (reachable,
 * free space), and whether the listen address can be bound or is this
 * server's own. Read-only: it never migrates, writes or repairs.
 */
export async function runServerDoctor(
  config: ControlConfig,
  opts: { clock?: Clock; timeoutMs?: number } = {},
): Promise<DoctorReport> {
  const clock = opts.clock ?? systemClock;
  const timeoutMs = opts.timeoutMs ?? 5000;
  const p = dataPaths(config.dataDir);
  const steps: DoctorStep[] = [];
  steps.push(await timedStep("certificates", () => certificatesStep(p, clock.now())));
  steps.push(await timedStep("permissions", () => permissionsStep(p, s3CredentialsFile(config.repository))));
  steps.push(await timedStep("database", () => databaseStep(config.databaseUrl, timeoutMs)));
  steps.push(await timedStep("repository", () => repositoryStep(config.repository, timeoutMs)));
  steps.push(await timedStep("listen", () => listenStep(config.listen, p.serverCert, timeoutMs)));
  return doctorReport(steps);
}

type Paths = ReturnType<typeof dataPaths>;

async function certificatesStep(p: Paths, now: number): Promise<StepOutcome> {
  const parts: string[] = [];
  let problem: StepOutcome | undefined;
  for (const [file, what] of [
    [p.serverCert, "server"],
    [p.caCert, "CA"],
    [p.signingCert, "release key"],
  ] as const) {
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(await readFile(file));
    } catch (err) {
      parts.push(`${what}: cannot read ${file}`);
      problem ??= fail(
        `${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
        "DOCTOR_CERT_UNREADABLE",
        "Restore the file from the data directory's backup; `server init` made it.",
      );
      continue;
    }
    const end = Date.parse(cert.validTo);
    const days = Math.floor((end - now) / DAY_MS);
    parts.push(`${what} until ${new Date(end).toISOString().slice(0, 10)} (${days} d)`);
    if (now > end)
      problem ??= fail(
        `the ${what} certificate ${file} expired ${cert.validTo}`,
        "DOCTOR_CERT_EXPIRED",
        "Agents and replicators refuse it: issue a new one from the CA and restart the server.",
      );
    else if (now < Date.parse(cert.validFrom))
      problem ??= fail(
        `the ${what} certificate ${file} is not valid before ${cert.validFrom}`,
        "DOCTOR_CERT_EXPIRED",
        "Check this host's clock.",
      );
    else if (end - now < EXPIRY_WARNING_MS && problem === undefined)
      problem = warn(
        "",
        "DOCTOR_CERT_EXPIRING",
        `The ${what} certificate ${file} ends in ${days} days: renew it before clients refuse it.`,
      );
  }
  const value = parts.join(", ");
  return problem ? { ...problem, value: problem.value ? `${problem.value}; ${value}` : value } : ok(value);
}

/** The `credentials-file` an s3:// repository URL names, if any: a secret like the keys. */
function s3CredentialsFile(repository: string): string | undefined {
  if (!repository.startsWith("s3://")) return undefined;
  try {
    return new URL(repository).searchParams.get("credentials-file") ?? undefined;
  } catch {
    return undefined;
  }
}

async function permissionsStep(p: Paths, s3Credentials: string | undefined): Promise<StepOutcome> {
  const bad: string[] = [];
  const missing: string[] = [];
  const check = async (file: string, want: number, dir: boolean) => {
    try {
      const st = await stat(file);
      if (dir !== st.isDirectory()) bad.push(`${file} is not a ${dir ? "directory" : "file"}`);
      else if ((st.mode & 0o077) !== 0)
        bad.push(
          `${file} ${(st.mode & 0o777).toString(8).padStart(4, "0")} (want ${want.toString(8).padStart(4, "0")})`,
        );
    } catch {
      missing.push(file);
    }
  };
  await check(p.keys, 0o700, true);
  const secrets = [p.caKey, p.serverKey, p.signingKey, p.repoKey, p.adminApiKey];
  if (s3Credentials !== undefined) secrets.push(s3Credentials);
  for (const f of secrets) await check(f, 0o600, false);
  if (bad.length > 0)
    return fail(
      bad.join("; "),
      "FILE_MODE_INSECURE",
      `Group or others may read these secrets: chmod 600 the files and 700 the directory (${path.basename(p.keys)}/), and consider whether someone may have copied them meanwhile. The server refuses to start so.`,
    );
  if (missing.length > 0)
    return fail(
      `missing: ${missing.join(", ")}`,
      "FILE_MISSING",
      "Restore them from the data directory's backup; without them the server cannot start.",
    );
  return ok(`keys/ 0700 and ${secrets.length} secret files 0600`);
}

async function databaseStep(url: string, timeoutMs: number): Promise<StepOutcome> {
  const where = parseDatabaseUrl(url);
  if (where.dialect === "sqlite" && where.file !== ":memory:" && !existsSync(where.file))
    return fail(
      `${where.display}: no such file`,
      "DOCTOR_DB_UNREACHABLE",
      "Check databaseUrl in config.json; restore the database file from its backup.",
    );
  let database;
  try {
    database = await openDatabase(url, { connectTimeoutMs: timeoutMs, poolMax: 1 });
  } catch (err) {
    return fail(
      `${where.display}: ${(err as Error).message}`,
      "DOCTOR_DB_UNREACHABLE",
      "Check that the database server runs and this host may reach it (address, port, user, password in databaseUrl).",
    );
  }
  try {
    const s = await migrationStatus(database);
    if (s.unknown.length > 0)
      return fail(
        `${database.location}: migrated by a newer Lifeboat (${s.unknown.join(", ")})`,
        "DB_SCHEMA_TOO_NEW",
        "Run the Lifeboat version that last migrated this database or a newer one.",
      );
    if (s.pending.length > 0)
      return fail(
        `${database.location}: ${s.pending.length} migration(s) not run (${s.pending.join(", ")})`,
        "DOCTOR_DB_NOT_MIGRATED",
        "`lifeboat server start` migrates the database when it starts; start it (or check why it did not).",
      );
    return ok(`${database.location}: reachable, migrated (${s.applied.length} migrations)`);
  } catch (err) {
    return fail(
      `${database.location}: ${(err as Error).message}`,
      "DOCTOR_DB_UNREACHABLE",
      "Check that the database server runs and this host may reach it (address, port, user, password in databaseUrl).",
    );
  } finally {
    await database.close();
  }
}

async function repositoryStep(location: string, timeoutMs: number): Promise<StepOutcome> {
  let backend: Backend | undefined;
  const unreachable = (err: unknown) =>
    fail(
      `${location}: ${(err as Error).message}`,
      "DOCTOR_REPO_UNREACHABLE",
      (err as { hint?: string }).hint ||
        "Check the repository location in config.json: the directory exists and is readable, or the S3 endpoint, bucket and credentials.",
    );
  try {
    backend = await openBackend(location);
    const cfg = await withTimeout(backend.stat("config"), timeoutMs);
    if (cfg === undefined)
      return fail(
        `${backend.properties.location}: no repository config object`,
        "DOCTOR_REPO_UNREACHABLE",
        "The location is reachable but holds no repository: check the path or bucket/prefix in config.json.",
      );
    const root = backend.properties.localRoot;
    if (root === undefined && !location.startsWith("s3://"))
      return ok(`${backend.properties.location}: reachable`);
    if (root === undefined)
      return ok(`${backend.properties.location}: reachable (S3: free space is the provider's)`);
    const fs = await statfs(root);
    const free = fs.bavail * fs.bsize;
    const total = fs.blocks * fs.bsize;
    const value = `${root}: reachable, ${gib(free)} free of ${gib(total)}`;
    if (total > 0 && free / total < LOW_FREE_SHARE)
      return warn(
        value,
        "DOCTOR_REPO_LOW_SPACE",
        "Less than 10% free: replication stops when the filesystem fills. Add space, or run `lifeboat store gc` after forgetting old PITs.",
      );
    return ok(value);
  } catch (err) {
    return unreachable(err);
  } finally {
    await backend?.close();
  }
}

/**
 * Can the server bind its listen address? When it is taken, whoever holds it
 * is asked for its TLS certificate: this server's own means it runs.
 */
async function listenStep(listen: string, serverCertFile: string, timeoutMs: number): Promise<StepOutcome> {
  const m = /^\[?(.*?)\]?:(\d+)$/.exec(listen);
  if (!m) return fail(listen, "DOCTOR_LISTEN_FAILED", "Write listen in config.json as HOST:PORT.");
  const host = m[1]!;
  const port = Number(m[2]);
  const err = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
    const server = createServer();
    server.once("error", (e: NodeJS.ErrnoException) => resolve(e));
    server.listen({ host, port, exclusive: true }, () => server.close(() => resolve(undefined)));
  });
  if (err === undefined) return ok(`${listen}: free to bind`);
  if (err.code === "EADDRINUSE") {
    const ours = await presentsCertificate(host, port, serverCertFile, timeoutMs);
    if (ours) return ok(`${listen}: in use by this Lifeboat server (it presents D/server.pem)`);
    return fail(
      `${listen}: in use by another program`,
      "DOCTOR_LISTEN_IN_USE",
      `Find it with \`ss -ltnp 'sport = :${port}'\` and stop it, or change listen in config.json.`,
    );
  }
  if (err.code === "EACCES")
    return fail(
      `${listen}: permission denied`,
      "DOCTOR_LISTEN_FAILED",
      "Ports below 1024 need root or CAP_NET_BIND_SERVICE (AmbientCapabilities= in the systemd unit).",
    );
  if (err.code === "EADDRNOTAVAIL")
    return fail(
      `${listen}: not an address of this host`,
      "DOCTOR_LISTEN_FAILED",
      "Use an address this host has (`ip -brief address`), or 0.0.0.0.",
    );
  return fail(
    `${listen}: ${err.code ?? err.message}`,
    "DOCTOR_LISTEN_FAILED",
    "Check listen in config.json.",
  );
}

async function presentsCertificate(
  host: string,
  port: number,
  certFile: string,
  timeoutMs: number,
): Promise<boolean> {
  let want: string;
  try {
    want = fingerprint(new X509Certificate(await readFile(certFile)).raw);
  } catch {
    return false;
  }
  const connectHost = host === "0.0.0.0" || host === "" ? "127.0.0.1" : host === "::" ? "::1" : host;
  return new Promise((resolve) => {
    const socket = tlsConnect({
      host: connectHost,
      port,
      rejectUnauthorized: false,
      ALPNProtocols: ["http/1.1"],
    });
    const timer = setTimeout(() => socket.destroy(), timeoutMs);
    socket.once("secureConnect", () => {
      const raw = socket.getPeerCertificate()?.raw;
      clearTimeout(timer);
      socket.destroy();
      resolve(raw !== undefined && fingerprint(raw) === want);
    });
    socket.once("error", () => {
      clearTimeout(timer);
      resolve(false);
    });
    socket.once("close", () => resolve(false));
  });
}

function fingerprint(der: Buffer): string {
  return createHash("sha256").update(der).digest("hex");
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer in ${ms} ms`)), ms);
    }),
  ]);
}
