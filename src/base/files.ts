import { promises as fs } from "node:fs";
import path from "node:path";

export interface WriteAtomicOptions {
  /** File mode of the new file (default 0o600: most of what Lifeboat writes is private). */
  mode?: number;
  /** fsync the file and its directory, so the new content survives a crash (default true). */
  durable?: boolean;
}

/**
 * Replaces `file` with `data` so that readers see the old content or the new,
 * never a mix: a temporary file beside it, fsync, rename, fsync of the
 * directory. On failure the temporary file is removed and the old content
 * stays.
 */
export async function writeFileAtomic(
  file: string,
  data: string | Uint8Array,
  opts: WriteAtomicOptions = {},
): Promise<void> {
  const durable = opts.durable ?? true;
  const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  try {
    const fh = await fs.open(tmp, "wx", opts.mode ?? 0o600);
    try {
      await fh.writeFile(data);
      if (durable) await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, file);
  } catch (err) {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
  if (durable) {
    const dir = await fs.open(path.dirname(file), "r");
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }
}
