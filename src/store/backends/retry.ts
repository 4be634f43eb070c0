import { LifeboatError, isRetryable, systemClock, type Clock } from "../../base/index.js";
import type { Backend, ObjectInfo, PutOptions } from "../backend.js";

export interface RetryOptions {
  /** Tries per call, the first included. Default 5. */
  attempts?: number;
  /** Ceiling of the first backoff; it doubles per attempt up to maxDelayMs. Default 100. */
  baseDelayMs?: number;
  /** Default 5000. */
  maxDelayMs?: number;
  clock?: Clock;
  /** Called before each backoff, e.g. to log it. */
  onRetry?: (event: RetryEvent) => void;
  /** Jitter source in [0, 1); tests pass a fixed one. Default Math.random. */
  random?: () => number;
}

export interface RetryEvent {
  verb: "put" | "get" | "stat" | "list" | "delete" | "sweepTemporaries" | "flush" | "putIfAbsent";
  /** The object name, or the prefix for list. */
  name: string;
  /** The attempt that failed, from 1. */
  attempt: number;
  delayMs: number;
  error: unknown;
}

/**
 * Retries each verb with exponential backoff and full jitter (a delay drawn
 * uniformly from [0, min(max, base·2^(attempt-1))), which spreads out clients
 * that failed together), but only when the backend said the failure is
 * retryable (`isRetryable`); permanent errors pass through at once. Every
 * verb of the contract is safe to repeat, so a retried put is harmless.
 *
 * list() is retried until it has produced its first object (or finished
 * empty). A failure after that passes through: starting the listing again
 * would hand the caller objects it has already seen, and remembering every
 * name to skip them costs memory in proportion to the repository.
 *
 * When the attempts run out, a LifeboatError is rethrown with the same code,
 * hint and retryable flag and "(after N attempts)" in its message.
 */
export function withRetry(backend: Backend, opts: RetryOptions = {}): Backend {
  return new RetryingBackend(backend, opts);
}

class RetryingBackend implements Backend {
  private readonly attempts: number;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly clock: Clock;
  private readonly random: () => number;
  /** Present only when the wrapped backend has it, as the interface says. */
  declare readonly sweepTemporaries?: (olderThanMs: number) => Promise<number>;
  declare readonly flush?: () => Promise<void>;
  declare readonly putIfAbsent?: (name: string, data: Uint8Array) => Promise<boolean>;

  constructor(
    private readonly inner: Backend,
    private readonly opts: RetryOptions,
  ) {
    this.attempts = opts.attempts ?? 5;
    this.baseDelayMs = opts.baseDelayMs ?? 100;
    this.maxDelayMs = opts.maxDelayMs ?? 5000;
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? Math.random;
    if (!Number.isInteger(this.attempts) || this.attempts < 1) {
      throw new RangeError(`withRetry: attempts must be a whole number >= 1, not ${this.attempts}`);
    }
    if (!(this.baseDelayMs >= 0) || !(this.maxDelayMs >= 0)) {
      throw new RangeError("withRetry: delays must be >= 0");
    }
    const sweep = inner.sweepTemporaries?.bind(inner);
    if (sweep) {
      this.sweepTemporaries = (olderThanMs) => this.retry("sweepTemporaries", "", () => sweep(olderThanMs));
    }
    const flush = inner.flush?.bind(inner);
    if (flush) this.flush = () => this.retry("flush", "", flush);
    const create = inner.putIfAbsent?.bind(inner);
    if (create) this.putIfAbsent = (name, data) => this.retry("putIfAbsent", name, () => create(name, data));
  }

  get properties(): Backend["properties"] {
    return this.inner.properties;
  }

  put(name: string, data: Uint8Array, opts?: PutOptions): Promise<void> {
    return this.retry("put", name, () => this.inner.put(name, data, opts));
  }

  get(name: string, range?: { offset: number; length: number }): Promise<Buffer> {
    return this.retry("get", name, () => this.inner.get(name, range));
  }

  stat(name: string): Promise<ObjectInfo | undefined> {
    return this.retry("stat", name, () => this.inner.stat(name));
  }

  delete(name: string): Promise<void> {
    return this.retry("delete", name, () => this.inner.delete(name));
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    let it = this.inner.list(prefix)[Symbol.asyncIterator]();
    let delivered = false;
    try {
      for (let attempt = 1; ;) {
        let r: IteratorResult<ObjectInfo>;
        try {
          r = await it.next();
        } catch (err) {
          if (delivered) throw err;
          await this.backoff("list", prefix, attempt++, err);
          it = this.inner.list(prefix)[Symbol.asyncIterator]();
          continue;
        }
        if (r.done) return;
        delivered = true;
        yield r.value;
      }
    } finally {
      // Lets the inner listing release what it holds when the caller stops early.
      await it.return?.();
    }
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  private async retry<T>(verb: RetryEvent["verb"], name: string, op: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await op();
      } catch (err) {
        await this.backoff(verb, name, attempt, err);
      }
    }
  }

  /** Waits before the next attempt, or throws when `err` is permanent or the attempts are spent. */
  private async backoff(
    verb: RetryEvent["verb"],
    name: string,
    attempt: number,
    err: unknown,
  ): Promise<void> {
    if (!isRetryable(err)) throw err;
    if (attempt >= this.attempts) throw exhausted(err, attempt);
    const ceiling = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** (attempt - 1));
    const delayMs = Math.floor(this.random() * ceiling);
    this.opts.onRetry?.({ verb, name, attempt, delayMs, error: err });
    await this.clock.sleep(delayMs);
  }
}

function exhausted(err: unknown, attempts: number): unknown {
  if (!(err instanceof LifeboatError)) return err;
  return new LifeboatError(err.code, `${err.message} (after ${attempts} attempts)`, {
    hint: err.hint,
    cause: err,
    retryable: err.retryable,
    exitCode: err.exitCode,
  });
}
