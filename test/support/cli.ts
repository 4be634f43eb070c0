import { spawn } from "node:child_process";
import path from "node:path";

const BIN = path.resolve(import.meta.dirname, "../../../bin/lifeboat.js");

/**
 * Runs `lifeboat ARGS` as a child process with HOME (and the working
 * directory) set to `home`, and without any LIFEBOAT_* variable of the test
 * process except those in `extraEnv`.
 */
export function runLifeboat(
  args: string[],
  home: string,
  extraEnv: Record<string, string> = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const env: NodeJS.ProcessEnv = { HOME: home, ...extraEnv };
  for (const [k, v] of Object.entries(process.env))
    if (!k.startsWith("LIFEBOAT_") && k !== "HOME") env[k] = v;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: home, env });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, stdout, stderr }));
  });
}
