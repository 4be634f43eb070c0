/**
 * store: the repository — where the recovery site keeps every disk of every
 * protected server, and the part that must never lose data.
 *
 * Words: a *chunk* is a fixed-size block of a disk, named by the SHA-256 of
 * its bytes (its id); a *page* is a node of a *block map*, the tree of chunk
 * ids that describes one disk at one moment; a *PIT* names a server's disks'
 * block-map roots at one consistency point. Every object is compressed,
 * encrypted and authenticated (codec.ts); its layout is in docs/format.md.
 */
export type { Backend, BackendProperties, ObjectInfo } from "./backend.js";
export { LocalBackend } from "./backends/local.js";
export { MemoryBackend } from "./backends/memory.js";
export { runBackendChecks } from "./backend-checks.js";
export {
  type BlockMapRef,
  type ChunkLocation,
  BlockMapBuilder,
  entryId,
  entryLocation,
  isZeroId,
  leafEntry,
  readEntry,
  resizeBlockMap,
  updateBlockMap,
  walkBlockMap,
  ZERO_ENTRY,
  ZERO_ID,
} from "./block-map.js";
export { diffBlockMaps, readEntries } from "./block-map-diff.js";
export { PackWriter, readPackIndex } from "./pack.js";
export { type Head, assertNotFenced, deleteHead, headEpoch, listHeads, readHead, writeHead } from "./head.js";
export { acquireLock, type RepositoryLock } from "./locks.js";
export { DEFAULT_CHUNK_SIZE, type RepositoryConfig } from "./config.js";
export { exportDisk, type ExportOptions, type ExportResult } from "./export.js";
export { collectGarbage, type GcReport } from "./gc.js";
export { importDisks, type ImportStats } from "./import.js";
export { ChunkIngest, type KnownIds, loadKnownIds } from "./ingest.js";
export { type KeyFile, defaultKeyPath, generateKeyFile, readKeyFile, writeKeyFile } from "./keys.js";
export { newRepositoryId } from "./config.js";
export { openBackend, openRepository } from "./open-store.js";
export {
  CONSISTENCY_LEVELS,
  type ConsistencyLevel,
  type DamagedPit,
  type Pit,
  type PitDisk,
  deletePit,
  listPits,
  readPit,
  resolvePit,
  writePit,
} from "./pit.js";
export { Repository } from "./repository.js";
export { repositoryStats, type StoreStats } from "./stats.js";
export { verifyRepository, type VerifyReport } from "./verify.js";
export { type ChunkFrames, WorkerPool } from "./worker-pool.js";
export { forgetPits, type ForgetReport } from "./forget.js";
export { DEFAULT_RETENTION, parseRetention, planRetention, type RetentionPolicy } from "./retention.js";
