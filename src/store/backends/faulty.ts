import { LifeboatError } from "../../base/index.js";
import type { Backend, ObjectInfo, PutOptions } from "../backend.js";

export type BackendVerb = "put" | "get" | "stat" | "list" | "delete";

export interface FaultOptions {
  /** Only calls whose name (the prefix, for list) passes count and fail. Default: every call. */
  when?: (name: string) => boolean;
  /**
   * Fail after the wrapped backend did the work: a put that landed but whose
   * answer was lost, a delete that happened. For list: fail after the first
   * object was delivered, as a connection cut mid-listing does.
   */
  afterCall?: boolean;
}

interface Failure {
  verb: BackendVerb;
  remaining: number;
  error: (name: string) => Error;
  when: (name: string) => boolean;
  afterCall: boolean;
}

interface Corruption {
  when: (name: string) => boolean;
  remaining: number;
  mutate: (data: Buffer) => Buffer;
}

/**
 * Fault injection for tests: wraps a backend and fails or corrupts the calls
 * a test programs, so a test can tell a transient error (fails once, then
 * reads fine) from corruption (reads wrong every time), and count the calls
 * a retry layer made (`calls`).
 */
export class FaultyBackend implements Backend {
  /** Calls received per verb, failed ones included. */
  readonly calls: Record<BackendVerb, number> = { put: 0, get: 0, stat: 0, list: 0, delete: 0 };
  private failures: Failure[] = [];
  private corruptions: Corruption[] = [];
  /** Passed through unfaulted when the wrapped backend has it. */
  declare readonly sweepTemporaries?: (olderThanMs: number) => Promise<number>;
  declare readonly flush?: () => Promise<void>;
  declare readonly putIfAbsent?: (name: string, data: Uint8Array) => Promise<boolean>;

  constructor(readonly inner: Backend) {
    const sweep = inner.sweepTemporaries?.bind(inner);
    if (sweep) this.sweepTemporaries = sweep;
    const flush = inner.flush?.bind(inner);
    if (flush) this.flush = flush;
    const create = inner.putIfAbsent?.bind(inner);
    if (create) this.putIfAbsent = create;
  }

  get properties(): Backend["properties"] {
    // No direct file access: every read must pass through the faults.
    return { ...this.inner.properties, localRoot: undefined };
  }

  /**
   * The next `count` matching calls of `verb` fail with `error` (default: a
   * retryable STORE_IO). Programs queue: each call consumes the first
   * program that matches it.
   */
  failNext(
    verb: BackendVerb,
    count = 1,
    error?: Error | ((name: string) => Error),
    opts: FaultOptions = {},
  ): this {
    const make =
      typeof error === "function"
        ? error
        : error !== undefined
          ? () => error
          : (name: string) =>
              new LifeboatError("STORE_IO", `injected fault: ${verb} ${name}`, {
                hint: "a test injected this fault",
                retryable: true,
              });
    this.failures.push({
      verb,
      remaining: count,
      error: make,
      when: opts.when ?? (() => true),
      afterCall: opts.afterCall ?? false,
    });
    return this;
  }

  /**
   * get() of matching names returns damaged bytes (default: one bit flipped
   * in the middle; an empty object gains a byte) for the next `times` reads,
   * or for every read when `times` is not given. The stored object is intact.
   */
  corruptOnGet(
    when: (name: string) => boolean,
    opts: { times?: number; mutate?: (data: Buffer) => Buffer } = {},
  ): this {
    this.corruptions.push({ when, remaining: opts.times ?? Infinity, mutate: opts.mutate ?? flipMiddleBit });
    return this;
  }

  /** Forgets every programmed fault; `calls` keeps counting. */
  clearFaults(): void {
    this.failures = [];
    this.corruptions = [];
  }

  async put(name: string, data: Uint8Array, opts?: PutOptions): Promise<void> {
    const fault = this.take("put", name);
    if (fault && !fault.afterCall) throw fault.error(name);
    await this.inner.put(name, data, opts);
    if (fault) throw fault.error(name);
  }

  async get(name: string, range?: { offset: number; length: number }): Promise<Buffer> {
    const fault = this.take("get", name);
    if (fault && !fault.afterCall) throw fault.error(name);
    const data = await this.inner.get(name, range);
    if (fault) throw fault.error(name);
    const c = this.corruptions.find((x) => x.remaining > 0 && x.when(name));
    if (!c) return data;
    c.remaining--;
    return c.mutate(Buffer.from(data));
  }

  async stat(name: string): Promise<ObjectInfo | undefined> {
    const fault = this.take("stat", name);
    if (fault && !fault.afterCall) throw fault.error(name);
    const info = await this.inner.stat(name);
    if (fault) throw fault.error(name);
    return info;
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const fault = this.take("list", prefix);
    if (fault && !fault.afterCall) throw fault.error(prefix);
    for await (const info of this.inner.list(prefix)) {
      yield info;
      if (fault) throw fault.error(prefix);
    }
    if (fault) throw fault.error(prefix);
  }

  async delete(name: string): Promise<void> {
    const fault = this.take("delete", name);
    if (fault && !fault.afterCall) throw fault.error(name);
    await this.inner.delete(name);
    if (fault) throw fault.error(name);
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  /** Counts the call and consumes the first program that matches it. */
  private take(verb: BackendVerb, name: string): Failure | undefined {
    this.calls[verb]++;
    const f = this.failures.find((x) => x.verb === verb && x.remaining > 0 && x.when(name));
    if (f) f.remaining--;
    return f;
  }
}

function flipMiddleBit(data: Buffer): Buffer {
  if (data.length === 0) return Buffer.from([0]);
  const i = data.length >> 1;
  data[i] = (data[i] ?? 0) ^ 0x01;
  return data;
}
