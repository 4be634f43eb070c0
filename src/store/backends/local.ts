import { randomBytes } from "node:crypto";
import { constants, promises as fs } from "node:fs";
import path from "node:path";
import { PAGE } from "../../base/aligned.js";
import { LifeboatError, isRetryable } from "../../base/index.js";
import type { Backend, ObjectInfo, PutOptions } from "../backend.js";
import { syncFileSystem } from "./fs-sync.js";
import { PREFIX } from "../names.js";
import { missing } from "./memory.js";

const TMP_DIR = "tmp";

/** Packs kept open for ranged reads (they never change once stored). */
const OPEN_PACKS = 64;

/** A pack file open for ranged reads: closed once evicted and no read is using it. */
interface OpenPack {
  handle: Promise<fs.FileHandle>;
  readers: number;
  evicted: boolean;
}

/**
 * A repository in a local directory. put() writes a temporary file under
 * tmp/ and renames it into place, so a reader or a crashed process never
 * sees part of an object. Durability is batched: flush() syncs the whole
 * filesystem once (syncfs, through `sync --file-system`: fs-sync.ts) instead of two
 * fsyncs per object, which on these disks cost about a millisecond each. An
 * object renamed into place but not yet flushed may be lost or empty after a
 * power failure; that is harmless because nothing refers to an object before
 * a flush (callers flush before writing a PIT). With `syncEachPut` every put
 * fsyncs the file and its directory before it resolves.
 * Leftover temporary files are never listed and `store gc` removes them.
 */
export class LocalBackend implements Backend {
  readonly properties;
  /** Directories made (or found) by ensureDir, each once: a put waits until its directory is durable. */
  private readonly knownDirs = new Map<string, Promise<void>>();
  /** Open pack files by path, least recently read first. */
  private readonly openPacks = new Map<string, OpenPack>();

  constructor(
    private readonly root: string,
    private readonly opts: { syncEachPut?: boolean } = {},
  ) {
    this.properties = { atomicReplace: true, location: path.resolve(root), localRoot: path.resolve(root) };
  }

  async flush(): Promise<void> {
    try {
      await syncFileSystem(this.root);
    } catch (err) {
      throw wrap(err, "flushing", this.properties.location);
    }
  }

  private file(name: string): string {
    if (name.includes("..") || name.startsWith("/") || name.includes("\\")) {
      throw new LifeboatError("STORE_BAD_NAME", `refusing object name ${JSON.stringify(name)}`);
    }
    return path.join(this.root, name);
  }

  /**
   * Creates `dir` (and its parents) if missing. A directory it creates is
   * made durable at once: its parent is synced, so that an object renamed
   * into it and synced (a durable put) is not lost with the directory's own
   * entry after a crash. This happens once per directory, so it costs little.
   */
  private ensureDir(dir: string): Promise<void> {
    let made = this.knownDirs.get(dir);
    if (!made) {
      made = (async () => {
        const mkdir = () =>
          fs.mkdir(dir).then(
            () => true,
            (err: NodeJS.ErrnoException) => {
              if (err.code === "EEXIST") return false;
              throw err;
            },
          );
        let created: boolean;
        try {
          created = await mkdir();
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
          await this.ensureDir(path.dirname(dir)); // the parent first, durable before its child
          created = await mkdir();
        }
        if (created) await syncDir(path.dirname(dir));
      })();
      this.knownDirs.set(dir, made);
      made.catch(() => this.knownDirs.delete(dir)); // tried again by the next put
    }
    return made;
  }

  /** A fresh temporary name under tmp/ (its directory and the target's exist afterwards). */
  private async temporaryFor(name: string): Promise<{ tmp: string; target: string }> {
    const target = this.file(name);
    const tmpDir = path.join(this.root, TMP_DIR);
    await this.ensureDir(tmpDir);
    await this.ensureDir(path.dirname(target));
    return { tmp: path.join(tmpDir, `${randomBytes(8).toString("hex")}.tmp`), target };
  }

  async put(name: string, data: Uint8Array, opts: PutOptions = {}): Promise<void> {
    const sync = opts.durable === true || this.opts.syncEachPut === true;
    let tmp: string | undefined;
    try {
      const t = await this.temporaryFor(name);
      tmp = t.tmp;
      await writeNew(tmp, data, sync);
      await fs.rename(tmp, t.target);
      if (sync) await syncDir(path.dirname(t.target));
    } catch (err) {
      if (tmp) await fs.rm(tmp, { force: true }).catch(() => undefined);
      throw wrap(err, `writing ${name}`, this.properties.location);
    }
  }

