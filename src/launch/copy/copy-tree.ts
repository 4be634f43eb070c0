import { randomBytes } from "node:crypto";
import { type Stats, constants, promises as fs } from "node:fs";
import path from "node:path";
import { runTool } from "./run-tool.js";

const MAX_LINKS = 16;

/** Joins a link target to the directory holding the link, inside the copy (".." stops at its root). */
function insidePath(linkPath: string, target: string): string[] {
  const base = target.startsWith("/") ? [] : linkPath.split("/").filter(Boolean).slice(0, -1);
  const out: string[] = [];
  for (const p of [...base, ...target.split("/")]) {
    if (p === "" || p === ".") continue;
    if (p === "..") out.pop();
    else out.push(p);
  }
  return out;
}

/**
 * The installed system of a launched copy, mounted at `root` on this host.
 * Paths are the copy's own ("/etc/hostname"); symbolic links are followed
 * inside the copy (an absolute target starts at the copy's root), never out
 * of it: a link in the image must not make the launch host read or write its
 * own files.
 */
export class CopyTree {
  constructor(readonly root: string) {}

  /**
   * The host path of `p`, following links inside the copy; null when a
   * component is missing or there are too many links. With `followLast`
   * false a link in the last component is the answer itself.
   */
  async resolve(p: string, followLast = true): Promise<string | null> {
    let todo = insidePath("/", p);
    let done: string[] = [];
    let hops = 0;
    while (todo.length > 0) {
      const name = todo.shift()!;
      const here = path.join(this.root, ...done, name);
      const st = await fs.lstat(here).catch(() => null);
      if (!st) return null;
      if (st.isSymbolicLink() && (followLast || todo.length > 0)) {
        if (++hops > MAX_LINKS) return null;
        const target = await fs.readlink(here);
        todo = [...insidePath(`/${[...done, name].join("/")}`, target), ...todo];
        done = [];
        continue;
      }
      done.push(name);
    }
    return path.join(this.root, ...done);
  }

  async stat(p: string): Promise<Stats | null> {
    const real = await this.resolve(p);
    return real === null ? null : fs.lstat(real).catch(() => null);
  }

  async isDir(p: string): Promise<boolean> {
    return (await this.stat(p))?.isDirectory() ?? false;
  }

  /** Names in a directory of the copy, sorted; null when it is not one. */
  async list(p: string): Promise<string[] | null> {
    const real = await this.resolve(p);
    if (real === null) return null;
    const names = await fs.readdir(real).catch(() => null);
    return names === null ? null : names.sort();
  }

  /** A regular file's text (links followed inside the copy); null when absent, not a file, or bigger than `max`. */
  async readText(p: string, max = 1 << 20): Promise<string | null> {
    const real = await this.resolve(p);
    if (real === null) return null;
    const fh = await fs
      .open(real, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
      .catch(() => null);
    if (!fh) return null;
    try {
      const st = await fh.stat();
      if (!st.isFile() || st.size > max) return null;
      return await fh.readFile("utf8");
    } finally {
      await fh.close();
    }
  }

  /**
   * Replaces a file of the copy atomically: a temporary file beside it with
   * the old one's mode, owner and extended attributes (an SELinux label
   * among them: a file without one would be unreadable to the copy's
   * services), fsync, rename, fsync of the directory. A file that does not
   * exist is created with `mode` (default 0644), owned by root.
   */
  async writeText(p: string, text: string, mode = 0o644): Promise<void> {
    const existing = await this.resolve(p);
    const st = existing === null ? null : await fs.lstat(existing);
    let file: string;
    if (existing !== null && st?.isFile()) file = existing;
    else if (existing !== null) throw new Error(`${p} in the copy is not a regular file`);
    else {
      const parts = insidePath("/", p);
      const dir = await this.resolve(`/${parts.slice(0, -1).join("/")}`);
      if (dir === null) throw new Error(`the directory of ${p} does not exist in the copy`);
      file = path.join(dir, parts[parts.length - 1]!);
    }
    const tmp = path.join(
      path.dirname(file),
      `.${path.basename(file)}.lifeboat-${randomBytes(4).toString("hex")}`,
    );
    try {
      if (st) {
        // cp copies the xattrs (security.selinux included) that Node cannot.
        const cp = await runTool("cp", ["--attributes-only", "--preserve=mode,ownership,xattr", file, tmp], {
          timeoutMs: 30_000,
        });
        if (cp.code !== 0) await fs.rm(tmp, { force: true });
      }
      const fh = await fs.open(
        tmp,
        constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW,
        st?.mode ?? mode,
      );
      try {
        await fh.truncate(0);
        await fh.writeFile(text);
        await fh.chown(st?.uid ?? 0, st?.gid ?? 0);
        await fh.chmod((st?.mode ?? mode) & 0o7777);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fs.rename(tmp, file);
    } catch (err) {
      await fs.rm(tmp, { force: true }).catch(() => undefined);
      throw err;
    }
    const dh = await fs.open(path.dirname(file), "r");
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
  }

  /**
   * Removes a file or link of the copy (a link itself, not its target); false
   * when it was not there. With `overwrite` a regular file's bytes are first
   * overwritten with zeros in place and synced, so a secret does not stay
   * readable in the filesystem's free blocks (ext4 and xfs overwrite in place).
   */
  async remove(p: string, opts: { overwrite?: boolean } = {}): Promise<boolean> {
    const real = await this.resolve(p, false);
    if (real === null) return false;
    const st = await fs.lstat(real);
    if (st.isDirectory()) throw new Error(`${p} in the copy is a directory`);
    if (opts.overwrite && st.isFile() && st.size > 0) {
      const fh = await fs.open(real, "r+");
      try {
        await fh.write(Buffer.alloc(st.size), 0, st.size, 0);
        await fh.sync();
      } finally {
        await fh.close();
      }
    }
    await fs.unlink(real);
    return true;
  }
}
