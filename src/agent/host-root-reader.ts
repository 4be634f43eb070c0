import { constants, promises as fs } from "node:fs";
import path from "node:path";
import { LifeboatError } from "../base/index.js";
import {
  type DirEntry,
  type FsReader,
  MAX_DIR_ENTRIES,
  MAX_LINKS,
  resolveLink,
} from "../launch/inspect/index.js";

/**
 * inspect's FsReader over a directory of this host: "/" for the live system,
 * a generated tree in tests. Paths are taken inside `root`, and symbolic
 * links are resolved one component at a time inside it (an absolute target
 * starts from `root`), as inspect reads a disk image, so a tree's links mean
 * what they mean on the system it holds. Reads only.
 */
export class HostRootReader implements FsReader {
  constructor(private readonly root: string) {}

  async readFile(p: string, maxBytes: number): Promise<Buffer | null> {
    const real = await this.resolve(p);
    if (real === null) return null;
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(real, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    } catch {
      return null;
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) return null;
      if (st.size > maxBytes)
        throw new LifeboatError(
          "LAUNCH_FILE_TOO_LARGE",
          `${p} is ${st.size} bytes, more than the ${maxBytes} bytes the boot inventory reads`,
          { hint: "a file this large is unexpected here; check it" },
        );
      const buf = Buffer.alloc(st.size);
      let done = 0;
      while (done < st.size) {
        const { bytesRead } = await fh.read(buf, done, st.size - done, done).catch((err: unknown) => {
          throw new LifeboatError("LAUNCH_FS_UNREADABLE", `cannot read ${p}: ${(err as Error).message}`, {
            hint: "check the disk holding it (dmesg)",
            cause: err,
          });
        });
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return buf.subarray(0, done);
    } finally {
      await fh.close();
    }
  }

  async list(p: string): Promise<DirEntry[] | null> {
    const real = await this.resolve(p);
    if (real === null) return null;
    let names: string[];
    try {
      names = (await fs.readdir(real)).slice(0, MAX_DIR_ENTRIES);
    } catch {
      return null;
    }
    const out: DirEntry[] = [];
    for (const name of names) {
      const st = await fs.lstat(path.join(real, name)).catch(() => null);
      if (!st) continue;
      const kind = st.isFile()
        ? "file"
        : st.isDirectory()
          ? "dir"
          : st.isSymbolicLink()
            ? "symlink"
            : "other";
      out.push({ name, kind, size: st.size });
    }
    return out;
  }

  async close(): Promise<void> {}

  /** The host path of `p` inside the root, following links only within it; null when absent. */
  private async resolve(p: string): Promise<string | null> {
    let todo = resolveLink("/", p).split("/").filter(Boolean);
    let done: string[] = [];
    let hops = 0;
    while (todo.length > 0) {
      const name = todo.shift()!;
      const here = path.join(this.root, ...done, name);
      const st = await fs.lstat(here).catch(() => null);
      if (!st) return null;
      if (st.isSymbolicLink()) {
        if (++hops > MAX_LINKS) return null;
        const target = await fs.readlink(here).catch(() => null);
        if (target === null) return null;
        const joined = resolveLink(`/${[...done, name].join("/")}`, target);
        todo = [...joined.split("/").filter(Boolean), ...todo];
        done = [];
        continue;
      }
      done.push(name);
    }
    return path.join(this.root, ...done);
  }
}
