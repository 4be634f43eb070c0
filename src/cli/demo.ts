import { randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Command } from "commander";
import { LifeboatError } from "../base/index.js";
import {
  Repository,
  exportDisk,
  generateKeyFile,
  importDisks,
  newRepositoryId,
  openBackend,
  verifyRepository,
} from "../store/index.js";
import { formatBytes } from "./output.js";
import { action } from "./store.js";

/**
 * Until replication and launch exist, the demo shows the repository round
 * trip: a generated 256 MiB disk image with random, compressible and zero
 * regions is imported, changed, imported again, verified, and exported back
 * byte for byte — in a throw-away directory that is removed afterwards.
 */
export function demoCommand(): Command {
  return new Command("demo")
    .description("show Lifeboat end to end in a throw-away directory")
    .option("--keep", "keep the throw-away directory")
    .option("--exit", "stop when done (the default until the full demo exists)")
    .action(
      action<{ keep?: boolean }>(async (ctx, o) => {
        const dir = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-demo-"));
        const say = (s: string) => process.stdout.write(`${s}\n`);
        try {
          say(`demo directory: ${dir}`);
          const image = path.join(dir, "source-disk.img");
          await writeDemoImage(image, 256 << 20);
          say(`1. made a 256 MiB source disk image with random, text and zero regions: ${image}`);
          const backend = await openBackend(path.join(dir, "repo"), { logger: ctx.logger });
          const repo = await Repository.create(backend, generateKeyFile(newRepositoryId()));
          let t = Date.now();
          const first = await importDisks(repo, { server: "demo-server", disks: [image] });
          say(
            `2. imported it as PIT ${first.pit.id} in ${((Date.now() - t) / 1000).toFixed(2)}s: ${first.stats.newChunks} chunks, ${formatBytes(first.stats.storedBytes)} stored, ${formatBytes(first.stats.zeroBytes)} of zeros not stored`,
          );
          const fh = await fs.open(image, "r+");
          for (let i = 0; i < 10; i++)
            await fh.write(randomBytes(4096), 0, 4096, i * 20 * 1024 * 1024 + 4096);
          await fh.close();
          t = Date.now();
          const second = await importDisks(repo, { server: "demo-server", disks: [image] });
          say(
            `3. changed 10 blocks and imported again as PIT ${second.pit.id} in ${((Date.now() - t) / 1000).toFixed(2)}s: only ${second.stats.newChunks} new chunks (${formatBytes(second.stats.storedBytes)})`,
          );
          const report = await verifyRepository(repo, { readData: true });
          say(
            `4. verify --read-data: ${report.ok ? "no damage" : "DAMAGE FOUND"} in ${report.pits} PITs, ${report.referencedChunks} chunks`,
          );
          const out = path.join(dir, "restored.img");
          t = Date.now();
          await exportDisk(repo, second.pit, 0, out);
          const same = (await fs.readFile(out)).equals(await fs.readFile(image));
          say(
            `5. exported the latest PIT in ${((Date.now() - t) / 1000).toFixed(2)}s: ${same ? "byte-identical to the source" : "DIFFERENT from the source"}`,
          );
          await repo.close();
          if (!report.ok || !same)
            throw new LifeboatError("DEMO_FAILED", "the round trip did not come back identical");
        } finally {
          if (o.keep) say(`kept ${dir}`);
          else await fs.rm(dir, { recursive: true, force: true });
        }
      }),
    );
}

/** Random (incompressible), repetitive text (compressible) and zero regions, in 8 MiB stripes. */
async function writeDemoImage(file: string, size: number): Promise<void> {
  const fh = await fs.open(file, "w");
  try {
    const stripe = 8 << 20;
    const text = Buffer.from(
      "Lifeboat demo log line: replication ok, lag 2s, backlog 0 bytes\n"
        .repeat(stripe / 64)
        .slice(0, stripe),
    );
    for (let off = 0, i = 0; off < size; off += stripe, i++) {
      const kind = i % 3;
      if (kind === 0) await fh.write(randomBytes(stripe), 0, stripe, off);
      else if (kind === 1) await fh.write(text, 0, stripe, off);
    }
    await fh.truncate(size);
  } finally {
    await fh.close();
  }
}
