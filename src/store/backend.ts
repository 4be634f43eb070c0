/**
 * The storage a repository sits on. Names are slash-separated relative paths
 * ("chunks/ab/abcd…", "pits/…", "config"); every verb is safe to retry.
 *
 * Contract (test/store/backend-contract.ts checks every implementation):
 * - put(name, data): atomic and idempotent. After it resolves readers see
 *   either nothing or all of `data`, never a part; it is durable once
 *   flush() has resolved (at once on backends without flush).
 *   Putting the same name again replaces it whole (content-addressed callers
 *   only ever put the same bytes under one name).
 * - get(name, range?): the object's bytes, or the byte range [offset,
 *   offset+length) of it. A missing object throws code STORE_OBJECT_MISSING.
 * - stat(name): size and modification time, or undefined when absent.
 * - list(prefix): every object whose name starts with prefix, in no set order.
 *   Temporary files of interrupted puts are never listed.
 * - delete(name): idempotent; deleting a missing object is not an error.
 *
 * Errors carry `retryable` when the backend knows a retry may help; the retry
 * decorator never retries anything else.
 */
export interface ObjectInfo {
  name: string;
  size: number;
  /** Last modification, milliseconds since the epoch, as the backend records it. */
  mtimeMs: number;
}

export interface BackendProperties {
  /** put() of an existing name replaces it atomically (rename, or S3 PUT). */
  atomicReplace: boolean;
  /** A human-readable location for messages, never containing credentials. */
  location: string;
  /**
   * Set when every object is a plain file at `<localRoot>/<name>` that bulk
   * readers and writers in worker threads may use directly: read it, or
   * create it with the same protocol as put (a temporary file under
   * `tmp/`, renamed into place) followed by flush(). Fault injection and other
   * decorators that must see every call leave it unset.
   */
  localRoot?: string;
}

/** Options of one put. */
export interface PutOptions {
  /**
   * The object is durable when the put resolves, as if flushed, without
   * waiting for every other put to be (a small object written last, such
   * as a head, after a flush made what it refers to durable).
   */
  durable?: boolean;
}

export interface Backend {
  readonly properties: BackendProperties;
  put(name: string, data: Uint8Array, opts?: PutOptions): Promise<void>;
  get(name: string, range?: { offset: number; length: number }): Promise<Buffer>;
  stat(name: string): Promise<ObjectInfo | undefined>;
  list(prefix: string): AsyncIterable<ObjectInfo>;
  delete(name: string): Promise<void>;
  /**
   * Optional: removes leftovers of interrupted puts last touched before
   * `olderThanMs` (epoch ms) and returns how many. Backends whose puts leave
   * nothing behind (S3) do not have it.
   */
  sweepTemporaries?(olderThanMs: number): Promise<number>;
  /**
   * Optional: makes every put that has resolved durable. Backends whose puts
   * are durable when they resolve (S3) do not have it. Callers flush before
   * writing an object that refers to others (a PIT) and before deleting the
   * source of a copy.
   */
  flush?(): Promise<void>;
  /**
   * Optional: creates the object only if no object of that name exists, as
   * one atomic step; resolves true when it created it, false when the name
   * was taken. Locks that must exclude each other use it; without it they
   * fall back to a weaker write-then-list protocol (locks.ts).
   */
  putIfAbsent?(name: string, data: Uint8Array): Promise<boolean>;
  close(): Promise<void>;
}
