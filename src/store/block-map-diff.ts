import { type BlockMapRef, ZERO_ENTRY, decodePage, isZeroId } from "./block-map.js";
import type { Repository } from "./repository.js";

/**
 * The leaf entries of chunks `first` to `first + count - 1` (ZERO_ENTRY for
 * zero chunks), reading only the pages that cover them.
 */
export async function readEntries(
  repo: Repository,
  ref: BlockMapRef,
  first: number,
  count: number,
): Promise<Buffer[]> {
  const end = Math.min(first + count, ref.chunkCount);
  if (!Number.isInteger(first) || first < 0 || first > ref.chunkCount)
    throw new RangeError(`chunk index ${first} out of range`);
  const out: Buffer[] = Array.from({ length: Math.max(0, end - first) }, () => ZERO_ENTRY);
  if (ref.root === null || end <= first) return out;
  const fanout = repo.config.pageFanout;
  const rec = async (id: Buffer, level: number, start: number): Promise<void> => {
    const { entries } = decodePage(await repo.getPage(id), fanout);
    const span = fanout ** level;
    for (let i = 0; i < entries.length; i++) {
      const s = start + i * span;
      if (s >= end || s + span <= first) continue;
      const e = entries[i]!;
      if (isZeroId(e)) continue;
      if (level === 0) out[s - first] = Buffer.from(e);
      else await rec(e, level - 1, s);
    }
  };
  await rec(Buffer.from(ref.root, "hex"), ref.depth - 1, 0);
  return out;
}

/**
 * Calls `visit` with every chunk index at or after `from` whose chunk differs
 * between two block maps of one disk (same chunk count), in disk order, with
 * the entry `b` has there. Subtrees whose page ids are equal are skipped
 * unread, so the cost follows what changed, not the disk's size. Returning
 * false from `visit` stops the walk.
 */
export async function diffBlockMaps(
  repo: Repository,
  a: BlockMapRef,
  b: BlockMapRef,
  from: number,
  visit: (index: number, entry: Buffer) => boolean | Promise<boolean>,
): Promise<void> {
  if (a.chunkCount !== b.chunkCount || a.depth !== b.depth)
    throw new RangeError("block maps of different sizes cannot be compared chunk by chunk");
  const fanout = repo.config.pageFanout;
  // Returns false when visit asked to stop.
  const rec = async (
    ida: Buffer | null,
    idb: Buffer | null,
    level: number,
    start: number,
  ): Promise<boolean> => {
    const span = fanout ** level;
    if (start + span * fanout <= from && level > 0) return true;
    const pa = ida ? decodePage(await repo.getPage(ida), fanout).entries : [];
    const pb = idb ? decodePage(await repo.getPage(idb), fanout).entries : [];
    const n = Math.min(fanout, Math.ceil((b.chunkCount - start) / span));
    for (let i = 0; i < n; i++) {
      const s = start + i * span;
      if (s + span <= from) continue;
      const ea = pa[i] ?? null;
      const eb = pb[i] ?? null;
      const za = ea === null || isZeroId(ea);
      const zb = eb === null || isZeroId(eb);
      if (za && zb) continue;
      if (!za && !zb && ea.subarray(0, 32).equals(eb.subarray(0, 32))) continue;
      if (level === 0) {
        if (!(await visit(s, zb ? ZERO_ENTRY : Buffer.from(eb)))) return false;
      } else if (!(await rec(za ? null : ea, zb ? null : eb, level - 1, s))) return false;
    }
    return true;
  };
  const root = (r: BlockMapRef) => (r.root === null ? null : Buffer.from(r.root, "hex"));
  await rec(root(a), root(b), a.depth - 1, 0);
}
