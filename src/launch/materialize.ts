import { promises as fs } from "node:fs";
import path from "node:path";
import { LifeboatError, writeFileAtomic } from "../base/index.js";
import { type Pit, type Repository, WorkerPool, exportDisk } from "../store/index.js";

/** One disk of a PIT, written out for a launch. */
export interface MaterializedDisk {
  index: number;
  /** The image file, or the block device it was written to. */
  path: string;
  sizeBytes: number;
  /** SHA-256 of the disk's sizeBytes bytes, hex. */
  sha256: string;
  /** Bytes that were not zero (what had to be read from the repository). */
  dataBytes: number;
  /** True when an earlier attempt of the same job had finished this disk. */
  resumed: boolean;
}

export interface MaterializeProgress {
  bytesDone: number;
  bytesTotal: number;
}

export interface MaterializeOptions {
  /** Write disk i to devices[i] instead of `dir/disk-<i>.img` (the block target; checked beforehand). */
  devices?: string[];
  onProgress?: (p: MaterializeProgress) => void;
  log?: (message: string) => void;
  signal?: AbortSignal;
}

/** The manifest beside the images (`manifest.json`); fields are only ever added. */
export interface LaunchManifest {
  format: 1;
  jobId: string;
  server: string;
  pit: { id: string; time: string; consistency: string; seq: number };
  disks: {
    index: number;
    file: string;
    sizeBytes: number;
    /** SHA-256 of the disk as the PIT holds it (what `store export` writes). */
    sha256: string;
    source: string;
    /** SHA-256 of the file as launched, when preparing the copy changed it (launched-copy changes). */
    launchedSha256?: string;
  }[];
}

const DONE = (i: number) => `.disk-${i}.done.json`;

export function imagePath(dir: string, index: number): string {
  return path.join(dir, `disk-${index}.img`);
}

/**
 * Streams every disk of `pit` out of the repository, all disks at once: raw
 * sparse images in `dir` (or the given block devices), every chunk checked
 * against its id (exportDisk), and hashed for the manifest as it is written. Resumable: a
 * disk that an earlier attempt finished is recorded by a marker written after
 * its image was synced and renamed into place, and is kept; any other disk is
 * written again from the start. A corrupt chunk fails the whole call with an
 * error naming the disk and byte range; the manifest is written last, so a
 * directory without one never holds a finished launch.
 */
export async function materializePit(
  repo: Repository,
  pit: Pit,
  dir: string,
  jobId: string,
  opts: MaterializeOptions = {},
): Promise<{ disks: MaterializedDisk[]; manifestPath: string }> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  if (opts.devices && opts.devices.length !== pit.disks.length)
    throw new LifeboatError(
      "LAUNCH_DEVICE_COUNT",
      `server ${pit.server} has ${pit.disks.length} disks in PIT ${pit.id}, ${opts.devices.length} devices were given`,
      { hint: "give one block device per disk, in disk order" },
    );
  const total = pit.disks.reduce((n, d) => n + d.sizeBytes, 0);
  const done = new Map<number, number>();
  const report = () =>
    opts.onProgress?.({ bytesDone: [...done.values()].reduce((a, b) => a + b, 0), bytesTotal: total });
  // One pool of decode workers for all the disks; every disk runs to its end before this
  // returns (none is left writing after a failure); the disks that finished are kept for a
  // resumed attempt.
  const pool = new WorkerPool(repo.keys, repo.config.compression.level);
  const settled = await Promise.allSettled(
    pit.disks.map(async (d, i): Promise<MaterializedDisk> => {
      const out = opts.devices?.[i] ?? imagePath(dir, d.index);
      const earlier = opts.devices ? undefined : await finishedBefore(dir, pit, d.index, out);
      if (earlier) {
        opts.log?.(`disk ${d.index}: kept from an earlier attempt of this job (${out})`);
        done.set(d.index, d.sizeBytes);
        report();
        return { ...earlier, resumed: true };
      }
      opts.signal?.throwIfAborted();
      const r = await exportDisk(repo, pit, d.index, out, {
        overwrite: true,
        pool,
        sha256: true,
        ...(opts.signal ? { signal: opts.signal } : {}),
        onProgress: (p) => {
          done.set(d.index, p.bytesDone);
          report();
        },
      });
      opts.signal?.throwIfAborted();
      const sha256 = r.sha256!;
      const disk = { index: d.index, path: out, sizeBytes: d.sizeBytes, sha256, dataBytes: r.dataBytes };
      // Not synced: the image was synced and renamed before it, so a marker that survives a crash
      // always names a whole image, and a lost one only costs writing the disk again. The
      // manifest's sync at the end makes the whole directory durable.
      if (!opts.devices)
        await writeFileAtomic(path.join(dir, DONE(d.index)), JSON.stringify({ pitId: pit.id, ...disk }), {
          mode: 0o600,
          durable: false,
        });
      opts.log?.(
        `disk ${d.index}: ${d.sizeBytes} bytes written to ${out} (${r.dataBytes} not zero), sha256 ${sha256}`,
      );
      return { ...disk, resumed: false };
    }),
  );
  await pool.close();
  const failed = settled.find((r) => r.status === "rejected");
  if (failed) throw failed.reason;
  const disks = settled.map((r) => (r as PromiseFulfilledResult<MaterializedDisk>).value);
  const manifest: LaunchManifest = {
    format: 1,
    jobId,
    server: pit.server,
    pit: { id: pit.id, time: pit.time, consistency: pit.consistency, seq: pit.seq },
    disks: disks.map((d) => ({
      index: d.index,
      file: opts.devices ? d.path : path.basename(d.path),
      sizeBytes: d.sizeBytes,
      sha256: d.sha256,
      source: pit.disks.find((p) => p.index === d.index)?.source ?? "",
    })),
  };
  const manifestPath = path.join(dir, "manifest.json");
  await writeFileAtomic(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o600 });
  for (const d of disks) await fs.rm(path.join(dir, DONE(d.index)), { force: true });
  return { disks, manifestPath };
}

/** The record of a disk an earlier attempt finished, when its image is still there at its size. */
async function finishedBefore(
  dir: string,
  pit: Pit,
  index: number,
  out: string,
): Promise<Omit<MaterializedDisk, "resumed"> | undefined> {
  const text = await fs.readFile(path.join(dir, DONE(index)), "utf8").catch(() => undefined);
  if (text === undefined) return undefined;
  let rec: Omit<MaterializedDisk, "resumed"> & { pitId?: string };
  try {
    rec = JSON.parse(text) as typeof rec;
  } catch {
    return undefined;
  }
  const st = await fs.stat(out).catch(() => undefined);
  if (rec.pitId !== pit.id || !st?.isFile() || st.size !== rec.sizeBytes) return undefined;
  return { index, path: out, sizeBytes: rec.sizeBytes, sha256: rec.sha256, dataBytes: rec.dataBytes };
}
