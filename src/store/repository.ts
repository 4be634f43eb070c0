import { createHash } from "node:crypto";
import { LifeboatError, type Clock, systemClock } from "../base/index.js";
import type { Backend, PutOptions } from "./backend.js";
import { ObjectCodec, ObjectKind, damaged } from "./codec.js";
import {
  DEFAULT_CHUNK_SIZE,
  REPOSITORY_FORMAT,
  type RepositoryConfig,
  readConfig,
  validateChunkSize,
} from "./config.js";
import { type KeyFile, type RepositoryKeys, deriveKeys, keyCheck } from "./keys.js";
import { type ChunkLocation, type PageIdSet, entryId, entryLocation } from "./block-map.js";
import { CONFIG_NAME, PREFIX, keyedName, packName, trashName } from "./names.js";

export const PAGE_FANOUT = 256;

/** Bytes of block-map pages a repository keeps in memory (a leaf page is 14 KiB: 1,200 of them). */
const PAGE_CACHE_BYTES = 16 * 1024 * 1024;

export function sha256(data: Uint8Array): Buffer {
  return createHash("sha256").update(data).digest();
}

/**
 * An open repository: its config, its keys and typed access to its objects.
 * Every read is checked — chunks and pages against their id, everything
 * against its authentication tag — so a caller never sees damaged data.
 */
export class Repository {
  readonly codec: ObjectCodec;
  /** Block-map pages read or written lately, least recently used first, and their bytes. */
  private readonly pageCache = new Map<string, Buffer>();
  private pageCacheBytes = 0;

  private constructor(
    readonly backend: Backend,
    readonly config: RepositoryConfig,
    readonly keys: RepositoryKeys,
    readonly keyFile: KeyFile,
    readonly clock: Clock,
  ) {
    this.codec = new ObjectCodec(keys.encryptionKey, config.compression.level);
  }

  static async create(
    backend: Backend,
    keyFile: KeyFile,
    opts: { chunkSize?: number; compressionLevel?: number; pageFanout?: number; clock?: Clock } = {},
  ): Promise<Repository> {
    const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
    validateChunkSize(chunkSize);
    if (await backend.stat(CONFIG_NAME)) {
      throw new LifeboatError(
        "STORE_EXISTS",
        `a repository already exists at ${backend.properties.location}`,
        {
          hint: "use it as it is, or choose another location; nothing was changed",
        },
      );
    }
    const keys = deriveKeys(keyFile);
    const clock = opts.clock ?? systemClock;
    const config: RepositoryConfig = {
      lifeboatRepository: REPOSITORY_FORMAT,
      id: keyFile.repositoryId,
      createdAt: new Date(clock.now()).toISOString(),
      chunkSize,
      pageFanout: opts.pageFanout ?? PAGE_FANOUT,
      compression: { algorithm: "zstd", level: opts.compressionLevel ?? 1 },
      keyCheck: keyCheck(keys),
    };
    await backend.put(CONFIG_NAME, Buffer.from(`${JSON.stringify(config, null, 2)}\n`));
    await backend.flush?.();
    return new Repository(backend, config, keys, keyFile, clock);
  }

  static async open(backend: Backend, keyFile: KeyFile, opts: { clock?: Clock } = {}): Promise<Repository> {
    const config = await readConfig(backend);
    const keys = deriveKeys(keyFile);
    if (keyFile.repositoryId !== config.id || keyCheck(keys) !== config.keyCheck) {
      throw new LifeboatError("KEY_MISMATCH", `the key file does not belong to repository ${config.id}`, {
        hint: `use the key created for this repository (default ~/.config/lifeboat/keys/${config.id}.key) or its escrow copy`,
      });
    }
    return new Repository(backend, config, keys, keyFile, opts.clock ?? systemClock);
  }

  chunkName(id: Uint8Array): string {
    return keyedName(this.keys.namingKey, PREFIX.chunks, id);
  }

  packName(packId: Uint8Array): string {
    return packName(packId);
  }

  pageName(id: Uint8Array): string {
    return keyedName(this.keys.namingKey, PREFIX.pages, id);
  }

