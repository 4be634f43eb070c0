/** Where an ordered hash sends its pieces, in order (HashThread). */
export interface HashSink {
  /** `then` runs once the bytes were hashed (their buffer may be reused). */
  update(bytes: Uint8Array, then?: () => void): void;
  zeros(length: number): void;
  digest(): Promise<string>;
}

/** Bytes, or a length of zeros; `then` runs once the piece was hashed (its buffer may be reused). */
type Piece = { bytes: Uint8Array; then?: () => void } | { zeros: number };

/**
 * SHA-256 of a disk whose pieces arrive out of order (runs restored by
 * several workers at once): each piece is held until everything before it
 * was handed to the sink, which hashes them in order (on a thread of its
 * own). A piece is bytes, or a length of zeros (a run with no chunk, or the
 * holes of a run), which the sink hashes without any buffer being sent.
 */
export class OrderedHash {
  private readonly waiting = new Map<number, Piece>();
  private next = 0;

  constructor(private readonly sink: HashSink) {}

  /** Bytes at `offset`; `then` is called once they were hashed. */
  put(offset: number, bytes: Uint8Array, then?: () => void): void {
    this.waiting.set(offset, then ? { bytes, then } : { bytes });
    this.drain();
  }

  /** `length` zero bytes at `offset`. */
  zeros(offset: number, length: number): void {
    this.waiting.set(offset, { zeros: length });
    this.drain();
  }

  /** Bytes handed to the sink so far: the disk's first `hashed` bytes. */
  get hashed(): number {
    return this.next;
  }

  /** The digest (hex); rejects when a piece before `size` is missing. */
  async digest(size: number): Promise<string> {
    if (this.next !== size) throw new Error(`hashed ${this.next} of ${size} bytes: a piece is missing`);
    return this.sink.digest();
  }

  private drain(): void {
    for (let p = this.waiting.get(this.next); p !== undefined; p = this.waiting.get(this.next)) {
      this.waiting.delete(this.next);
      if ("zeros" in p) {
        this.sink.zeros(p.zeros);
        this.next += p.zeros;
      } else {
        this.sink.update(p.bytes, p.then);
        this.next += p.bytes.length;
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
