/**
 * Takes the smallest buffer of at least `min` bytes out of `spare` (buffers
 * kept for reuse), or returns undefined when none is large enough. The
 * smallest that fits leaves the large ones to large requests.
 */
export function takeSpare<T extends { byteLength: number }>(spare: T[], min: number): T | undefined {
  let best = -1;
  for (const [i, b] of spare.entries())
    if (b.byteLength >= min && (best < 0 || b.byteLength < spare[best]!.byteLength)) best = i;
  return best < 0 ? undefined : spare.splice(best, 1)[0];
}

/**
 * Buffers lent out to be handed back later (from a worker thread, say),
 * kept for reuse: at most `max` spare, and never more given back than were
 * lent, so that buffers from elsewhere do not pile up.
 */
export class SpareBuffers {
  private readonly spare: ArrayBuffer[] = [];
  private lent = 0;

  constructor(private readonly max: number) {}

  /** A spare buffer of at least `min` bytes, or a new one of `size` bytes (at least `min`). */
  take(min: number, size = min): ArrayBuffer {
    const ab = takeSpare(this.spare, min) ?? Buffer.allocUnsafeSlow(Math.max(min, size)).buffer;
    this.lent++;
    return ab;
  }

  /** Keeps a buffer back, if one is still lent out and there is room. */
  giveBack(ab: ArrayBuffer): void {
    if (this.lent === 0) return;
    this.lent--;
    if (this.spare.length < this.max) this.spare.push(ab);
  }
}
