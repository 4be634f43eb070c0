import { roundUp } from "../base/aligned.js";
import { takeSpare } from "../base/spare.js";
import type { SequencedMessage } from "./messages.js";

/** Payloads smaller than this are allocated as before: the pool is for the large BLOCKS frames. */
const MIN_POOLED_BYTES = 256 << 10;

/** Pooled buffers are whole MiB, so that one fits the next frames of about its size. */
const STEP = 1 << 20;

/**
 * Buffers for the payloads of large frames, which the frame decoder fills
 * from many socket reads: a replicator receiving an initial sync got a new
 * buffer for every frame (about 650 MB for the 2 GiB benchmark disk), and
 * V8 answers that much new memory with a full garbage collection every few
 * dozen megabytes. A payload goes back (`giveBack`) once its message is durable:
 * nothing reads a message's bytes after that. A buffer the pool did not
 * lend, or one already given back, is ignored, so a caller may give back
 * any message.
 */
export class PayloadPool {
  private readonly spare: ArrayBuffer[] = [];
  private readonly lent = new WeakSet<ArrayBufferLike>();

  /** `keep`: spare buffers held at most (each up to a BLOCKS frame's limit, rounded up to a MiB). */
  constructor(private readonly keep = 16) {}

  /** A buffer of exactly `length` bytes, or undefined when the payload is too small to pool. */
  take(length: number): Buffer | undefined {
    if (length < MIN_POOLED_BYTES) return undefined;
    const ab = takeSpare(this.spare, length) ?? Buffer.allocUnsafeSlow(roundUp(length, STEP)).buffer;
    this.lent.add(ab);
    return Buffer.from(ab, 0, length);
  }

  /** Takes back the payload that `msg`'s bytes lie in, if the pool lent it. */
  giveBack(msg: SequencedMessage): void {
    if (msg.type !== "BLOCKS") return;
    // Every part of a BLOCKS message is a view of its payload: the first hash names the buffer.
    const ab = (msg.kind === "patch" ? msg.sha256 : msg.blocks[0]?.sha256)?.buffer;
    if (!ab || !this.lent.has(ab)) return;
    this.lent.delete(ab);
    if (this.spare.length < this.keep) this.spare.push(ab as ArrayBuffer);
  }
}
