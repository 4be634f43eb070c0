import { stat } from "node:fs/promises";
import { LifeboatError } from "../base/index.js";

/**
 * Refuses a secret file (a private key, the admin API key, an install token)
 * that is missing, not a regular file, or open to anyone but its owner: with
 * any group or other permission bit set it throws FILE_MODE_INSECURE, naming
 * the file and the `chmod 600` that fixes it. Servers call this before they
 * start; they never loosen or tighten modes themselves.
 *
 * `what` says what the file is for the message ("CA private key").
 */
export async function assertPrivateFile(path: string, what: string): Promise<void> {
  let st;
  try {
    st = await stat(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") {
      throw new LifeboatError("FILE_MISSING", `${what} ${path} does not exist`, {
        hint: `Check the path; if the file was lost, restore it from its backup or create it again.`,
        cause: err,
      });
    }
    throw new LifeboatError("FILE_UNREADABLE", `cannot look at ${what} ${path}: ${(err as Error).message}`, {
      hint: "Run as the user that owns the file (the one the service runs as), and check the directories' permissions.",
      cause: err,
    });
  }
  if (!st.isFile()) {
    throw new LifeboatError("FILE_MISSING", `${what} ${path} is not a regular file`, {
      hint: "Point at the file itself, not a directory or device.",
    });
  }
  if ((st.mode & 0o077) !== 0) {
    const mode = (st.mode & 0o777).toString(8).padStart(4, "0");
    throw new LifeboatError(
      "FILE_MODE_INSECURE",
      `${what} ${path} has mode ${mode}: group or others may access it`,
      {
        hint: `chmod 600 ${shellQuote(path)}  (and consider whether someone may have copied it meanwhile)`,
      },
    );
  }
}

function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./@%+=:,-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}
