/**
 * The demo's source disk: an ext4 filesystem with files and a small SQLite
 * database. As root with loop devices, it is mounted from a loop device and
 * written to while it replicates (the agent tracks it through tracefs when
 * it can); otherwise it is an image file made with `mkfs.ext4 -d` and
 * changed between PITs with `debugfs -w` (the agent scans it). Every file
 * written records its SHA-256 and when it became durable, and every database
 * commit its row count, so that a drill can be checked against what the
 * source held when the PIT was asked for.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { constants, promises as fs } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import BetterSqlite3 from "better-sqlite3";
import { LifeboatError } from "../base/index.js";
import { DB_PATH, ROWS_PER_FILE, fileBody, insertRows } from "./demo-writer.js";

const run = promisify(execFile);

export interface KnownFile {
  sha256: string;
  /** When its bytes were on disk (after fsync, or after debugfs closed the image). */
  durableAt: number;
}

export interface DemoSource {
  kind: "loop" | "image";
  /** Why this kind was chosen, for the operator. */
  why: string;
  /** What the agent replicates: the loop device or the image file. */
  disk: { path: string; kind: "device" | "image" };
  known: Map<string, KnownFile>;
  /** [commit time, rows after it], in order. */
  commits: [number, number][];
  /** Writes `files` more files (and, on a mounted disk, database rows); returns when they are durable, saying what it wrote. */
  writeMore(files: number): Promise<string>;
  /** Stops writing, unmounts and detaches; safe to call twice. */
  close(): Promise<void>;
}

/** Chooses and creates the demo's source disk in `dir`; `prefer` "image" forces the image file. */
export async function createDemoSource(
  dir: string,
  sizeBytes: number,
  prefer: "auto" | "image",
): Promise<DemoSource> {
  const seed = path.join(dir, "seed");
  const known = new Map<string, KnownFile>();
  const commits: [number, number][] = [];
  await writeSeed(seed, known, commits);
  const image = path.join(dir, "source-disk.img");
  await fs.writeFile(image, "");
  await fs.truncate(image, sizeBytes);
  await tool("mkfs.ext4", ["-q", "-F", "-b", "4096", "-L", "demo-data", "-d", seed, image]);
  const now = Date.now();
  for (const f of known.values()) f.durableAt = now;
  const loopWhy = prefer === "image" ? "an image file was asked for" : await loopUnavailable();
  if (loopWhy === null) return loopSource(dir, image, known, commits);
  return imageSource(dir, image, known, commits, loopWhy);
}

/** Why a loop device cannot be used here, or null when it can. */
async function loopUnavailable(): Promise<string | null> {
  if (process.getuid?.() !== 0) return "not running as root, so no loop device can be attached";
  try {
    await fs.access("/dev/loop-control", constants.W_OK);
  } catch {
    return "/dev/loop-control is missing, so no loop device can be attached";
  }
  return null;
}

async function writeSeed(seed: string, known: Map<string, KnownFile>, commits: [number, number][]) {
  await fs.mkdir(path.join(seed, "data"), { recursive: true });
  await fs.mkdir(path.join(seed, "db"), { recursive: true });
  await fs.writeFile(
    path.join(seed, "README.txt"),
    "Lifeboat demo: files and a database written while this disk replicates.\n",
  );
  known.set("README.txt", {
    sha256: sha(await fs.readFile(path.join(seed, "README.txt"))),
    durableAt: 0,
  });
  for (let i = 0; i < 16; i++) {
    const name = `data/seed-${String(i).padStart(3, "0")}.bin`;
    const body = fileBody(i, 256 << 10);
    await fs.writeFile(path.join(seed, name), body);
    known.set(name, { sha256: sha(body), durableAt: 0 });
  }
  const db = new BetterSqlite3(path.join(seed, DB_PATH));
  db.pragma("journal_mode = DELETE");
  db.exec("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL, qty INTEGER NOT NULL)");
  insertRows(db, 100);
  db.close();
  commits.push([0, 100]);
}

