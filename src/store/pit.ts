import { LifeboatError } from "../base/index.js";
import type { BlockMapRef } from "./block-map.js";
import { ObjectKind } from "./codec.js";
import { PREFIX, pitName } from "./names.js";
import { type Repository, sha256 } from "./repository.js";

/**
 * A point-in-time snapshot: every disk of one source server at one consistency
 * point. PITs are objects in the repository (kind `pit`), so the catalog can be
 * rebuilt from the repository alone. A PIT is written last, after every chunk
 * and page it names is durable: a PIT that exists is complete.
 */
export const CONSISTENCY_LEVELS = ["application", "filesystem", "crash", "none"] as const;
export type ConsistencyLevel = (typeof CONSISTENCY_LEVELS)[number];

export interface PitDisk extends BlockMapRef {
  index: number;
  /** Where the disk came from on the source (device path or image file). */
  source: string;
  sizeBytes: number;
  chunkSize: number;
}

export interface Pit {
  format: 1;
  id: string;
  server: string;
  /** Monotonic per server: one more than the highest sequence seen when it was made. */
  seq: number;
  time: string;
  timeMs: number;
  consistency: ConsistencyLevel;
  disks: PitDisk[];
  /** Free-form labels (who made it, why). */
  labels: Record<string, string>;
}

export type NewPit = Omit<Pit, "format" | "id" | "seq" | "time"> & { seq?: number };

const SERVER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function validateServerName(name: string): void {
  if (!SERVER_NAME.test(name)) {
    throw new LifeboatError("STORE_BAD_SERVER_NAME", `server name ${JSON.stringify(name)} is not allowed`, {
      hint: "use letters, digits, '.', '_' and '-' (at most 128, starting with a letter or digit)",
      exitCode: 2,
    });
  }
}

/** Writes a PIT after its data is durable; assigns its id and sequence number. */
export async function writePit(repo: Repository, draft: NewPit): Promise<Pit> {
  validateServerName(draft.server);
  if (!CONSISTENCY_LEVELS.includes(draft.consistency)) {
    throw new LifeboatError("STORE_BAD_CONSISTENCY", `unknown consistency level ${draft.consistency}`, {
      hint: `use one of ${CONSISTENCY_LEVELS.join(", ")}`,
    });
  }
  const seq = draft.seq ?? (await nextSeq(repo, draft.server));
  const body = {
    format: 1 as const,
    server: draft.server,
    seq,
    time: new Date(draft.timeMs).toISOString(),
    timeMs: draft.timeMs,
    consistency: draft.consistency,
    disks: draft.disks,
    labels: draft.labels,
  };
  const id = sha256(Buffer.from(JSON.stringify(body)))
    .toString("hex")
    .slice(0, 24);
  const pit: Pit = { ...body, id };
  await repo.flush(); // everything the PIT names is durable before the PIT exists
  await repo.putMeta(pitName(id), pit, ObjectKind.pit, { durable: true });
  return pit;
}

async function nextSeq(repo: Repository, server: string): Promise<number> {
  let max = 0;
  for (const p of await listPits(repo, { server, damaged: [] }))
    if (p.server === server && p.seq > max) max = p.seq;
  return max + 1;
}

export async function readPit(repo: Repository, id: string): Promise<Pit> {
  if (!/^[0-9a-f]{24}$/.test(id)) {
    throw new LifeboatError("PIT_NOT_FOUND", `${JSON.stringify(id)} is not a PIT id`, {
      hint: "list PITs with `lifeboat pits list`",
      exitCode: 2,
    });
  }
  try {
    return await repo.getMeta<Pit>(pitName(id), ObjectKind.pit);
  } catch (err) {
    if (err instanceof LifeboatError && err.code === "STORE_OBJECT_MISSING") {
      throw new LifeboatError("PIT_NOT_FOUND", `PIT ${id} does not exist`, {
        hint: "list PITs with `lifeboat pits list`",
      });
    }
    throw err;
  }
}

export interface DamagedPit {
  id: string;
  code: string;
  message: string;
}

/**
 * Every PIT in the repository, oldest first (by server, then sequence). A PIT
 * object that cannot be read throws, unless the caller collects such PITs in
 * `damaged` (then the readable ones are returned): GC must stop on one, while
 * listing, importing and statistics go on and say so.
 */
export async function listPits(
  repo: Repository,
  opts: { server?: string; damaged?: DamagedPit[] } = {},
): Promise<Pit[]> {
  const ids: string[] = [];
  for await (const o of repo.backend.list(PREFIX.pits)) ids.push(o.name.slice(PREFIX.pits.length));
  const pits: Pit[] = [];
  const queue = [...ids];
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      for (let id = queue.pop(); id !== undefined; id = queue.pop()) {
        try {
          const pit = await readPit(repo, id);
          if (!opts.server || pit.server === opts.server) pits.push(pit);
        } catch (err) {
          // Listed a moment ago and gone now: forgotten meanwhile (retention runs beside a listing).
          if (err instanceof LifeboatError && err.code === "PIT_NOT_FOUND" && /^[0-9a-f]{24}$/.test(id))
            continue;
          if (!opts.damaged || (err instanceof LifeboatError && err.code === "PIT_NOT_FOUND")) throw err;
          const e = err instanceof LifeboatError ? err : new LifeboatError("STORE_IO", String(err));
          opts.damaged.push({ id, code: e.code, message: e.message });
        }
      }
    }),
  );
  return pits.sort((a, b) => a.server.localeCompare(b.server) || a.seq - b.seq || a.timeMs - b.timeMs);
}

/** Resolves "latest" or an id; with `latest` a server is required. */
export async function resolvePit(repo: Repository, ref: string, server?: string): Promise<Pit> {
  if (ref !== "latest") {
    const pit = await readPit(repo, ref);
    if (server && pit.server !== server) {
      throw new LifeboatError("PIT_NOT_FOUND", `PIT ${ref} belongs to server ${pit.server}, not ${server}`, {
        hint: "check --server",
        exitCode: 2,
      });
    }
    return pit;
  }
  const pits = await listPits(repo, { ...(server ? { server } : {}), damaged: [] });
  const latest = pits.sort((a, b) => a.seq - b.seq || a.timeMs - b.timeMs).at(-1);
  if (!latest) {
    throw new LifeboatError(
      "PIT_NOT_FOUND",
      `no PIT${server ? ` for server ${server}` : ""} in the repository`,
      {
        hint: "list PITs with `lifeboat pits list`",
      },
    );
  }
  return latest;
}

export async function deletePit(repo: Repository, id: string): Promise<void> {
  await repo.backend.delete(pitName(id));
}
