/**
 * Memory for the payloads of small frames that a sender keeps until they are
 * acknowledged: carved one after another out of blocks of a MiB, a block
 * being reused once every payload in it has come back. Scattered writes
 * make BLOCKS frames of a few KiB to a few hundred; with a buffer of its own
 * each (6,209 of them, 300 MiB, in one replication benchmark run), they
 * outlived the young generation and waited in the old one, with the memory
 * behind them, for a full garbage collection. PayloadPool serves the large
 * frames. A payload never given back keeps its block from being reused, not
 * from being collected: blocks are known weakly. (A receiver's small
 * payloads are not carved: the replicator reads a patch's bytes after the
 * message's apply has resolved, which is when the decoder's large payloads
 * go back.)
 */
import { roundUp } from "../base/aligned.js";

/** Payloads larger than this go elsewhere (a quarter of a block: little of a block is left unused). */
const MAX_CARVED_FRACTION = 4;

interface Block {
  memory: ArrayBuffer;
  /** Bytes carved so far. */
  used: number;
  /** Offsets of the payloads carved and not yet given back. */
  live: Set<number>;
  /** No longer carved from: free once `live` is empty. */
  retired: boolean;
}

export class PayloadArena {
  private current: Block | undefined;
  private readonly spare: ArrayBuffer[] = [];
  private readonly blocks = new WeakMap<ArrayBufferLike, Block>();

  /** `keep`: free blocks held for reuse at most. */
  constructor(
    private readonly keep = 8,
    private readonly blockBytes = 1 << 20,
  ) {}

  /**
   * A buffer of exactly `length` bytes, or undefined when the payload is too
   * large for the arena. With `headroom`, the `headroom` bytes before it are
   * the caller's too (a frame's header).
   */
  take(length: number, headroom = 0): Buffer | undefined {
    const size = roundUp(headroom + length, 8);
    if (size > this.blockBytes / MAX_CARVED_FRACTION) return undefined;
    let b = this.current;
    if (!b || b.used + size > b.memory.byteLength) {
      if (b) {
        b.retired = true;
        this.freeIfDone(b);
      }
      const memory = this.spare.pop() ?? Buffer.allocUnsafeSlow(this.blockBytes).buffer;
      b = this.current = { memory, used: 0, live: new Set(), retired: false };
      this.blocks.set(memory, b);
    }
    const at = b.used + headroom;
    b.used += size;
    b.live.add(at);
    return Buffer.from(b.memory, at, length);
  }

  /** Whether `bytes` is a payload the arena lent and has not taken back. */
  lends(bytes: Uint8Array): boolean {
    return this.blocks.get(bytes.buffer)?.live.has(bytes.byteOffset) ?? false;
  }

  /**
   * Takes back a payload `take` returned (the same view), once; anything the
   * arena did not lend is ignored. A second release of one payload is
   * ignored only while its block is not reused: after that it would free
   * the place of another payload, so a caller gives each back exactly once
   * (the sender does, when an acknowledgement first covers its frame).
   */
  release(bytes: Uint8Array): void {
    const b = this.blocks.get(bytes.buffer);
    if (!b?.live.delete(bytes.byteOffset)) return;
    this.freeIfDone(b);
  }

  private freeIfDone(b: Block): void {
    if (!b.retired || b.live.size > 0) return;
    this.blocks.delete(b.memory);
    if (this.spare.length < this.keep) this.spare.push(b.memory);
  }
}
