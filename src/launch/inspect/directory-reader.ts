import { constants, promises as fs } from "node:fs";
import path from "node:path";
import { LifeboatError } from "../../base/index.js";
import { tooLarge } from "./debugfs-reader.js";
import { type DirEntry, type FsReader, MAX_DIR_ENTRIES, MAX_LINKS, resolveLink } from "./fs-reader.js";

/**
 * An FsReader over a directory of this host that holds a system's root: a
 * read-only mount of an image's filesystem (MountReader), the live system
 * ("/", the agent's boot inventory), a generated tree in tests. Paths are
 * taken inside `root` and symbolic links resolved one component at a time
 * inside it (an absolute target starts from `root`), so a link never leads
 * outside and means what it means on the system the tree holds. Reads only.
 */
export class DirectoryReader implements FsReader {
  constructor(
    protected readonly root: string,
    /** Names the tree in errors ("disk 0 partition 2", "the live system"). */
    protected readonly label: string,
  ) {}

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
      if (st.size > maxBytes) throw tooLarge(this.label, p, st.size, maxBytes);
      const buf = Buffer.alloc(st.size);
      let done = 0;
      while (done < st.size) {
        const { bytesRead } = await fh.read(buf, done, st.size - done, done).catch((err: unknown) => {
          throw new LifeboatError(
            "LAUNCH_FS_UNREADABLE",
            `cannot read ${p} on ${this.label}: ${(err as Error).message}`,
            {
              hint: "check the disk holding it (dmesg)",
              cause: err,
            },
          );
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