async function loopSource(
  dir: string,
  image: string,
  known: Map<string, KnownFile>,
  commits: [number, number][],
): Promise<DemoSource> {
  const device = (await tool("losetup", ["--find", "--show", image])).trim();
  const mnt = path.join(dir, "mnt");
  await fs.mkdir(mnt);
  let mounted = false;
  let closed = false;
  let writer: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  const close = async () => {
    if (closed) return;
    closed = true;
    writer?.stdin?.end();
    const late = setTimeout(() => writer?.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(late);
    if (mounted) await tool("umount", [mnt]).catch(() => tool("umount", ["-l", mnt]));
    await tool("losetup", ["-d", device]).catch(() => undefined);
  };
  const waiters: ((n: number) => void)[] = [];
  try {
    await tool("mount", ["-t", "ext4", device, mnt]);
    mounted = true;
    const child = spawn(
      process.execPath,
      [fileURLToPath(new URL("./demo-writer.js", import.meta.url)), mnt],
      {
        stdio: ["pipe", "pipe", "inherit"],
      },
    );
    writer = child;
    exited = new Promise((resolve) => child.once("close", () => resolve()));
    createInterface({ input: child.stdout }).on("line", (line) => {
      const m = JSON.parse(line) as {
        file?: string;
        sha256?: string;
        rows?: number;
        wrote?: number;
        at?: number;
      };
      if (m.file) known.set(m.file, { sha256: m.sha256!, durableAt: m.at! });
      if (m.rows !== undefined) commits.push([m.at!, m.rows]);
      if (m.wrote !== undefined) waiters.shift()?.(m.wrote);
    });
  } catch (err) {
    await close();
    throw err;
  }
  return {
    kind: "loop",
    why: `running as root: ext4 on ${device}, mounted at ${mnt}, written to by another process while it replicates`,
    disk: { path: device, kind: "device" },
    known,
    commits,
    writeMore: async (files) => {
      const done = new Promise<number>((resolve) => waiters.push(resolve));
      writer.stdin!.write(`write ${files}\n`);
      const stopped = exited.then(() => {
        throw new LifeboatError("DEMO_FAILED", "the demo's writer process stopped");
      });
      await Promise.race([done, stopped]);
      return `${files} more files and ${files * ROWS_PER_FILE} database rows, each synced`;
    },
    close,
  };
}

async function imageSource(
  dir: string,
  image: string,
  known: Map<string, KnownFile>,
  commits: [number, number][],
  why: string,
): Promise<DemoSource> {
  let seq = 1000;
  const staging = path.join(dir, "staging");
  await fs.mkdir(staging);
  return {
    kind: "image",
    why: `${why}: an ext4 image file made with mkfs.ext4 -d, changed with debugfs between PITs (scan mode)`,
    disk: { path: image, kind: "image" },
    known,
    commits,
    writeMore: async (files) => {
      const cmds: string[] = [];
      const names: [string, string][] = [];
      for (let i = 0; i < files; i++) {
        const name = `data/more-${String(seq).padStart(5, "0")}.bin`;
        const body = fileBody(seq++, 128 << 10);
        const local = path.join(staging, path.basename(name));
        await fs.writeFile(local, body);
        cmds.push(`write ${local} ${name}`);
        names.push([name, sha(body)]);
      }
      const script = path.join(staging, "commands");
      await fs.writeFile(script, cmds.join("\n") + "\n");
      await tool("debugfs", ["-w", "-f", script, image]);
      const now = Date.now();
      for (const [name, sha256] of names) known.set(name, { sha256, durableAt: now });
      return `${files} more files with debugfs`;
    },
    close: async () => {},
  };
}

export interface DrillCheck {
  filesChecked: number;
  rows: number;
  rowsExpected: number;
}

/**
 * Checks a drill's copy of the source disk: e2fsck finds nothing, every file
 * durable before `pitAskedAt` is there with its SHA-256, and the database
 * passes its integrity check with at least the rows committed by then.
 * DEMO_FAILED names the first difference.
 */
export async function checkDrillDisk(
  source: DemoSource,
  disk: string,
  pitAskedAt: number,
  work: string,
): Promise<DrillCheck> {
  try {
    await run("e2fsck", ["-fn", disk]);
  } catch (err) {
    const out = (err as { stdout?: string }).stdout ?? "";
    throw new LifeboatError("DEMO_FAILED", `e2fsck found problems in the drill's filesystem: ${out.trim()}`);
  }
  const out = path.join(work, "drill-files");
  await fs.rm(out, { recursive: true, force: true });
  await fs.mkdir(out);
  await tool("debugfs", ["-R", `rdump / ${out}`, disk]);
  let filesChecked = 0;
  for (const [name, f] of source.known) {
    if (f.durableAt > pitAskedAt) continue; // durable after the ask: maybe in the PIT, maybe not
    let got: string;
    try {
      got = sha(await fs.readFile(path.join(out, name)));
    } catch {
      throw new LifeboatError("DEMO_FAILED", `${name}, written before the PIT, is missing from the drill`);
    }
    if (got !== f.sha256)
      throw new LifeboatError("DEMO_FAILED", `${name} differs in the drill from what the source held`);
    filesChecked++;
  }
  const rowsExpected = source.commits.filter(([t]) => t <= pitAskedAt).at(-1)?.[1] ?? 0;
  const db = new BetterSqlite3(path.join(out, DB_PATH));
  try {
    const integrity = db.pragma("integrity_check", { simple: true });
    if (integrity !== "ok")
      throw new LifeboatError(
        "DEMO_FAILED",
        `the drill's database fails its integrity check: ${String(integrity)}`,
      );
    const rows = (db.prepare("SELECT count(*) AS n FROM orders").get() as { n: number }).n;
    if (rows < rowsExpected)
      throw new LifeboatError(
        "DEMO_FAILED",
        `the drill's database has ${rows} rows; ${rowsExpected} were committed before the PIT`,
      );
    return { filesChecked, rows, rowsExpected };
  } finally {
    db.close();
  }
}

function sha(b: Buffer): string {
  return createHash("sha256").update(b).digest("hex");
}

async function tool(cmd: string, args: string[]): Promise<string> {
  try {
    return (await run(cmd, args, { maxBuffer: 16 << 20 })).stdout;
  } catch (err) {
    const e = err as { code?: string; stderr?: string; message: string };
    throw new LifeboatError(
      "DEMO_FAILED",
      e.code === "ENOENT"
        ? `${cmd} is not installed`
        : `${cmd} ${args.join(" ")} failed: ${(e.stderr ?? e.message).trim()}`,
      {
        hint:
          e.code === "ENOENT" ? "install e2fsprogs (mkfs.ext4, debugfs, e2fsck) and util-linux" : undefined,
      },
    );
  }
}
