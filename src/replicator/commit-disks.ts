/**
 * The block-map part of the applier's checkpoint (applier.ts): the entries
 * written to each disk since the last checkpoint go into the disk's block
 * map, and the packs they lie in are stored together with the maps' new
 * pages. The head that names the new maps is the caller's to write.
 */
import { settleAll } from "../base/index.js";
import {
  type BlockMapRef,
  type ChunkIngest,
  type PitDisk,
  type Repository,
  updateBlockMap,
} from "../store/index.js";
import type { DiskState } from "./open-replica.js";

/**
 * Puts each disk's `pending` entries into its block map (the caller has
 * waited for every write issued before to take effect) and returns the
 * disks as a head lists them, in the order of their indexes.
 */
export async function commitDisks(
  repo: Repository,
  ingest: ChunkIngest,
  states: Iterable<DiskState>,
): Promise<PitDisk[]> {
  // What is applied now goes into this head; writes that arrive meanwhile wait for the next one.
  const ordered = [...states].sort((a, b) => a.meta.index - b.meta.index);
  for (const d of ordered) {
    d.committing = d.pending;
    d.pending = new Map();
  }
  // The packs the taken entries lie in and the block maps' new pages are stored at once: an
  // entry names its pack from the start, and nothing names a page before the head is written.
  const refs = await settleAll([
    ingest.finish().then(() => undefined),
    ...ordered.map((d) =>
      d.committing && d.committing.size > 0
        ? updateBlockMap(repo, d.ref, d.committing, ingest.known.pages)
        : Promise.resolve(d.ref),
    ),
  ]);
  const disks: PitDisk[] = [];
  for (const [k, d] of ordered.entries()) {
    d.ref = refs[k + 1] as BlockMapRef;
    d.committing = undefined;
    disks.push({
      index: d.meta.index,
      source: d.meta.source,
      sizeBytes: d.meta.sizeBytes,
      chunkSize: repo.config.chunkSize,
      ...d.ref,
    });
  }
  return disks;
}
