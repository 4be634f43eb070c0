import { LifeboatError } from "../base/index.js";
import { decodePage, entryId, entryLocation, isZeroId } from "./block-map.js";
import { OBJECT_OVERHEAD, ObjectKind } from "./codec.js";
import { Limiter } from "./limiter.js";
import { listHeads } from "./head.js";
import { PREFIX, packName } from "./names.js";
import { packStretches, readPackIndex, stretchRange } from "./pack.js";
import { type Pit, type PitDisk, readPit } from "./pit.js";
import type { Repository } from "./repository.js";
import { CHECK_BYTES, RUNS_PER_WORKER, WorkerPool } from "./worker-pool.js";

export interface Affected {
  pit: string;
  server: string;
  disk: number;
  /** Byte ranges of the disk, [start, end) . */
  ranges: [number, number][];
}

export interface Damage {
  /** A chunk's keyed name (its bytes lie in a pack, named in the message), or a pack, page or PIT object. */
  object: string;
  kind: "chunk" | "pack" | "page" | "pit";
  code: string;
  message: string;
  affects: Affected[];
}

export interface VerifyReport {
  ok: boolean;
  readData: boolean;
  pits: number;
  packs: number;
  pages: number;
  referencedChunks: number;
  unreferencedObjects: number;
  /** Objects in GC's trash (deleted for good by a later `store gc` unless a PIT references them). */
  inTrash: number;
  bytesRead: number;
  /** Reads that failed and then succeeded when tried again: not damage. */
  transientErrors: number;
  damage: Damage[];
}

/** Records damage to an object (once per object), and where it is used. */
type AddDamage = (object: string, kind: Damage["kind"], err: unknown, where?: Occurrence) => void;

interface Occurrence {
  pit: Pit;
  disk: PitDisk;
  start: number; // chunk index
  span: number; // chunks
}

/**
 * Checks what the format promises (docs/format.md): every PIT decodes, every
 * page a PIT references exists and decodes, every chunk lies inside a pack
 * that exists; with `readData`, every referenced chunk decrypts and hashes to
 * its id, and every referenced pack's own index is readable. Damage is
 * reported with the PITs, disks and byte ranges it affects. An object whose
 * read fails once and succeeds when tried again counts as a transient error.
 */
export async function verifyRepository(
  repo: Repository,
  opts: { readData?: boolean; onProgress?: (done: number, total: number) => void } = {},
): Promise<VerifyReport> {
  const report: VerifyReport = {
    ok: true,
    readData: Boolean(opts.readData),
    pits: 0,
    packs: 0,
    pages: 0,
    referencedChunks: 0,
    unreferencedObjects: 0,
    inTrash: 0,
    bytesRead: 0,
    transientErrors: 0,
    damage: [],
  };
  const damaged = new Map<string, Damage>();
  const addDamage: AddDamage = (object, kind, err, where) => {
    let d = damaged.get(object);
    if (!d) {
      const e = err instanceof LifeboatError ? err : new LifeboatError("STORE_IO", String(err));
      d = { object, kind, code: e.code, message: e.message, affects: [] };
      damaged.set(object, d);
    }
    if (where) addRange(d, where);
  };

  const roots = await readRoots(repo, report, addDamage);
  // The objects are listed after the roots (PITs, heads): a writer stores what a root names before the
  // root, so everything a root read above references is in this listing, even while replicators write.
  const sizes = await listObjects(repo, report);
  // Pass 1: walk every tree; check pages fully and chunks structurally.
  const { referenced, referencedNames } = await walkTrees(repo, roots, sizes, report, addDamage);
  report.referencedChunks = referenced.size;
  report.unreferencedObjects = [...sizes.keys()].filter((n) => !referencedNames.has(n)).length;

  // Pass 2: read every referenced chunk, a pack at a time, and every referenced pack's index.
  if (opts.readData) {
    const byPack = new Map<string, ChunkRef[]>();
    for (const ref of referenced.values()) {
      if (damaged.has(ref.pack)) continue;
      const list = byPack.get(ref.pack) ?? [];
      list.push(ref);
      byPack.set(ref.pack, list);
    }
    const progress = opts.onProgress && ((done: number) => opts.onProgress!(done, referenced.size));
    const failedChunks = await readData(
      repo,
      byPack,
      report,
      (pack, err) => addDamage(pack, "pack", err),
      progress,
    );
    // Pass 3: find where the damaged chunks are used.
    if (failedChunks.size > 0) {
      for (const pit of roots) {
        for (const disk of pit.disks) {
          await walkChunks(repo, disk, (index, entry) => {
            const ref = chunkRef(repo, entry);
            const err = failedChunks.get(ref.key);
            if (err !== undefined) {
              addDamage(ref.name, "chunk", located(err, ref), { pit, disk, start: index, span: 1 });
            }
          });
        }
      }
    }
  }
  report.damage = [...damaged.values()];
  report.ok = report.damage.length === 0;
  return report;
}

