/**
 * Slabs: shared memory that a pool of worker threads reads runs from and
 * writes results into, kept for later runs. Memory that moves between
 * threads by transfer arrives as new memory each time; V8 collects garbage
 * after every few tens of MiB of it (at the rate of an initial sync, several
 * full collections a second), and freed blocks of these sizes stay in the
 * allocator's heaps. A slab is shared once with each worker and then named
 * by its number.
 */
import type { Worker } from "node:worker_threads";
import { roundUp } from "./aligned.js";
import { keepSpareBytes, takeSpare } from "./spare.js";

export interface Slab {
  readonly id: number;
  readonly memory: SharedArrayBuffer;
  readonly byteLength: number;
  /** Workers that have this slab's memory. */
  readonly known: Set<Worker>;
}

/** How a message names a slab to a worker. */
export interface SlabRef {
  slab: number;
  /** The slab's memory, the first time this worker gets it. */
  memory?: SharedArrayBuffer;
  /** Slabs the pool let go since this worker's last message: it forgets them. */
  forget?: number[];
}

/**
 * New slabs are whole multiples of this: runs of varying length then fit
 * the slabs that earlier runs left, instead of each wanting a new one.
 */
export const SLAB_STEP = 1 << 20;

/** The main thread's side: slabs in use are the caller's; released ones wait here for the next run. */
export class Slabs {
  private readonly spare: Slab[] = [];
  /** Slabs let go, per worker that still has them. */
  private readonly forgotten = new Map<Worker, number[]>();
  private next = 0;

  /**
   * `maxSpareBytes`: released slabs kept, in bytes. At least what the
   * callers hold at once, or every round of runs makes new slabs: a new
   * slab is freed only once every thread that saw it has collected its
   * garbage, and a worker that allocates little collects rarely (an agent
   * that kept 6 slabs for 9 held at once made 548 new ones, 1 GB, in one
   * replication benchmark run, and its resident memory grew to 788 MiB).
   */
  constructor(private readonly maxSpareBytes: number) {}

  /** The smallest spare slab of at least `size` bytes, else a new one. */
  take(size: number): Slab {
    const spare = takeSpare(this.spare, size);
    if (spare) return spare;
    const bytes = roundUp(size, SLAB_STEP);
    return { id: this.next++, memory: new SharedArrayBuffer(bytes), byteLength: bytes, known: new Set() };
  }

  /**
   * A slab the caller is done with: it serves a later run. Past the budget,
   * the largest spares go (and the workers forget them): they are the ones
   * a burst of large runs left (an initial sync's), which later runs need
   * least.
   */
  giveBack(slab: Slab): void {
    for (const dropped of keepSpareBytes(this.spare, slab, this.maxSpareBytes, true)) {
      for (const w of dropped.known) {
        const list = this.forgotten.get(w) ?? [];
        list.push(dropped.id);
        this.forgotten.set(w, list);
      }
    }
  }

  /** Names `slab` in the next message to `w` (which then knows it). */
  ref(slab: Slab, w: Worker): SlabRef {
    const forget = this.forgotten.get(w);
    this.forgotten.delete(w);
    const ref: SlabRef = {
      slab: slab.id,
      ...(slab.known.has(w) ? {} : { memory: slab.memory }),
      ...(forget ? { forget } : {}),
    };
    slab.known.add(w);
    return ref;
  }
}

/** A worker's side: the slabs it was given, by number. */
export class SlabTable {
  private readonly slabs = new Map<number, Buffer>();

  /** The slab a message names (taking in its memory and forgetting what it says to). */
  open(ref: SlabRef): Buffer {
    for (const id of ref.forget ?? []) this.slabs.delete(id);
    if (ref.memory) this.slabs.set(ref.slab, Buffer.from(ref.memory));
    const slab = this.slabs.get(ref.slab);
    if (!slab) throw new Error(`slab ${ref.slab} was never given to this worker`);
    return slab;
  }
}
