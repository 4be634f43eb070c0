import { type ChildProcess, spawn } from "node:child_process";
import path from "node:path";

export const BIN = path.resolve(import.meta.dirname, "../../../bin/lifeboat.js");

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The test process's environment without its LIFEBOAT_* variables (and HOME when `home` is given), plus `extra`. */
function cleanEnv(extra: Record<string, string> = {}, home?: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...(home !== undefined ? { HOME: home } : {}), ...extra };
  for (const [k, v] of Object.entries(process.env))
    if (!k.startsWith("LIFEBOAT_") && !(home !== undefined && k === "HOME")) env[k] = v;
  return env;
}

function run(args: string[], env: NodeJS.ProcessEnv, cwd: string | undefined, stdin: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { env, ...(cwd ? { cwd } : {}) });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(stdin);
  });
}

/**
 * Runs `lifeboat ARGS` as a child process with HOME (and the working
 * directory) set to `home`, and without any LIFEBOAT_* variable of the test
 * process except those in `extraEnv`.
 */
export function runLifeboat(
  args: string[],
  home: string,
  extraEnv: Record<string, string> = {},
): Promise<Run> {
  return run(args, cleanEnv(extraEnv, home), home, "");
}

/** `lifeboat ARGS` to completion, without the test's LIFEBOAT_* variables; `stdin` is piped and closed. */
export function lifeboat(
  args: string[],
  opts: { stdin?: string; env?: Record<string, string> } = {},
): Promise<Run> {
  return run(args, cleanEnv(opts.env), undefined, opts.stdin ?? "");
}

/** `lifeboat ARGS` left running (a service); what it prints is collected in `log()`. */
export function lifeboatService(args: string[]): {
  child: ChildProcess;
  log(): string;
  exited: Promise<number | null>;
} {
  const child = spawn(process.execPath, [BIN, ...args], {
    env: cleanEnv(),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  child.stdout.on("data", (d: Buffer) => (log += d.toString()));
  child.stderr.on("data", (d: Buffer) => (log += d.toString()));
  const exited = new Promise<number | null>((r) => child.once("close", (code) => r(code)));
  return { child, log: () => log, exited };
}