/** Every PIT, and every replica's head as a root of its own (`head:SERVER`); a PIT that cannot be read is damage. */
async function readRoots(repo: Repository, report: VerifyReport, addDamage: AddDamage): Promise<Pit[]> {
  const pits: Pit[] = [];
  for await (const o of repo.backend.list(PREFIX.pits)) {
    const id = o.name.slice(PREFIX.pits.length);
    try {
      pits.push(await readPit(repo, id));
    } catch (err) {
      const again = await readPit(repo, id).then(
        (p) => p,
        () => undefined,
      );
      if (again) {
        report.transientErrors++;
        pits.push(again);
      } else addDamage(o.name, "pit", err);
    }
  }
  report.pits = pits.length;
  // Replicas' heads are checked like PITs; damage to one is reported against `head:SERVER`.
  const roots: Pit[] = [...pits];
  for (const h of await listHeads(repo)) {
    roots.push({
      format: 1,
      id: `head:${h.server}`,
      server: h.server,
      seq: h.appliedSeq,
      time: new Date(h.timeMs).toISOString(),
      timeMs: h.timeMs,
      consistency: "none",
      disks: h.disks,
      labels: {},
    });
  }
  return roots;
}

/** The size of every pack and page, by name, those in GC's trash included. */
async function listObjects(repo: Repository, report: VerifyReport): Promise<Map<string, number>> {
  const sizes = new Map<string, number>();
  let packs = 0;
  let pages = 0;
  for await (const o of repo.backend.list(PREFIX.packs)) {
    sizes.set(o.name, o.size);
    packs++;
  }
  for await (const o of repo.backend.list(PREFIX.pages)) {
    sizes.set(o.name, o.size);
    pages++;
  }
  // Objects GC moved to the trash are still readable (and put back by the next GC if referenced).
  let inTrash = 0;
  for await (const o of repo.backend.list(PREFIX.trash)) {
    const original = o.name.slice(PREFIX.trash.length);
    if (!sizes.has(original)) sizes.set(original, o.size);
    inTrash++;
  }
  report.packs = packs;
  report.pages = pages;
  report.inTrash = inTrash;
  return sizes;
}

/**
 * Pass 1 of verify: walks every root's trees, reading each page whole and
 * checking that each chunk lies inside a pack of the listing (`sizes`).
 * Returns the chunks referenced, by key (pack@offset), and the names of the
 * packs and pages referenced.
 */
