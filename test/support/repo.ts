import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { type Clock } from "../../src/base/index.js";
import {
  type Backend,
  LocalBackend,
  MemoryBackend,
  Repository,
  generateKeyFile,
  newRepositoryId,
} from "../../src/store/index.js";

export async function tempDir(prefix = "lifeboat-test-"): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), prefix));
}

/** A fresh repository on a local directory (or in memory), with a small chunk size unless told otherwise. */
export async function newRepository(
  opts: { dir?: string; chunkSize?: number; pageFanout?: number; backend?: Backend; clock?: Clock } = {},
): Promise<Repository> {
  const backend = opts.backend ?? (opts.dir ? new LocalBackend(opts.dir) : new MemoryBackend());
  return Repository.create(backend, generateKeyFile(newRepositoryId()), {
    chunkSize: opts.chunkSize ?? 64 * 1024,
    ...(opts.pageFanout ? { pageFanout: opts.pageFanout } : {}),
    ...(opts.clock ? { clock: opts.clock } : {}),
  });
}

/** Wraps a backend and counts puts by name prefix. */
export function countingBackend(
  inner: Backend,
  /** Runs before each put reaches `inner` (to see its bytes, or to delay it). */
  beforePut?: (name: string, data: Uint8Array) => void | Promise<void>,
): Backend & { puts: string[] } {
  const puts: string[] = [];
  return {
    properties: inner.properties,
    puts,
    put: async (n, d) => {
      puts.push(n);
      await beforePut?.(n, d);
      return inner.put(n, d);
    },
    get: (n, r) => inner.get(n, r),
    stat: (n) => inner.stat(n),
    list: (p) => inner.list(p),
    delete: (n) => inner.delete(n),
    close: () => inner.close(),
  };
}
