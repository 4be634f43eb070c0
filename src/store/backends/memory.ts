import { LifeboatError, type Clock, systemClock } from "../../base/index.js";
import type { Backend, ObjectInfo } from "../backend.js";

/** Reference implementation of the backend contract, kept in memory. */
export class MemoryBackend implements Backend {
  readonly properties = { atomicReplace: true, location: "memory:" };
  private readonly objects = new Map<string, { data: Buffer; mtimeMs: number }>();

  constructor(private readonly clock: Clock = systemClock) {}

  put(name: string, data: Uint8Array): Promise<void> {
    this.objects.set(name, { data: Buffer.from(data), mtimeMs: this.clock.now() });
    return Promise.resolve();
  }

  putIfAbsent(name: string, data: Uint8Array): Promise<boolean> {
    if (this.objects.has(name)) return Promise.resolve(false);
    this.objects.set(name, { data: Buffer.from(data), mtimeMs: this.clock.now() });
    return Promise.resolve(true);
  }

  get(name: string, range?: { offset: number; length: number }): Promise<Buffer> {
    const o = this.objects.get(name);
    if (!o) return Promise.reject(missing(name, this.properties.location));
    const data = range ? o.data.subarray(range.offset, range.offset + range.length) : o.data;
    return Promise.resolve(Buffer.from(data));
  }

  stat(name: string): Promise<ObjectInfo | undefined> {
    const o = this.objects.get(name);
    return Promise.resolve(o ? { name, size: o.data.length, mtimeMs: o.mtimeMs } : undefined);
  }

  // eslint-disable-next-line @typescript-eslint/require-await -- the contract is an async iterable
  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    for (const [name, o] of [...this.objects]) {
      if (name.startsWith(prefix)) yield { name, size: o.data.length, mtimeMs: o.mtimeMs };
    }
  }

  delete(name: string): Promise<void> {
    this.objects.delete(name);
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

export function missing(name: string, location: string): LifeboatError {
  return new LifeboatError("STORE_OBJECT_MISSING", `object ${name} is missing from ${location}`, {
    hint: "run `lifeboat store verify` to see which PITs are affected",
  });
}