async function walkTrees(
  repo: Repository,
  roots: Pit[],
  sizes: Map<string, number>,
  report: VerifyReport,
  addDamage: AddDamage,
): Promise<{ referenced: Map<string, ChunkRef>; referencedNames: Set<string> }> {
  const referenced = new Map<string, ChunkRef>(); // chunk key (pack@offset) -> where and what
  const referencedNames = new Set<string>(); // packs and pages
  const checkStructure = (name: string, kind: Damage["kind"], where: Occurrence, need = 1): boolean => {
    const size = sizes.get(name);
    const problem =
      size === undefined
        ? new LifeboatError("STORE_OBJECT_MISSING", `object ${name} is missing`)
        : size === 0
          ? new LifeboatError("STORE_OBJECT_EMPTY", `object ${name} is empty (zero bytes)`)
          : size < Math.max(need, OBJECT_OVERHEAD)
            ? new LifeboatError(
                "STORE_OBJECT_TRUNCATED",
                `object ${name} is truncated (${size} bytes, a chunk lies up to byte ${need})`,
              )
            : undefined;
    if (problem) addDamage(name, kind, problem, where);
    return !problem;
  };
  const readPage = async (name: string, id: Buffer): Promise<Buffer> => {
    try {
      return await repo.getPage(id);
    } catch (first) {
      try {
        const again = repo.decodeVerified(name, ObjectKind.page, id, await repo.getObject(name));
        report.transientErrors++;
        return again;
      } catch {
        throw first;
      }
    }
  };
  for (const pit of roots) {
    for (const disk of pit.disks) {
      if (disk.root === null) continue;
      const walk = async (id: Buffer, level: number, start: number): Promise<void> => {
        const span = repo.config.pageFanout ** level;
        const where = {
          pit,
          disk,
          start,
          span: Math.min(span * repo.config.pageFanout, disk.chunkCount - start),
        };
        const name = repo.pageName(id);
        referencedNames.add(name);
        if (!checkStructure(name, "page", where)) return;
        let entries: Buffer[];
        try {
          entries = decodePage(await readPage(name, id), repo.config.pageFanout).entries;
        } catch (err) {
          addDamage(name, "page", err, where);
          return;
        }
        for (let i = 0; i < entries.length; i++) {
          const e = entries[i]!;
          if (isZeroId(e)) continue;
          if (level > 0) {
            await walk(e, level - 1, start + i * span);
            continue;
          }
          const ref = chunkRef(repo, e);
          referenced.set(ref.key, ref);
          referencedNames.add(ref.pack);
          checkStructure(ref.pack, "pack", { pit, disk, start: start + i, span: 1 }, ref.offset + ref.length);
        }
      };
      await walk(Buffer.from(disk.root, "hex"), disk.depth - 1, 0);
    }
  }
  return { referenced, referencedNames };
}

/**
 * Pass 2 of verify: reads every chunk of `byPack` and each pack's own index.
 * Returns the chunks that failed, by key, with their first error; counts the
 * bytes read and the transient errors in `report`. A pack whose index cannot
 * be read goes to `packDamage`.
 */
async function readData(
  repo: Repository,
  byPack: Map<string, ChunkRef[]>,
  report: VerifyReport,
  packDamage: (pack: string, err: unknown) => void,
  onProgress?: (done: number) => void,
): Promise<Map<string, unknown>> {
  const pool = new WorkerPool(repo.keys, repo.config.compression.level);
  const root = repo.backend.properties.localRoot;
  // Packs checked at once: enough to keep every worker's slots (RUNS_PER_WORKER) busy.
  const limiter = new Limiter(RUNS_PER_WORKER * pool.size);
  const failedChunks = new Map<string, unknown>();
  let done = 0;
  // A chunk read and checked alone (the bytes of one object, as a replicator reads it back).
  const alone = async (ref: ChunkRef) => {
    const obj = await repo.getObject(ref.pack, { offset: ref.offset, length: ref.length });
    report.bytesRead += obj.length;
    await pool.decode(ref.name, ref.id, obj);
  };
  // A chunk that failed is read again alone: if it then checks out, the first read was transient.
  const again = async (ref: ChunkRef, first: unknown) => {
    try {
      await alone(ref);
      report.transientErrors++;
    } catch {
      failedChunks.set(ref.key, first);
    }
  };
  // Each stretch is read whole and its chunks checked by one worker, which sends back only what failed;
  // when the stretch cannot be read, each chunk is read alone.
  const checkStretch = async (pack: string, group: ChunkRef[]) => {
    const span = stretchRange(group);
    const chunks = group.map((ref) => ({
      name: ref.name,
      id: new Uint8Array(ref.id),
      offset: ref.offset - span.offset,
      length: ref.length,
    }));
    const failures = await (
      root
        ? pool.check({ root, pack, ...span }, chunks)
        : repo.getObject(pack, span).then((data) => pool.check(data, chunks))
    ).catch(() => undefined);
    let failed: { ref: ChunkRef; err: unknown }[] = [];
    if (!failures) {
      for (const ref of group) await alone(ref).catch((err: unknown) => failed.push({ ref, err }));
    } else {
      report.bytesRead += group.reduce((n, ref) => n + ref.length, 0);
      failed = failures.map((f) => ({
        ref: group[f.index]!,
        err: new LifeboatError(f.code, f.message, { hint: f.hint }),
      }));
    }
    for (const { ref, err } of failed) await again(ref, err);
    done += group.length;
    onProgress?.(done);
  };
  // The total is known before the first read: a terminal shows it at once.
  onProgress?.(0);
  try {
    await Promise.all(
      [...byPack].map(([pack, refs]) =>
        limiter.run(async () => {
          try {
            await readPackIndex(repo, pack);
          } catch (first) {
            await readPackIndex(repo, pack).then(
              () => void report.transientErrors++,
              () => packDamage(pack, first),
            );
          }
          // A worker reads a local pack a few MiB at a time into buffers it keeps; from object
          // storage a stretch is one request, however long (requests are what it charges for).
          for (const group of packStretches(refs))
            for (const part of root ? splitStretch(group, CHECK_BYTES) : [group])
              await checkStretch(pack, part);
        }),
      ),
    );
  } finally {
    await pool.close();
  }
  return failedChunks;
}

