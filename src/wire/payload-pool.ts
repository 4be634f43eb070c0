import { roundUp } from "../base/aligned.js";
import { keepSpareBytes, takeSpare } from "../base/spare.js";
import type { SequencedMessage } from "./messages.js";

/** Payloads smaller than this are allocated as before: the pool is for the large BLOCKS frames. */
const MIN_POOLED_BYTES = 256 << 10;

/** Pooled buffers are whole MiB, so that one fits the next frames of about its size. */
const STEP = 1 << 20;

/**
 * Buffers for the payloads of large frames: those the frame decoder fills
 * from many socket reads, and those a sender encodes and keeps until they
 * are acknowledged. A replicator receiving an initial sync got a new buffer
 * for every frame (about 650 MB for the 2 GiB benchmark disk), and so did
 * the agent sending it; V8 answers that much new memory, kept past its young
 * generation, with a full garbage collection every few dozen megabytes. A
 * payload goes back (`giveBack`, `release`) once its message is durable:
 * nothing reads a message's bytes after that. A buffer the pool did not
 * lend, or one already given back, is ignored, so a caller may give back
 * any message.
 */
export class PayloadPool {
  private readonly spare: ArrayBuffer[] = [];
  private readonly lent = new WeakSet<ArrayBufferLike>();

  /**
   * `keepBytes`: spare buffers held at most, in bytes, the largest kept (each
   * up to a BLOCKS frame's limit, rounded up to a MiB).
   */
  constructor(private readonly keepBytes: number) {}

  /**
   * A pool for the frames of one window of `bytes` (a sender's, or a
   * replicator's shared by its connections): spares up to one and a half
   * windows, since an acknowledgement frees a checkpoint's worth of frames at
   * once and the next frames need as many again (sender.ts says what smaller
   * budgets cost).
   */
  static forWindow(bytes: number): PayloadPool {
    return new PayloadPool(bytes * 1.5);
  }

  /**
   * A buffer of exactly `length` bytes, or undefined when the payload is too
   * small to pool. With `headroom`, the buffer starts that many bytes into
   * the pool's, and those bytes are the caller's too (a frame's header).
   */
  take(length: number, headroom = 0): Buffer | undefined {
    if (length < MIN_POOLED_BYTES) return undefined;
    const size = headroom + length;
    const ab = takeSpare(this.spare, size) ?? Buffer.allocUnsafeSlow(roundUp(size, STEP)).buffer;
    this.lent.add(ab);
    return Buffer.from(ab, headroom, length);
  }

  /** Whether `bytes` lie in a buffer the pool lent and has not taken back. */
  lends(bytes: Uint8Array): boolean {
    return this.lent.has(bytes.buffer);
  }

  /** Takes back the payload that `msg`'s bytes lie in, if the pool lent it. */
  giveBack(msg: SequencedMessage): void {
    if (msg.type !== "BLOCKS") return;
    // Every part of a BLOCKS message is a view of its payload: the first hash names the buffer.
    const part = msg.kind === "patch" ? msg.sha256 : msg.blocks[0]?.sha256;
    if (part) this.release(part);
  }

  /** Takes back the buffer `bytes` lie in, if the pool lent it. */
  release(bytes: Uint8Array): void {
    const ab = bytes.buffer;
    if (!this.lent.has(ab)) return;
    this.lent.delete(ab);
    keepSpareBytes(this.spare, ab as ArrayBuffer, this.keepBytes);
  }
}