  /**
   * The stored bytes of a pack or page, or a byte range of them. An object
   * that GC moved to the trash while a writer still referenced it is read
   * from there (the next GC run puts it back; gc.ts explains when this happens).
   */
  async getObject(name: string, range?: { offset: number; length: number }): Promise<Buffer> {
    try {
      return await this.backend.get(name, range);
    } catch (err) {
      if (!(err instanceof LifeboatError && err.code === "STORE_OBJECT_MISSING")) throw err;
      try {
        return await this.backend.get(trashName(name), range);
      } catch {
        throw err;
      }
    }
  }

  /** The encoded object of a chunk, cut from its pack. */
  async getChunkObject(loc: ChunkLocation): Promise<Buffer> {
    return this.getObject(packName(loc.pack), { offset: loc.offset, length: loc.length });
  }

  /** Reads the chunk of a block-map leaf entry and checks that its plaintext hashes to its id. */
  async readChunk(entry: Uint8Array): Promise<Buffer> {
    const id = entryId(entry);
    const data = await this.getChunkObject(entryLocation(entry));
    return this.decodeVerified(this.chunkName(id), ObjectKind.chunk, id, data);
  }

  decodeVerified(name: string, kind: ObjectKind, id: Uint8Array, data: Buffer): Buffer {
    const plain = this.codec.decode(name, kind, data);
    if (!sha256(plain).equals(id)) {
      throw damaged(
        "STORE_CHUNK_MISMATCH",
        name,
        `decrypts but does not match its id ${Buffer.from(id).toString("hex")}`,
      );
    }
    return plain;
  }

  /** Stores a block-map page unless `known` says it is already there; returns its id. */
  async putPage(plain: Buffer, known?: PageIdSet, opts: { cache?: boolean } = {}): Promise<Buffer> {
    const { id, write } = this.preparePage(plain, known, opts);
    if (write) await write();
    return id;
  }

  /**
   * A page's id at once, and the write that stores it (none when `known`
   * has it), so that a caller can name a page in its parent before the page
   * is stored, and wait for every write of a tree together.
   */
  preparePage(
    plain: Buffer,
    known?: PageIdSet,
    opts: { cache?: boolean } = {},
  ): { id: Buffer; write?: () => Promise<void> } {
    const id = sha256(plain);
    const key = id.toString("latin1");
    if (opts.cache) this.cachePage(key, plain);
    if (known?.has(key)) return { id };
    const name = this.pageName(id);
    return {
      id,
      write: async () => {
        await this.backend.put(name, this.codec.encode(name, ObjectKind.page, plain));
        known?.add(key);
      },
    };
  }

  async getPage(id: Uint8Array): Promise<Buffer> {
    const key = Buffer.from(id).toString("latin1");
    const hit = this.pageCache.get(key);
    if (hit) {
      this.pageCache.delete(key); // re-inserted last: recently used
      this.pageCache.set(key, hit);
      return hit;
    }
    const name = this.pageName(id);
    const plain = this.decodeVerified(name, ObjectKind.page, id, await this.getObject(name));
    this.cachePage(key, plain);
    return plain;
  }

  private cachePage(key: string, plain: Buffer): void {
    const old = this.pageCache.get(key);
    if (old) this.pageCacheBytes -= old.length;
    this.pageCache.delete(key);
    this.pageCache.set(key, plain);
    this.pageCacheBytes += plain.length;
    for (const [k, page] of this.pageCache) {
      if (this.pageCacheBytes <= PAGE_CACHE_BYTES) break;
      this.pageCache.delete(k);
      this.pageCacheBytes -= page.length;
    }
  }

  async putMeta(
    name: string,
    value: unknown,
    kind: ObjectKind = ObjectKind.meta,
    opts?: PutOptions,
  ): Promise<void> {
    const plain = Buffer.from(JSON.stringify(value));
    await this.backend.put(name, this.codec.encode(name, kind, plain), opts);
  }

  async getMeta<T>(name: string, kind: ObjectKind = ObjectKind.meta): Promise<T> {
    const data = await this.backend.get(name);
    return JSON.parse(this.codec.decode(name, kind, data).toString("utf8")) as T;
  }

  /** Makes every object written so far durable (Backend.flush). */
  async flush(): Promise<void> {
    await this.backend.flush?.();
  }

  async close(): Promise<void> {
    await this.backend.close();
  }
}
