/**
 * What goes into the benchmark filesystem: an OS tree, text logs, SQLite
 * databases, incompressible files and duplicates of some of them. Each
 * generator writes up to a byte budget and reports what it wrote, so the image
 * description can say exactly what the tools were fed.
 */
import Database from "better-sqlite3";
import {
  closeSync,
  copyFileSync,
  fsyncSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  writeSync,
} from "node:fs";
import { writeFileSync } from "node:fs";
import path from "node:path";
import type { Rng } from "./rng.js";
import { MiB, run } from "./sys.js";

export interface Written {
  bytes: number;
  files: number;
}

/** Size a file of `bytes` takes on ext4 (4 KiB blocks), for budgeting. */
function blocksOf(bytes: number): number {
  return Math.ceil(bytes / 4096) * 4096;
}

// ---------------------------------------------------------------------------
// OS tree

/**
 * Copies `subdirs` of `srcRoot` into `destRoot` (same relative paths), taking
 * entries in sorted order while they fit in `budget` (a file its blocks, a
 * directory one block; symlinks and device nodes are free). tar does the copy
 * so ownership, modes, links and devices survive exactly.
 */
export function copyTreeWithBudget(
  srcRoot: string,
  subdirs: readonly string[],
  destRoot: string,
  budget: number,
  listFile: string,
): Written & { skippedFiles: number } {
  const entries: string[] = [];
  let bytes = 0;
  let files = 0;
  let skippedFiles = 0;
  const visit = (rel: string): void => {
    const st = lstatSync(path.join(srcRoot, rel));
    // A directory costs at least a block; one that does not fit is left out with its contents.
    const cost = st.isFile() ? blocksOf(st.size) : st.isDirectory() ? 4096 : 0;
    if (bytes + cost > budget) {
      if (st.isFile()) skippedFiles++;
      return;
    }
    bytes += cost;
    if (st.isFile()) files++;
    entries.push(rel);
    if (st.isDirectory()) {
      for (const name of readdirSync(path.join(srcRoot, rel)).sort()) visit(path.join(rel, name));
    }
  };
  for (const d of subdirs) visit(d);
  writeFileSync(listFile, entries.map((e) => e + "\0").join(""));
  run("bash", [
    "-o",
    "pipefail",
    "-c",
    'tar -C "$1" --null --no-recursion -T "$2" --numeric-owner -cf - | tar -C "$3" --numeric-owner -xpf -',
    "bash",
    srcRoot,
    listFile,
    destRoot,
  ]);
  return { bytes, files, skippedFiles };
}

// ---------------------------------------------------------------------------
// Logs: text that compresses well, like a real /var/log.

const LEVELS = ["INFO", "INFO", "INFO", "INFO", "DEBUG", "DEBUG", "WARN", "ERROR"];
const COMPONENTS = ["http", "db", "auth", "scheduler", "cache", "mailer", "billing", "search"];
const ROUTES = [
  "/api/v1/orders",
  "/api/v1/orders/{id}",
  "/api/v1/customers/{id}",
  "/api/v1/search",
  "/login",
  "/logout",
  "/healthz",
  "/static/app.{id}.js",
  "/static/style.css",
  "/admin/reports/{id}",
];
const MESSAGES = [
  "request completed",
  "cache miss, loading from database",
  "slow query detected",
  "connection pool exhausted, waiting",
  "session refreshed",
  "job finished",
  "retrying after transient error",
  "payment authorised",
  "invalid token presented",
  "index rebuilt",
];
const AGENTS = [
  "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
  "curl/7.88.1",
  "Prometheus/2.48.0",
];

function hex(rng: Rng, n: number): string {
  let s = "";
  while (s.length < n) s += rng.next().toString(16).padStart(8, "0");
  return s.slice(0, n);
}

function route(rng: Rng): string {
  return rng.pick(ROUTES).replace("{id}", String(rng.int(100000)));
}

function appLine(rng: Rng, t: number): string {
  const ts = new Date(t).toISOString();
  const status = rng.float() < 0.93 ? 200 : rng.pick([301, 400, 403, 404, 500, 503]);
  return (
    `${ts} app-${rng.int(4)} ${rng.pick(COMPONENTS)}[${1000 + rng.int(30000)}]: ${rng.pick(LEVELS)} ` +
    `${rng.pick(MESSAGES)} request_id=${hex(rng, 16)} route=${route(rng)} status=${status} ` +
    `latency_ms=${rng.int(900)} user_id=${rng.int(50000)}\n`
  );
}

