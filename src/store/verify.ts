import { LifeboatError } from "../base/index.js";
import { decodePage, isZeroId } from "./block-map.js";
import { OBJECT_OVERHEAD, ObjectKind } from "./codec.js";
import { Limiter } from "./limiter.js";
import { PREFIX } from "./names.js";
import { type Pit, type PitDisk, readPit } from "./pit.js";
import type { Repository } from "./repository.js";
import { WorkerPool } from "./worker-pool.js";

export interface Affected {
  pit: string;
  server: string;
  disk: number;
  /** Byte ranges of the disk, [start, end) . */
  ranges: [number, number][];
}

export interface Damage {
  object: string;
  kind: "chunk" | "page" | "pit";
  code: string;
  message: string;
  affects: Affected[];
}

export interface VerifyReport {
  ok: boolean;
  readData: boolean;
  pits: number;
  chunks: number;
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

interface Occurrence {
  pit: Pit;
  disk: PitDisk;
  start: number; // chunk index
  span: number; // chunks
}

/**
 * Checks what the format promises (docs/format.md): every PIT decodes, every
 * page and chunk a PIT references exists and is not truncated; with
 * `readData`, every referenced chunk decrypts and hashes to its id. Damage is
 * reported with the PITs, disks and byte ranges it affects. An object whose
 * read fails once and succeeds when tried again counts as a transient error.
 */
export async function verifyRepository(
  repo: Repository,
  opts: { readData?: boolean; onProgress?: (done: number, total: number) => void } = {},
): Promise<VerifyReport> {
  const sizes = new Map<string, number>();
  let chunks = 0;
  let pages = 0;
  for await (const o of repo.backend.list(PREFIX.chunks)) {
    sizes.set(o.name, o.size);
    chunks++;
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
  const report: VerifyReport = {
    ok: true,
    readData: Boolean(opts.readData),
    pits: 0,
    chunks,
    pages,
    referencedChunks: 0,
    unreferencedObjects: 0,
    inTrash,
    bytesRead: 0,
    transientErrors: 0,
    damage: [],
  };
  const damaged = new Map<string, Damage>();
  const addDamage = (object: string, kind: Damage["kind"], err: unknown, where?: Occurrence) => {
    let d = damaged.get(object);
    if (!d) {
      const e = err instanceof LifeboatError ? err : new LifeboatError("STORE_IO", String(err));
      d = { object, kind, code: e.code, message: e.message, affects: [] };
      damaged.set(object, d);
    }
    if (where) addRange(d, where);
  };

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

  // Pass 1: walk every tree; check pages fully and chunks structurally.
  const referenced = new Map<string, Buffer>(); // chunk name -> id
  const referencedPages = new Set<string>();
  const checkStructure = (name: string, kind: Damage["kind"], where: Occurrence): boolean => {
    const size = sizes.get(name);
    const problem =
      size === undefined
        ? new LifeboatError("STORE_OBJECT_MISSING", `object ${name} is missing`)
        : size === 0
          ? new LifeboatError("STORE_OBJECT_EMPTY", `object ${name} is empty (zero bytes)`)
          : size < OBJECT_OVERHEAD
            ? new LifeboatError("STORE_OBJECT_TRUNCATED", `object ${name} is truncated (${size} bytes)`)
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
  for (const pit of pits) {
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
        referencedPages.add(name);
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
          const cname = repo.chunkName(e);
          referenced.set(cname, e);
          checkStructure(cname, "chunk", { pit, disk, start: start + i, span: 1 });
        }
      };
      await walk(Buffer.from(disk.root, "hex"), disk.depth - 1, 0);
    }
  }
  report.referencedChunks = referenced.size;
  report.unreferencedObjects = [...sizes.keys()].filter(
    (n) => !referenced.has(n) && !referencedPages.has(n),
  ).length;

  // Pass 2: read every referenced chunk.
  if (opts.readData) {
    const pool = new WorkerPool(repo.keys, repo.config.compression.level);
    const limiter = new Limiter(8);
    let done = 0;
    const failedChunks = new Map<string, unknown>();
    try {
      await Promise.all(
        [...referenced].map(([name, id]) =>
          limiter.run(async () => {
            if (damaged.has(name)) return;
            const attempt = async () => {
              const data = await repo.getObject(name);
              report.bytesRead += data.length;
              await pool.decode(name, id, data);
            };
            try {
              await attempt();
            } catch (first) {
              try {
                await attempt();
                report.transientErrors++;
              } catch {
                failedChunks.set(name, first);
              }
            }
            opts.onProgress?.(++done, referenced.size);
          }),
        ),
      );
    } finally {
      await pool.close();
    }
    if (failedChunks.size > 0) {
      // Pass 3: find where the damaged chunks are used.
      for (const pit of pits) {
        for (const disk of pit.disks) {
          await walkChunks(repo, disk, (index, name) => {
            const err = failedChunks.get(name);
            if (err !== undefined) addDamage(name, "chunk", err, { pit, disk, start: index, span: 1 });
          });
        }
      }
    }
  }
  report.damage = [...damaged.values()];
  report.ok = report.damage.length === 0;
  return report;
}

/** Walks a disk's chunks, skipping pages that cannot be read (verify reports those). */
async function walkChunks(
  repo: Repository,
  disk: PitDisk,
  visit: (index: number, name: string) => void,
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
      else visit(start + i, repo.chunkName(e));
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
