import { type Hash, createHash } from "node:crypto";

const ZEROS = Buffer.alloc(4 << 20);

/** Bytes, or a length of zeros; `then` runs once the piece was hashed (its buffer may be reused). */
type Piece = { bytes: Uint8Array; then?: () => void } | { zeros: number };

/**
 * SHA-256 of a disk whose pieces arrive out of order (runs restored by
 * several workers at once): each piece is held until everything before it
 * was hashed. A piece is bytes, or a length of zeros (a run with no chunk,
 * or the holes of a run), hashed from one static buffer of zeros: nothing is
 * allocated or copied for them.
 */
export class OrderedHash {
  private readonly hash: Hash = createHash("sha256");
  private readonly waiting = new Map<number, Piece>();
  private next = 0;

  /** Bytes at `offset`; `then` is called once they were hashed (at once when nothing before is missing). */
  put(offset: number, bytes: Uint8Array, then?: () => void): void {
    this.waiting.set(offset, then ? { bytes, then } : { bytes });
    this.drain();
  }

  /** `length` zero bytes at `offset`. */
  zeros(offset: number, length: number): void {
    this.waiting.set(offset, { zeros: length });
    this.drain();
  }

  /** Bytes hashed so far: the disk's first `hashed` bytes. */
  get hashed(): number {
    return this.next;
  }

  /** The digest (hex); throws when a piece before `size` is missing. */
  digest(size: number): string {
    if (this.next !== size) throw new Error(`hashed ${this.next} of ${size} bytes: a piece is missing`);
    return this.hash.digest("hex");
  }

  private drain(): void {
    for (let p = this.waiting.get(this.next); p !== undefined; p = this.waiting.get(this.next)) {
      this.waiting.delete(this.next);
      if ("zeros" in p) {
        for (let left = p.zeros; left > 0; left -= ZEROS.length)
          this.hash.update(ZEROS.subarray(0, Math.min(left, ZEROS.length)));
        this.next += p.zeros;
      } else {
        this.hash.update(p.bytes);
        this.next += p.bytes.length;
        p.then?.();
      }
    }
  }
}

/**
 * A fixed set of equal buffers shared with the workers, taken in order and
 * given back once hashed: the memory a hash in order may hold is bounded,
 * and nothing is allocated per run. After `fail`, takers get the error.
 */
export class SharedBuffers {
  private readonly free: SharedArrayBuffer[] = [];
  private readonly waiting: { resolve(b: SharedArrayBuffer): void; reject(e: Error): void }[] = [];
  private failure: Error | undefined;

  constructor(count: number, size: number) {
    for (let i = 0; i < count; i++) this.free.push(new SharedArrayBuffer(size));
  }

  take(): Promise<SharedArrayBuffer> {
    if (this.failure) return Promise.reject(this.failure);
    const b = this.free.pop();
    if (b) return Promise.resolve(b);
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  give(b: SharedArrayBuffer): void {
    const w = this.waiting.shift();
    if (w) w.resolve(b);
    else this.free.push(b);
  }

  fail(err: Error): void {
    this.failure ??= err;
    for (const w of this.waiting.splice(0)) w.reject(this.failure);
  }
}
