import { fstatSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { LifeboatError } from "../base/index.js";

/**
 * What the agent-side commands read from files or standard input: the CA
 * certificate and the install token.
 *
 * An install token given to a command: --token-file, else LIFEBOAT_TOKEN,
 * else standard input when `readStdin` says so. Never an argument: argv
 * shows in `ps` and in shell history. Undefined when none was given.
 */
export async function readTokenInput(
  tokenFile: string | undefined,
  readStdin: () => boolean,
): Promise<string | undefined> {
  let token: string | undefined;
  if (tokenFile !== undefined) {
    token = await readFile(tokenFile, "utf8").catch((err: unknown) => {
      throw new LifeboatError("USAGE", `cannot read --token-file ${tokenFile}`, {
        hint: "check the path and its permissions",
        cause: err,
        exitCode: 2,
      });
    });
  } else if (process.env.LIFEBOAT_TOKEN) {
    // Read here, not in environment.ts, so the secret never sits in the frozen environment every command gets.
    token = process.env.LIFEBOAT_TOKEN;
  } else if (readStdin()) {
    const chunks: Buffer[] = [];
    for await (const c of process.stdin) chunks.push(c as Buffer);
    token = Buffer.concat(chunks).toString("utf8");
  }
  token = token?.trim();
  return token ? token : undefined;
}

/** Standard input is a pipe or a file (not a terminal, a socket or /dev/null): reading it cannot block for ever. */
export function stdinIsPipeOrFile(): boolean {
  if (process.stdin.isTTY) return false;
  try {
    const st = fstatSync(0);
    return st.isFIFO() || st.isFile();
  } catch {
    return false;
  }
}

/** The CA certificate given with --ca-file; USAGE (exit 2) when it cannot be read. */
export async function readCaFile(file: string): Promise<string> {
  try {
    return await readFile(file, "utf8");
  } catch (err) {
    throw new LifeboatError(
      "USAGE",
      `cannot read --ca-file ${file}: ${(err as NodeJS.ErrnoException).code ?? ""}`,
      {
        hint: "copy the server's D/ca.pem to this host, or give --ca-fingerprint",
        cause: err,
        exitCode: 2,
      },
    );
  }
}