function accessLine(rng: Rng, t: number): string {
  const d = new Date(t).toUTCString();
  const ip = `10.${rng.int(256)}.${rng.int(256)}.${rng.int(256)}`;
  const method = rng.float() < 0.8 ? "GET" : "POST";
  return `${ip} - - [${d}] "${method} ${route(rng)} HTTP/1.1" ${rng.float() < 0.95 ? 200 : 404} ${rng.int(60000)} "-" "${rng.pick(AGENTS)}"\n`;
}

/** Writes one log file of about `size` bytes, lines of one kind, in 4 MiB appends. */
function writeLog(file: string, size: number, rng: Rng, line: (rng: Rng, t: number) => string): number {
  const fd = openSync(file, "w");
  let t = Date.UTC(2024, 0, 1) + rng.int(300) * 86_400_000;
  let written = 0;
  try {
    while (written < size) {
      const parts: string[] = [];
      let len = 0;
      while (len < 4 * MiB && written + len < size) {
        t += rng.int(250);
        const l = line(rng, t);
        parts.push(l);
        len += l.length;
      }
      written += writeSync(fd, parts.join(""));
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return written;
}

export function writeLogs(root: string, budget: number, rng: Rng): Written & { paths: string[] } {
  const dir = path.join(root, "var", "log", "app");
  mkdirSync(dir, { recursive: true });
  mkdirSync(path.join(root, "var", "log", "nginx"), { recursive: true });
  const paths: string[] = [];
  let bytes = 0;
  for (let i = 0; budget - bytes > 64 * 1024; i++) {
    const size = Math.min(budget - bytes, rng.range(4, 48) * MiB);
    const access = i % 3 === 2;
    const file = access
      ? path.join(root, "var", "log", "nginx", `access.log.${i}`)
      : path.join(dir, `app-${String(i).padStart(3, "0")}.log`);
    bytes += blocksOf(writeLog(file, size, rng.fork(file), access ? accessLine : appLine));
    paths.push(file);
  }
  return { bytes, files: paths.length, paths };
}

// ---------------------------------------------------------------------------
// SQLite: B-tree pages with a mix of text, integers and small blobs.

const FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Dennis", "Radia", "Linus", "Margaret"];
const LAST = [
  "Lovelace",
  "Hopper",
  "Turing",
  "Dijkstra",
  "Liskov",
  "Thompson",
  "Ritchie",
  "Perlman",
  "Hamilton",
];
const COUNTRIES = ["FR", "DE", "GB", "US", "NL", "ES", "IT", "SE", "PL", "BE"];
const STATUSES = ["pending", "paid", "shipped", "delivered", "refunded", "cancelled"];
const KINDS = ["login", "logout", "view", "purchase", "refund", "error", "export"];

function createSchema(db: Database.Database): void {
  db.exec(`
    CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL,
      country TEXT NOT NULL, created_at TEXT NOT NULL, balance_cents INTEGER NOT NULL);
    CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, sku TEXT NOT NULL,
      quantity INTEGER NOT NULL, price_cents INTEGER NOT NULL, status TEXT NOT NULL, note TEXT,
      created_at TEXT NOT NULL);
    CREATE INDEX orders_customer ON orders(customer_id);
    CREATE TABLE events (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL, payload BLOB);
  `);
}

/** Fills one database with random rows until its file reaches about `size` bytes. */
function writeDatabase(file: string, size: number, rng: Rng): { bytes: number; rows: number } {
  const db = new Database(file);
  try {
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = NORMAL");
    createSchema(db);
    const addCustomer = db.prepare("INSERT INTO customers VALUES (NULL, ?, ?, ?, ?, ?)");
    const addOrder = db.prepare("INSERT INTO orders VALUES (NULL, ?, ?, ?, ?, ?, ?, ?)");
    const addEvent = db.prepare("INSERT INTO events VALUES (NULL, ?, ?, ?)");
    const day = (): string => new Date(Date.UTC(2020, 0, 1) + rng.int(1500 * 86_400) * 1000).toISOString();
    let customers = 0;
    let rows = 0;
    const batch = db.transaction(() => {
      for (let i = 0; i < 500; i++) {
        const name = `${rng.pick(FIRST)} ${rng.pick(LAST)}`;
        addCustomer.run(
          name,
          `${name.replace(" ", ".").toLowerCase()}${rng.int(10000)}@example.com`,
          rng.pick(COUNTRIES),
          day(),
          rng.int(1_000_000),
        );
      }
      customers += 500;
      for (let i = 0; i < 4000; i++) {
        const note =
          rng.float() < 0.3 ? `gift wrap, deliver after ${rng.range(8, 18)}h, ref ${hex(rng, 12)}` : null;
        addOrder.run(
          rng.range(1, customers),
          `SKU-${hex(rng, 6).toUpperCase()}`,
          rng.range(1, 9),
          rng.int(50_000),
          rng.pick(STATUSES),
          note,
          day(),
        );
      }
      for (let i = 0; i < 2000; i++) addEvent.run(day(), rng.pick(KINDS), rng.bytes(rng.range(16, 400)));
      rows += 6500;
    });
    const fileSize = (): number =>
      Number(db.pragma("page_count", { simple: true })) * Number(db.pragma("page_size", { simple: true }));
    while (fileSize() < size) batch();
    db.pragma("wal_checkpoint(TRUNCATE)");
    return { bytes: fileSize(), rows };
  } finally {
    db.close();
  }
}

export function writeDatabases(
  root: string,
  budget: number,
  rng: Rng,
): Written & { rows: number; paths: string[] } {
  const dir = path.join(root, "var", "lib", "app");
  mkdirSync(dir, { recursive: true });
  const shares = [0.5, 0.3, 0.2]; // a main database, a smaller one, an archive
  const names = ["main.sqlite", "analytics.sqlite", "archive-2023.sqlite"];
  let bytes = 0;
  let rows = 0;
  const paths: string[] = [];
  shares.forEach((share, i) => {
    const file = path.join(dir, names[i] ?? `db-${i}.sqlite`);
    const r = writeDatabase(file, budget * share, rng.fork(file));
    bytes += blocksOf(r.bytes);
    rows += r.rows;
    paths.push(file);
  });
  return { bytes, files: paths.length, rows, paths };
}

// ---------------------------------------------------------------------------
// Incompressible files (media, archives, encrypted blobs): seeded random bytes.

export function writeRandomFile(file: string, size: number, rng: Rng): number {
  size = Math.floor(size);
  const fd = openSync(file, "w");
  try {
    for (let done = 0; done < size;) {
      const n = Math.min(4 * MiB, size - done);
      done += writeSync(fd, rng.bytes(n));
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return size;
}

export function writeRandomFiles(root: string, budget: number, rng: Rng): Written & { paths: string[] } {
  const dir = path.join(root, "srv", "media");
  mkdirSync(dir, { recursive: true });
  const paths: string[] = [];
  let bytes = 0;
  for (let i = 0; budget - bytes > 64 * 1024; i++) {
    // Sizes from 64 KiB to 32 MiB, log-uniform, with odd lengths so files end mid-block.
    const size = Math.min(budget - bytes, Math.floor(64 * 1024 * Math.pow(512, rng.float())) + rng.int(4096));
    const file = path.join(dir, `blob-${String(i).padStart(4, "0")}.bin`);
    bytes += blocksOf(writeRandomFile(file, size, rng.fork(file)));
    paths.push(file);
  }
  return { bytes, files: paths.length, paths };
}

// ---------------------------------------------------------------------------
// Duplicates: copies of files already in the image (backups, re-uploads).

export function writeDuplicates(root: string, sources: readonly string[], budget: number, rng: Rng): Written {
  const dir = path.join(root, "srv", "backup");
  mkdirSync(dir, { recursive: true });
  const pool = [...sources];
  let bytes = 0;
  let files = 0;
  while (pool.length > 0 && budget - bytes > 64 * 1024) {
    const [src] = pool.splice(rng.int(pool.length), 1);
    if (src === undefined) break;
    const cost = blocksOf(lstatSync(src).size);
    if (bytes + cost > budget) continue;
    copyFileSync(src, path.join(dir, `${files}-${path.basename(src)}`));
    bytes += cost;
    files++;
  }
  return { bytes, files };
}