/** A stretch of neighbouring chunk objects cut into consecutive parts of at most `bytes` (or one object, where that is larger). */
function splitStretch<T extends { offset: number; length: number }>(group: T[], bytes: number): T[][] {
  const parts: T[][] = [];
  let start = -1;
  for (const it of group) {
    const part = parts.at(-1);
    if (part && it.offset + it.length - start <= bytes) part.push(it);
    else {
      parts.push([it]);
      start = it.offset;
    }
  }
  return parts;
}

interface ChunkRef {
  key: string;
  id: Buffer;
  /** The chunk's keyed name, which its encryption authenticates. */
  name: string;
  pack: string;
  offset: number;
  length: number;
}

function chunkRef(repo: Repository, entry: Buffer): ChunkRef {
  const id = Buffer.from(entryId(entry));
  const loc = entryLocation(entry);
  const pack = packName(loc.pack);
  return {
    key: `${pack}@${loc.offset}`,
    id,
    name: repo.chunkName(id),
    pack,
    offset: loc.offset,
    length: loc.length,
  };
}

/** The error, its message saying where in which pack the chunk lies. */
function located(err: unknown, ref: ChunkRef): LifeboatError {
  const e = err instanceof LifeboatError ? err : new LifeboatError("STORE_IO", String(err));
  return new LifeboatError(
    e.code,
    `${e.message} (bytes ${ref.offset}-${ref.offset + ref.length - 1} of ${ref.pack})`,
    {
      hint: e.hint,
      cause: e,
    },
  );
}

/** Walks a disk's chunks, skipping pages that cannot be read (verify reports those). */
async function walkChunks(
  repo: Repository,
  disk: PitDisk,
  visit: (index: number, entry: Buffer) => void,
): Promise<void> {
  if (disk.root === null) return;
  const fanout = repo.config.pageFanout;
  const rec = async (id: Buffer, level: number, start: number): Promise<void> => {
    let entries: Buffer[];
    try {
      entries = decodePage(await repo.getPage(id), fanout).entries;
    } catch {
      return;
    }
    const span = fanout ** level;
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!;
      if (isZeroId(e)) continue;
      if (level > 0) await rec(e, level - 1, start + i * span);
      else visit(start + i, e);
    }
  };
  await rec(Buffer.from(disk.root, "hex"), disk.depth - 1, 0);
}

function addRange(d: Damage, w: Occurrence): void {
  const cs = w.disk.chunkSize;
  const range: [number, number] = [w.start * cs, Math.min(w.disk.sizeBytes, (w.start + w.span) * cs)];
  let a = d.affects.find((x) => x.pit === w.pit.id && x.disk === w.disk.index);
  if (!a) {
    a = { pit: w.pit.id, server: w.pit.server, disk: w.disk.index, ranges: [] };
    d.affects.push(a);
  }
  const last = a.ranges.at(-1);
  if (last && last[1] === range[0]) last[1] = range[1];
  else a.ranges.push(range);
}
