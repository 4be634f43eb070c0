/**
 * The demo's application: a separate process that writes files and database
 * rows to the mounted source filesystem, as an application on a source
 * server does. It must not share the agent's process: while the agent holds
 * the filesystem frozen for a PIT, this process's writes block, and so would
 * the agent's own thread. One JSON line on stdout per durable write:
 * `{"file", "sha256", "at"}` after a file's fsync, `{"rows", "at"}` after a
 * committed transaction. A line `write N` on stdin writes N files at once
 * and answers `{"wrote": N}`; otherwise it writes one file every 100 ms
 * until stdin closes.
 */
import { createHash, randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as delay } from "node:timers/promises";
import BetterSqlite3 from "better-sqlite3";

export const DB_PATH = "db/orders.sqlite";
export const ROWS_PER_FILE = 20;

/** Half random (incompressible), half text: what real files look like to compression. */
export function fileBody(seq: number, size: number): Buffer {
  const text = Buffer.from(`file ${seq}: order lines, invoices and logs\n`.repeat(size / 32)).subarray(
    0,
    size / 2,
  );
  return Buffer.concat([randomBytes(size / 2), text]);
}

/** Inserts `n` rows in one transaction; returns the table's row count after it. */
export function insertRows(db: BetterSqlite3.Database, n: number): number {
  const insert = db.prepare("INSERT INTO orders (item, qty) VALUES (?, ?)");
  db.transaction(() => {
    for (let i = 0; i < n; i++) insert.run(`item-${randomBytes(4).toString("hex")}`, 1 + (i % 9));
  })();
  return (db.prepare("SELECT count(*) AS n FROM orders").get() as { n: number }).n;
}

async function main(mnt: string): Promise<void> {
  const db = new BetterSqlite3(path.join(mnt, DB_PATH));
  db.pragma("journal_mode = DELETE");
  db.pragma("synchronous = FULL");
  const emit = (o: object) => process.stdout.write(`${JSON.stringify(o)}\n`);
  let seq = 1000;
  const writeFile = async () => {
    const name = `data/live-${String(seq).padStart(5, "0")}.bin`;
    const body = fileBody(seq++, 128 << 10);
    const fh = await fs.open(path.join(mnt, name), "wx");
    try {
      await fh.writeFile(body);
      await fh.sync();
    } finally {
      await fh.close();
    }
    emit({ file: name, sha256: createHash("sha256").update(body).digest("hex"), at: Date.now() });
    emit({ rows: insertRows(db, ROWS_PER_FILE), at: Date.now() });
  };
  let open = true;
  let queue = Promise.resolve();
  const lines = createInterface({ input: process.stdin });
  lines.on("line", (line) => {
    const n = Number(/^write (\d+)$/.exec(line)?.[1] ?? 0);
    queue = queue.then(async () => {
      for (let i = 0; i < n; i++) await writeFile();
      emit({ wrote: n });
    });
  });
  lines.on("close", () => (open = false));
  while (open) {
    queue = queue.then(writeFile);
    await queue;
    await delay(100);
  }
  await queue;
  db.close();
}

if (process.argv[1] && import.meta.url.endsWith(path.basename(process.argv[1]))) {
  await main(process.argv[2]!);
}
