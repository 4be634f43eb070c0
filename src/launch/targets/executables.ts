/**
 * Where the targets find their programs (qemu-system-x86_64, qemu-img) and
 * which PATH their children get: the service's own PATH, or the usual system
 * directories when it has none. Children get this PATH and nothing else of
 * the service's environment.
 */
import { constants, promises as fs } from "node:fs";
import path from "node:path";

const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** The PATH passed to targets' children (the service's own; reading it is the point). */
export function childPath(): string {
  return process.env.PATH || DEFAULT_PATH;
}

/** The full path of an executable `name` found on the children's PATH, or null. */
export async function findExecutable(name: string): Promise<string | null> {
  for (const dir of childPath().split(":")) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    try {
      await fs.access(candidate, constants.X_OK);
      if ((await fs.stat(candidate)).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return null;
}
