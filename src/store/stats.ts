import { PREFIX } from "./names.js";
import { type DamagedPit, listPits } from "./pit.js";
import type { Repository } from "./repository.js";

export interface StoreStats {
  repositoryId: string;
  location: string;
  chunkSize: number;
  pits: number;
  /** PIT objects that cannot be read (`store verify` tells more). */
  damagedPits: DamagedPit[];
  servers: { name: string; pits: number; latest: string | null; logicalBytes: number }[];
  /** `trash`: packs and pages GC has taken out of use, deleted by a later run unless referenced again. */
  objects: { packs: number; pages: number; trash: number; other: number };
  storedBytes: { packs: number; pages: number; trash: number; other: number; total: number };
}

/** Counts objects and bytes by kind, and PITs by server. Reads listings and PITs, never chunk data. */
export async function repositoryStats(repo: Repository): Promise<StoreStats> {
  const objects = { packs: 0, pages: 0, trash: 0, other: 0 };
  const storedBytes = { packs: 0, pages: 0, trash: 0, other: 0, total: 0 };
  for await (const o of repo.backend.list("")) {
    const kind = o.name.startsWith(PREFIX.packs)
      ? "packs"
      : o.name.startsWith(PREFIX.pages)
        ? "pages"
        : o.name.startsWith(PREFIX.trash)
          ? "trash"
          : "other";
    objects[kind]++;
    storedBytes[kind] += o.size;
    storedBytes.total += o.size;
  }
  const damaged: DamagedPit[] = [];
  const pits = await listPits(repo, { damaged });
  const byServer = new Map<string, StoreStats["servers"][number]>();
  for (const p of pits) {
    const s = byServer.get(p.server) ?? { name: p.server, pits: 0, latest: null, logicalBytes: 0 };
    s.pits++;
    s.latest = p.id;
    s.logicalBytes = p.disks.reduce((n, d) => n + d.sizeBytes, 0);
    byServer.set(p.server, s);
  }
  return {
    repositoryId: repo.config.id,
    location: repo.backend.properties.location,
    chunkSize: repo.config.chunkSize,
    pits: pits.length,
    damagedPits: damaged,
    servers: [...byServer.values()],
    objects,
    storedBytes,
  };
}
