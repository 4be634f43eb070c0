/**
 * A chunk worker's reads of pack files (restores, checks, chunks read back
 * for patches) and the page-aligned buffers it reuses for them. Module state
 * is per thread: each worker has its own cache of open packs.
 */
import fs from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { alignedBuffer } from "../base/aligned.js";
import { keepSpare, takeSpare } from "../base/spare.js";
import { LifeboatError } from "../base/index.js";

const openFile = promisify(fs.open);
const read = promisify(fs.read);
const closeFile = promisify(fs.close);

/**
 * Buffers kept for reuse: fresh memory costs a page fault per 4 KiB, every
 * time (about 15 ms per 4 MiB on these machines). Sizes are rounded up to a
 * multiple of `step`, so that one buffer serves many runs.
 */
export class BufferPool {
  private readonly spare: Buffer[] = [];

  constructor(
    private readonly keep: number,
    private readonly step = 4 << 20,
  ) {}

  /** A buffer of at least `size` bytes; a new one has at least `typical`, so that it serves the sizes that follow. */
  take(size: number, typical = 0): Buffer {
    return (
      takeSpare(this.spare, size) ??
      alignedBuffer(Math.max(1, Math.ceil(Math.max(size, typical) / this.step)) * this.step)
    );
  }

  /** Keeps `b` for a later take (the larger ones, when too many wait). */
  give(b: Buffer): void {
    keepSpare(this.spare, b, this.keep);
  }
}

/** A pack of a local repository, or its copy in the trash (see gc.ts). */
async function openPack(root: string, name: string): Promise<number> {
  try {
    return await openFile(path.join(root, name), "r");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT")
      throw new LifeboatError("STORE_IO", `reading ${name}: ${String(err)}`);
  }
  try {
    return await openFile(path.join(root, "trash", name), "r");
  } catch {
    throw new LifeboatError("STORE_OBJECT_MISSING", `object ${name} is missing from ${root}`, {
      hint: "run `lifeboat store verify` to see which PITs are affected",
    });
  }
}

/** Reads up to `length` bytes of a pack at `offset` into `into`; fewer only at the pack's end. */
export async function readPack(root: string, name: string, offset: number, into: Buffer): Promise<Buffer> {
  return withPack(
    path.join(root, name),
    () => openPack(root, name),
    (fd) =>
      readAt(fd, into, offset).catch((err: unknown) => {
        throw new LifeboatError("STORE_IO", `reading ${name}: ${String(err)}`);
      }),
  );
}

/** Reads up to `into.length` bytes at `offset`; fewer only at the file's end (a truncated pack's chunks then fail to decode). */
async function readAt(fd: number, into: Buffer, offset: number): Promise<Buffer> {
  let got = 0;
  while (got < into.length) {
    const { bytesRead } = await read(fd, into, got, into.length - got, offset + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return into.subarray(0, got);
}

/**
 * Pack files kept open, most recently used last, for restored runs and for
 * single chunks read back: at most OPEN_PACKS, and none once no read has
 * been in flight for IDLE_CLOSE_MS, so that a pack GC deletes does not keep
 * its disk space for long. Packs never change once stored, so a descriptor
 * stays good; one to a pack that GC has moved since reads the same bytes.
 */
interface OpenPack {
  fd: Promise<number>;
  /** Reads in flight on it: an evicted pack is closed when the last one ends. */
  users: number;
  evicted: boolean;
}
const openPacks = new Map<string, OpenPack>();
const OPEN_PACKS = 32;
const IDLE_CLOSE_MS = 2000;
let readsInFlight = 0;
let idleTimer: NodeJS.Timeout | undefined;

function release(p: OpenPack): void {
  if (--p.users === 0 && p.evicted) p.fd.then((fd) => closeFile(fd)).catch(() => undefined);
}

/** Takes a pack out of use: it closes now, or when its last read ends. */
function evict(p: OpenPack): void {
  p.evicted = true;
  p.users++;
  release(p);
}

/** Evicts every open pack (each closes once its reads are done). */
export function closeOpenPacks(): void {
  for (const p of openPacks.values()) evict(p);
  openPacks.clear();
}

/** Runs `use` with the pack at `file` open (opened with `open` unless it is open already). */
async function withPack<T>(
  file: string,
  open: () => Promise<number>,
  use: (fd: number) => Promise<T>,
): Promise<T> {
  clearTimeout(idleTimer);
  readsInFlight++;
  let p = openPacks.get(file);
  if (p) openPacks.delete(file);
  else {
    p = { fd: open(), users: 0, evicted: false };
    const opened = p;
    p.fd.catch(() => {
      opened.evicted = true;
      if (openPacks.get(file) === opened) openPacks.delete(file);
    });
    for (const [name, old] of openPacks) {
      if (openPacks.size < OPEN_PACKS) break;
      openPacks.delete(name);
      evict(old);
    }
  }
  openPacks.set(file, p);
  p.users++;
  try {
    return await use(await p.fd);
  } finally {
    release(p);
    if (--readsInFlight === 0) idleTimer = setTimeout(closeOpenPacks, IDLE_CLOSE_MS).unref();
  }
}

/**
 * `length` bytes of a file at `offset` (a chunk object in a pack), into
 * `into` (at least that long) when given; a short read is damage, reported
 * as such by the decode.
 */
export function readRange(
  file: { path: string; offset: number; length: number },
  into?: Buffer,
): Promise<Buffer> {
  return withPack(
    file.path,
    () => openFile(file.path, "r"),
    (fd) => readAt(fd, into?.subarray(0, file.length) ?? Buffer.allocUnsafeSlow(file.length), file.offset),
  );
}