  async putIfAbsent(name: string, data: Uint8Array): Promise<boolean> {
    let tmp: string | undefined;
    try {
      const t = await this.temporaryFor(name);
      tmp = t.tmp;
      await writeNew(tmp, data, false);
      // link(2) fails when the target exists: the whole object appears at once, or not at all.
      await fs.link(tmp, t.target);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
      throw wrap(err, `creating ${name}`, this.properties.location);
    } finally {
      if (tmp) await fs.rm(tmp, { force: true }).catch(() => undefined);
    }
  }

  async get(name: string, range?: { offset: number; length: number }): Promise<Buffer> {
    const file = this.file(name);
    try {
      if (!range) return await fs.readFile(file);
      if (name.startsWith(PREFIX.packs)) return await this.readPack(file, range);
      const fh = await fs.open(file, "r");
      try {
        const buf = Buffer.alloc(range.length);
        const { bytesRead } = await fh.read(buf, 0, range.length, range.offset);
        return buf.subarray(0, bytesRead);
      } finally {
        await fh.close();
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") throw missing(name, this.properties.location);
      throw wrap(err, `reading ${name}`, this.properties.location);
    }
  }

  /**
   * A range of a pack through a file kept open: reading chunks one by one
   * (a replica patching scattered blocks) would otherwise open and close a
   * file per chunk. A pack is never rewritten under its name, so an open
   * file always holds what the name does (or did, until deleted).
   */
  private async readPack(file: string, range: { offset: number; length: number }): Promise<Buffer> {
    let open = this.openPacks.get(file);
    if (open)
      this.openPacks.delete(file); // re-inserted last: recently read
    else {
      open = { handle: fs.open(file, "r"), readers: 0, evicted: false };
      open.handle.catch(() => undefined); // awaited below
    }
    this.openPacks.set(file, open);
    for (const [f, old] of this.openPacks) {
      if (this.openPacks.size <= OPEN_PACKS) break;
      this.openPacks.delete(f);
      old.evicted = true;
      if (old.readers === 0) closeQuietly(old.handle);
    }
    open.readers++;
    try {
      const fh = await open.handle;
      const buf = Buffer.alloc(range.length);
      const { bytesRead } = await fh.read(buf, 0, range.length, range.offset);
      return buf.subarray(0, bytesRead);
    } catch (err) {
      if (this.openPacks.get(file) === open) this.openPacks.delete(file); // opened again next time
      open.evicted = true;
      throw err;
    } finally {
      open.readers--;
      if (open.evicted && open.readers === 0) closeQuietly(open.handle);
    }
  }

  async stat(name: string): Promise<ObjectInfo | undefined> {
    try {
      const st = await fs.stat(this.file(name));
      return { name, size: st.size, mtimeMs: st.mtimeMs };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw wrap(err, `examining ${name}`, this.properties.location);
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const slash = prefix.lastIndexOf("/");
    const base = slash < 0 ? "" : prefix.slice(0, slash);
    if (base === TMP_DIR || base.startsWith(`${TMP_DIR}/`)) return; // temporaries are never listed
    yield* this.walk(base, prefix);
  }

  private async *walk(rel: string, prefix: string): AsyncIterable<ObjectInfo> {
    let entries;
    try {
      entries = await fs.readdir(path.join(this.root, rel), { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
      throw wrap(err, `listing ${rel || "/"}`, this.properties.location);
    }
    for (const e of entries) {
      const name = rel ? `${rel}/${e.name}` : e.name;
      if (name === TMP_DIR) continue;
      if (e.isDirectory()) {
        if (prefix.startsWith(`${name}/`) || name.startsWith(prefix) || prefix === "")
          yield* this.walk(name, prefix);
      } else if (e.isFile() && name.startsWith(prefix)) {
        const info = await this.stat(name);
        if (info) yield info;
      }
    }
  }

  async delete(name: string): Promise<void> {
    const open = this.openPacks.get(this.file(name));
    if (open) {
      this.openPacks.delete(this.file(name));
      open.evicted = true;
      if (open.readers === 0) closeQuietly(open.handle);
    }
    try {
      await fs.rm(this.file(name), { force: true });
    } catch (err) {
      throw wrap(err, `deleting ${name}`, this.properties.location);
    }
  }

  /** Removes temporary files of interrupted puts older than `olderThanMs` (epoch ms). */
  async sweepTemporaries(olderThanMs: number): Promise<number> {
    const dir = path.join(this.root, TMP_DIR);
    let removed = 0;
    let names: string[];
    try {
      names = await fs.readdir(dir);
    } catch {
      return 0;
    }
    for (const n of names) {
      const st = await fs.stat(path.join(dir, n)).catch(() => undefined);
      if (st && st.mtimeMs < olderThanMs) {
        await fs.rm(path.join(dir, n), { force: true });
        removed++;
      }
    }
    return removed;
  }

  close(): Promise<void> {
    for (const open of this.openPacks.values()) {
      open.evicted = true;
      if (open.readers === 0) closeQuietly(open.handle);
    }
    this.openPacks.clear();
    return Promise.resolve();
  }
}

/** Closes a file once its open settles; a file that failed to open has nothing to close. */
function closeQuietly(handle: Promise<fs.FileHandle>): void {
  handle.then(
    (fh) => fh.close().catch(() => undefined),
    () => undefined,
  );
}

async function syncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

function wrap(err: unknown, what: string, location: string): LifeboatError {
  if (err instanceof LifeboatError) return err;
  const code = (err as NodeJS.ErrnoException).code ?? "";
  if (code === "ENOSPC") {
    return new LifeboatError("STORE_NO_SPACE", `no space left ${what} in ${location}`, {
      hint: "free space on the repository's filesystem or run `lifeboat store gc`",
      cause: err,
    });
  }
  if (code === "EACCES" || code === "EPERM" || code === "EROFS") {
    return new LifeboatError("STORE_ACCESS_DENIED", `permission denied ${what} in ${location}`, {
      hint: "check the repository directory's owner and mode",
      cause: err,
    });
  }
  return new LifeboatError("STORE_IO", `I/O error ${what} in ${location}: ${(err as Error).message}`, {
    hint: "check the repository's disk and filesystem",
    cause: err,
    retryable: isRetryable(err),
  });
}

/**
 * Writes `data` from byte `from` on, at the same offsets in the file, with as
 * few write(2) calls as the kernel allows.
 * FileHandle.writeFile writes in 512 KiB pieces, one trip through libuv's
 * pool and the event loop each: a 16 MiB pack took 32, and on a busy event
 * loop (a replicator applying a stream) each waited its turn, which made a
 * checkpoint's pack writes take hundreds of milliseconds.
 */
async function writeAll(fh: fs.FileHandle, data: Uint8Array, from = 0): Promise<void> {
  for (let at = from; at < data.length;) {
    const { bytesWritten } = await fh.write(data, at, data.length - at, at);
    if (bytesWritten <= 0) throw new Error(`write returned ${bytesWritten}`);
    at += bytesWritten;
  }
}

/** Objects at least this large are written bypassing the page cache where they can be (writeDirect). */
const DIRECT_MIN_BYTES = 1 << 20;

/**
 * Writes the whole pages at the start of `data` to `file` with O_DIRECT and
 * returns how many bytes that was, or 0 when the filesystem refuses O_DIRECT
 * (tmpfs) or `data` does not start at an aligned address (only buffers from
 * alignedBuffer, such as the pack writer's, do). A pack written through the
 * page cache costs a copy into pages the kernel must first find and zero,
 * and leaves hundreds of megabytes of cache behind that nobody reads soon;
 * written directly, the device reads it from the pack's own buffer.
 */
async function writeDirect(file: string, data: Uint8Array): Promise<number> {
  const length = data.length - (data.length % PAGE);
  let dh: fs.FileHandle;
  try {
    dh = await fs.open(file, constants.O_WRONLY | constants.O_DIRECT);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EINVAL") return 0;
    throw err;
  }
  try {
    const { bytesWritten } = await dh.write(data, 0, length, 0);
    // A short direct write (a full disk) ends on a block boundary: the rest goes through the cache.
    return bytesWritten;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EINVAL") return 0; // nothing was written
    throw err;
  } finally {
    await dh.close();
  }
}

/** Creates `file` (it must not exist) holding `data`, fsynced if `sync`. */
async function writeNew(file: string, data: Uint8Array, sync: boolean): Promise<void> {
  const fh = await fs.open(file, "wx", 0o640);
  try {
    const direct = data.length >= DIRECT_MIN_BYTES ? await writeDirect(file, data) : 0;
    await writeAll(fh, data, direct);
    if (sync) await fh.sync();
  } finally {
    await fh.close();
  }
}
