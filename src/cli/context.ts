import type { Command } from "commander";
import { LifeboatError, createLogger, type Logger } from "../base/index.js";
import { type Repository, openRepository } from "../store/index.js";
import { type Environment, readEnvironment } from "./environment.js";

/** What every command handler gets: parsed global flags, environment and a logger. */
export interface CliContext {
  json: boolean;
  debug: boolean;
  env: Readonly<Environment>;
  logger: Logger;
}

export function contextOf(cmd: Command): CliContext {
  const g = cmd.optsWithGlobals<{ json?: boolean; debug?: boolean }>();
  const env = readEnvironment();
  return {
    json: Boolean(g.json),
    debug: Boolean(g.debug),
    env,
    logger: createLogger(g.debug ? "debug" : env.logLevel),
  };
}

export function requireOption<T>(value: T | undefined, flag: string): T {
  if (value === undefined || value === "") {
    throw new LifeboatError("USAGE", `missing ${flag}`, { hint: `give ${flag}; see --help`, exitCode: 2 });
  }
  return value;
}

/** Opens --repo with the key from --key-file, LIFEBOAT_KEY_FILE or the default location. */
export function openRepo(ctx: CliContext, opts: { repo?: string; keyFile?: string }): Promise<Repository> {
  const keyFile = opts.keyFile ?? ctx.env.keyFile;
  return openRepository(requireOption(opts.repo, "--repo"), {
    logger: ctx.logger,
    ...(keyFile ? { keyFile } : {}),
  });
}

/** Runs `fn` with an open repository and always closes it. */
export async function withRepo<T>(
  ctx: CliContext,
  opts: { repo?: string; keyFile?: string },
  fn: (repo: Repository) => Promise<T>,
): Promise<T> {
  const repo = await openRepo(ctx, opts);
  try {
    return await fn(repo);
  } finally {
    await repo.close();
  }
}

export function parseIntOption(value: string, flag: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new LifeboatError("USAGE", `${flag} wants a whole number, got ${JSON.stringify(value)}`, {
      exitCode: 2,
    });
  }
  return n;
}

export function parseSize(value: string, flag: string): number {
  const m = /^(\d+)\s*([kmg]i?b?)?$/i.exec(value.trim());
  if (!m)
    throw new LifeboatError("USAGE", `${flag} wants a size such as 1MiB, got ${JSON.stringify(value)}`, {
      exitCode: 2,
    });
  const unit = (m[2] ?? "").toLowerCase()[0];
  const mult = unit === "k" ? 1024 : unit === "m" ? 1024 ** 2 : unit === "g" ? 1024 ** 3 : 1;
  return Number(m[1]) * mult;
}

export function parseDuration(value: string, flag: string): number {
  const m = /^(\d+)(ms|s|m|h|d)?$/.exec(value.trim());
  if (!m) throw new LifeboatError("USAGE", `${flag} wants a duration such as 30s or 10m`, { exitCode: 2 });
  const mult = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] ?? "s"] ?? 1000;
  return Number(m[1]) * mult;
}
