/**
 * Checks shared by the agent fault tests: the device as it is (read past the
 * page cache, for `whileFrozen` hooks), and a PIT exported from the site's
 * repository compared with such a snapshot.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFile, rm, writeFile } from "node:fs/promises";
import { DiskReader } from "../../src/agent/index.js";
import { exportDisk, listPits, type Pit } from "../../src/store/index.js";
import type { Site } from "./lifeboat-site.js";

/** Whatever opens the repository: a Site, or a server run as a child process. */
export type RepoSource = Pick<Site, "openRepo">;

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` every 100 ms until it holds; fails after `ms` with `what` and the last `detail()`. */
export async function until(
  what: string,
  fn: () => boolean | Promise<boolean>,
  ms = 60_000,
  detail: () => unknown = () => "",
): Promise<void> {
  const end = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} ${JSON.stringify(detail())}`);
    await sleep(100);
  }
}

/** Writes the whole device, read with O_DIRECT, to `file`. */
export async function snapshotDevice(device: string, file: string): Promise<void> {
  const r = await DiskReader.open(device);
  try {
    await writeFile(file, await r.read(0, r.size));
  } finally {
    await r.close();
  }
}

/** The PIT `pitId` of `serverName`, from the site's repository. */
export async function findPit(site: RepoSource, serverName: string, pitId: string): Promise<Pit> {
  const repo = await site.openRepo();
  try {
    const pit = (await listPits(repo, { server: serverName })).find((p) => p.id === pitId);
    assert.ok(pit, `PIT ${pitId} of ${serverName} is in the repository`);
    return pit;
  } finally {
    await repo.close();
  }
}

/** Exports disk `disk` of PIT `pitId` to `out`. */
export async function exportPit(
  site: RepoSource,
  serverName: string,
  pitId: string,
  out: string,
  disk = 0,
): Promise<Pit> {
  const repo = await site.openRepo();
  try {
    const pit = (await listPits(repo, { server: serverName })).find((p) => p.id === pitId);
    assert.ok(pit, `PIT ${pitId} of ${serverName} is in the repository`);
    await exportDisk(repo, pit, disk, out);
    return pit;
  } finally {
    await repo.close();
  }
}

/** Exports the PIT and asserts it is byte-identical to `frozenImage` and (ext4) passes `fsck -n`. */
export async function assertPitIsSnapshot(
  site: RepoSource,
  serverName: string,
  pitId: string,
  frozenImage: string,
  out: string,
  opts: { fsck?: boolean } = {},
): Promise<void> {
  await exportPit(site, serverName, pitId, out);
  const [got, want] = await Promise.all([readFile(out), readFile(frozenImage)]);
  assert.equal(got.length, want.length);
  if (!got.equals(want)) {
    const bs = 64 * 1024;
    const differ: number[] = [];
    for (let o = 0; o < got.length; o += bs)
      if (!got.subarray(o, o + bs).equals(want.subarray(o, o + bs))) differ.push(o / bs);
    assert.fail(
      `PIT ${pitId} differs from the frozen device in 64 KiB blocks ${differ.slice(0, 20).join(",")}`,
    );
  }
  if (opts.fsck ?? true) {
    const fsck = spawnSync("fsck.ext4", ["-n", "-f", out], { encoding: "utf8" });
    assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
  }
  await rm(out, { force: true });
}
