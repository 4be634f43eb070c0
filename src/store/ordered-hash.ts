import { type Hash, createHash } from "node:crypto";

const ZEROS = Buffer.alloc(4 << 20);

/**
 * SHA-256 of a disk whose pieces arrive out of order (runs restored by
 * several workers at once): each piece is held until everything before it
 * was hashed. A piece is bytes, or a length of zeros (a run with no chunk).
 */
export class OrderedHash {
  private readonly hash: Hash = createHash("sha256");
  private readonly waiting = new Map<number, Buffer | number>();
  private next = 0;

  /** Bytes at `offset`. */
  put(offset: number, piece: Buffer): void {
    this.waiting.set(offset, piece);
    this.drain();
  }

  /** `length` zero bytes at `offset`. */
  zeros(offset: number, length: number): void {
    this.waiting.set(offset, length);
    this.drain();
  }

  /** The digest (hex); throws when a piece before `size` is missing. */
  digest(size: number): string {
    if (this.next !== size) throw new Error(`hashed ${this.next} of ${size} bytes: a piece is missing`);
    return this.hash.digest("hex");
  }

  private drain(): void {
    for (let p = this.waiting.get(this.next); p !== undefined; p = this.waiting.get(this.next)) {
      this.waiting.delete(this.next);
      if (typeof p === "number") {
        for (let left = p; left > 0; left -= ZEROS.length)
          this.hash.update(ZEROS.subarray(0, Math.min(left, ZEROS.length)));
        this.next += p;
      } else {
        this.hash.update(p);
        this.next += p.length;
      }
    }
  }
}
