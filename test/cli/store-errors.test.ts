/**
 * The `lifeboat store` command line when things are wrong: every mistake an
 * operator can make gives a clear error with a stable code and the documented
 * exit status, and leaves the repository (and the key files) exactly as they
 * were. Plus the JSON shapes scripts rely on when things are right.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { chmod, cp, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { CONSISTENCY_LEVELS } from "../../src/store/index.js";

const ROOT = path.resolve(import.meta.dirname, "../../..");
const BIN = path.join(ROOT, "bin", "lifeboat.js");
const MiB = 1024 * 1024;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

let tmp = "";
let home = "";

/**
 * Runs the CLI with HOME in the temp dir (so no real ~/.config is read or
 * written) and without any LIFEBOAT_* variable from the caller's environment.
 */
function lifeboat(args: string[]): Promise<Run> {
  const env: NodeJS.ProcessEnv = { HOME: home, UV_THREADPOOL_SIZE: "16" };
  for (const [k, v] of Object.entries(process.env))
    if (!k.startsWith("LIFEBOAT_") && k !== "HOME") env[k] = v;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd: tmp,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString("utf8")));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString("utf8")));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

async function ok(args: string[]): Promise<Run> {
  const r = await lifeboat(args);
  assert.equal(r.code, 0, `lifeboat ${args.join(" ")} failed:\n${r.stderr}`);
  return r;
}

/** Every file and directory under `dir` with its mode, size and content hash; "(absent)" when missing. */
async function snapshot(dir: string): Promise<string[]> {
  const st = await stat(dir).catch(() => undefined);
  if (!st) return ["(absent)"];
  if (st.isFile()) return [`file ${(st.mode & 0o777).toString(8)} ${sha256(await readFile(dir))}`];
  const out: string[] = [];
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    const p = path.join(e.parentPath, e.name);
    const s = await stat(p);
    const rel = path.relative(dir, p);
    const mode = (s.mode & 0o777).toString(8);
    out.push(e.isDirectory() ? `${rel}/ ${mode}` : `${rel} ${mode} ${s.size} ${sha256(await readFile(p))}`);
  }
  return out.sort();
}

function sha256(b: Uint8Array): string {
  return createHash("sha256").update(b).digest("hex");
}

/** Runs commands that must fail (side by side, to save start-up time) and checks that none of `paths` changed. */
async function eachFailsWithoutChange(commands: string[][], paths: string[]): Promise<Run[]> {
  const before = await Promise.all(paths.map(snapshot));
  const runs = await Promise.all(commands.map(lifeboat));
  const afterwards = await Promise.all(paths.map(snapshot));
  const what = commands.map((c) => `lifeboat ${c.join(" ")}`).join("; ");
  paths.forEach((p, i) => assert.deepEqual(afterwards[i], before[i], `${p} changed after: ${what}`));
  return runs;
}

async function failsWithoutChange(args: string[], paths: string[]): Promise<Run> {
  const [r] = await eachFailsWithoutChange([args], paths);
  return r!;
}

/** The text error contract: `error [CODE]: message`, then `hint: ...`, the exit status, nothing on stdout. */
function assertError(r: Run, code: string, exit: number): void {
  assert.equal(r.code, exit, `exit status (stderr: ${r.stderr})`);
  assert.match(r.stderr, new RegExp(`^error \\[${code}\\]: \\S.*\\n`), r.stderr);
  assert.match(r.stderr, /\nhint: \S.*\n$/, `no hint in: ${r.stderr}`);
  assert.equal(r.stdout, "");
}

/** The --json error contract: exactly one JSON object {code, message, hint} on stderr. */
function assertJsonError(
  r: Run,
  code: string,
  exit: number,
): { code: string; message: string; hint: string } {
  assert.equal(r.code, exit, `exit status (stderr: ${r.stderr})`);
  assert.equal(r.stdout, "");
  const lines = r.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, `more than one line on stderr: ${r.stderr}`);
  const e = JSON.parse(lines[0]!) as { code: string; message: string; hint: string };
  assert.deepEqual(Object.keys(e).sort(), ["code", "hint", "message"]);
  assert.equal(e.code, code);
  assert.ok(typeof e.message === "string" && e.message.length > 0);
  assert.ok(typeof e.hint === "string" && e.hint.length > 0);
  return e;
}

/** A small disk image: random, compressible and zero MiBs (deterministic content). */
async function writeImage(file: string, mib: number): Promise<void> {
  const buf = Buffer.alloc(mib * MiB);
  for (let i = 0; i < mib; i++) {
    const slot = buf.subarray(i * MiB, (i + 1) * MiB);
    if (i % 3 === 0) createHash("sha512").update(`${file}:${i}`).digest().copy(slot);
    if (i % 3 === 1) slot.fill(`line ${i} of a compressible log\n`);
    if (i % 3 === 2) randomBytes(MiB).copy(slot);
  }
  await writeFile(file, buf);
}

const repoA = () => path.join(tmp, "repo-a");
const keyA = () => path.join(tmp, "keys", "a.key");
const keyB = () => path.join(tmp, "keys", "b.key");
const image = () => path.join(tmp, "disk.img");
const repoArgs = (repo = repoA(), key = keyA()) => ["--repo", repo, "--key-file", key];

// The tests of each group are independent (none may change the shared repository), so they run side by side
// to share out the CLI's start-up time.
void describe("lifeboat store: errors change nothing", { concurrency: 4 }, () => {
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-cli-errors-"));
    home = path.join(tmp, "home");
    await mkdir(home);
    await writeImage(image(), 6);
    await ok(["store", "init", ...repoArgs()]);
    await ok(["store", "init", ...repoArgs(path.join(tmp, "repo-b"), keyB())]);
    await ok(["store", "import", ...repoArgs(), "--server", "web-1", "--disk", image()]);
  });
  after(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  void it("a key from another repository is KEY_MISMATCH, for reads and for writes", async () => {
    const commands = [
      ["store", "verify"],
      ["store", "gc", "--safety-margin", "0s"],
      ["store", "import", "--server", "web-1", "--disk", image()],
    ].map((cmd) => [...cmd, ...repoArgs(repoA(), keyB())]);
    for (const r of await eachFailsWithoutChange(commands, [repoA(), keyA(), keyB()]))
      assertError(r, "KEY_MISMATCH", 1);
  });

  void it("a key naming this repository but with another master key is KEY_MISMATCH", async () => {
    const a = JSON.parse(await readFile(keyA(), "utf8")) as { repositoryId: string };
    const forged = path.join(tmp, "keys", "forged.key");
    await writeFile(
      forged,
      JSON.stringify({
        lifeboatKey: 1,
        repositoryId: a.repositoryId,
        masterKey: randomBytes(32).toString("base64"),
      }),
      { mode: 0o600 },
    );
    const r = await failsWithoutChange(
      ["store", "gc", "--safety-margin", "0s", ...repoArgs(repoA(), forged)],
      [repoA()],
    );
    assertError(r, "KEY_MISMATCH", 1);
  });

  void it("a key file that does not exist is KEY_FILE_MISSING, and is not created", async () => {
    const missing = path.join(tmp, "keys", "missing.key");
    const r = await failsWithoutChange(
      ["store", "verify", ...repoArgs(repoA(), missing)],
      [repoA(), missing],
    );
    assertError(r, "KEY_FILE_MISSING", 1);
  });

  void it("a key file readable by others (0644) is KEY_FILE_MODE, and its mode is left alone", async () => {
    const loose = path.join(tmp, "keys", "loose.key");
    await cp(keyA(), loose);
    await chmod(loose, 0o644);
    const r = await failsWithoutChange(["store", "verify", ...repoArgs(repoA(), loose)], [repoA(), loose]);
    assertError(r, "KEY_FILE_MODE", 1);
    assert.match(r.stderr, /chmod 600/);
  });

  void it("a location with no repository is STORE_NOT_A_REPOSITORY, and nothing is created there", async () => {
    const nowhere = path.join(tmp, "no-such-repo");
    assertError(
      await failsWithoutChange(["store", "gc", ...repoArgs(nowhere)], [nowhere]),
      "STORE_NOT_A_REPOSITORY",
      1,
    );
    const empty = path.join(tmp, "empty-dir");
    await mkdir(empty);
    assertError(
      await failsWithoutChange(
        ["store", "import", ...repoArgs(empty), "--server", "s", "--disk", image()],
        [empty],
      ),
      "STORE_NOT_A_REPOSITORY",
      1,
    );
  });

  void it("a disk that does not exist is DISK_UNREADABLE with exit 2, and no lock or PIT is left", async () => {
    const r = await failsWithoutChange(
      [
        "store",
        "import",
        ...repoArgs(),
        "--server",
        "web-1",
        "--disk",
        image(),
        "--disk",
        path.join(tmp, "nope.img"),
      ],
      [repoA()],
    );
    assertError(r, "DISK_UNREADABLE", 2);
    assert.match(r.stderr, /nope\.img/);
  });

  void it("a repository of a newer format is STORE_FORMAT_TOO_NEW, and gc or import touch nothing", async () => {
    const newer = path.join(tmp, "repo-newer");
    await cp(repoA(), newer, { recursive: true });
    const configFile = path.join(newer, "config");
    const config = JSON.parse(await readFile(configFile, "utf8")) as Record<string, unknown>;
    await writeFile(configFile, JSON.stringify({ ...config, lifeboatRepository: 99 }, null, 2));
    const commands = [
      ["store", "verify", "--read-data"],
      ["store", "gc", "--safety-margin", "0s"],
      ["store", "import", "--server", "web-1", "--disk", image()],
      ["pits", "list"],
    ].map((cmd) => [...cmd, ...repoArgs(newer)]);
    for (const r of await eachFailsWithoutChange(commands, [newer])) {
      assertError(r, "STORE_FORMAT_TOO_NEW", 1);
      assert.match(r.stderr, /99/);
    }
  });

  void it("store init over an existing repository is STORE_EXISTS and leaves no new key behind", async () => {
    const newKey = path.join(tmp, "keys", "init-again.key");
    const r = await failsWithoutChange(
      ["store", "init", ...repoArgs(repoA(), newKey)],
      [repoA(), keyA(), newKey],
    );
    assertError(r, "STORE_EXISTS", 1);
  });

  void it("store init with a key path that exists is KEY_FILE_EXISTS and creates no repository", async () => {
    const fresh = path.join(tmp, "repo-fresh");
    const r = await failsWithoutChange(["store", "init", ...repoArgs(fresh, keyA())], [fresh, keyA()]);
    assertError(r, "KEY_FILE_EXISTS", 1);
  });

  void it("an unknown option is a usage error (exit 2) that names it", async () => {
    const r = await failsWithoutChange(
      ["store", "import", ...repoArgs(), "--server", "web-1", "--disk", image(), "--compress-harder"],
      [repoA()],
    );
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--compress-harder/);
    assert.equal(r.stdout, "");
  });

  void it("store import without --server is a usage error (exit 2) that names it", async () => {
    const r = await failsWithoutChange(["store", "import", ...repoArgs(), "--disk", image()], [repoA()]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--server/);
    assert.equal(r.stdout, "");
  });

  void it("with --json an error is one JSON object {code, message, hint} on stderr", async () => {
    const missing = path.join(tmp, "keys", "missing.key");
    assertJsonError(
      await lifeboat(["store", "verify", "--json", ...repoArgs(repoA(), missing)]),
      "KEY_FILE_MISSING",
      1,
    );
    const e = assertJsonError(
      await failsWithoutChange(
        [
          "--json",
          "store",
          "import",
          ...repoArgs(),
          "--server",
          "web-1",
          "--disk",
          path.join(tmp, "nope.img"),
        ],
        [repoA()],
      ),
      "DISK_UNREADABLE",
      2,
    );
    assert.match(e.message, /nope\.img/);
    assertJsonError(
      await lifeboat(["store", "verify", "--json", ...repoArgs(repoA(), keyB())]),
      "KEY_MISMATCH",
      1,
    );
  });

  void it("with --json a usage error is one JSON object too, with code USAGE", async () => {
    const runs = await eachFailsWithoutChange(
      [
        ["store", "import", "--json", ...repoArgs(), "--disk", image()],
        ["--json", "store", "verify", ...repoArgs(), "--compress-harder"],
      ],
      [repoA()],
    );
    assert.match(assertJsonError(runs[0]!, "USAGE", 2).message, /--server/);
    assert.match(assertJsonError(runs[1]!, "USAGE", 2).message, /--compress-harder/);
  });

  void it("store export --pit latest without --server is a usage error (exit 2) and writes no file", async () => {
    const out = path.join(tmp, "out-latest.img");
    const r = await failsWithoutChange(
      ["store", "export", ...repoArgs(), "--pit", "latest", "--disk", "0", "--out", out],
      [repoA(), out, `${out}.lifeboat-partial`],
    );
    assertError(r, "USAGE", 2);
    assert.match(r.stderr, /--server/);
  });

  void it("store export over an existing file without --force is EXPORT_TARGET_EXISTS and leaves it alone", async () => {
    const out = path.join(tmp, "precious.img");
    await writeFile(out, "an image someone needs\n");
    const r = await failsWithoutChange(
      ["store", "export", ...repoArgs(), "--pit", "latest", "--server", "web-1", "--disk", "0", "--out", out],
      [repoA(), out, `${out}.lifeboat-partial`],
    );
    assertError(r, "EXPORT_TARGET_EXISTS", 2);
    assert.match(r.stderr, /--force/);
  });

  void it("store export of a disk the PIT does not have is DISK_NOT_IN_PIT and writes no file", async () => {
    const out = path.join(tmp, "out-disk7.img");
    const r = await failsWithoutChange(
      ["store", "export", ...repoArgs(), "--pit", "latest", "--server", "web-1", "--disk", "7", "--out", out],
      [repoA(), out, `${out}.lifeboat-partial`],
    );
    assertError(r, "DISK_NOT_IN_PIT", 2);
    assert.match(r.stderr, /hint: disks of this PIT: 0 /);
  });
});

void describe("lifeboat store: JSON output and key escrow", { concurrency: 4 }, () => {
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-cli-json-"));
    home = path.join(tmp, "home");
    await mkdir(home);
    await writeImage(image(), 5);
    await ok(["store", "init", ...repoArgs()]);
    await ok(["store", "import", ...repoArgs(), "--server", "db-1", "--disk", image(), "--disk", image()]);
    await ok([
      "store",
      "import",
      ...repoArgs(),
      "--server",
      "web-1",
      "--disk",
      image(),
      "--consistency",
      "crash",
    ]);
  });
  after(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  void it('pits list --json is {"pits": [...]} with id, server, seq, consistency and disks', async () => {
    const r = await ok(["pits", "list", "--json", ...repoArgs()]);
    assert.equal(r.stderr, "");
    const doc = JSON.parse(r.stdout) as { pits: Record<string, unknown>[]; damaged?: unknown[] };
    assert.ok(Array.isArray(doc.pits));
    assert.deepEqual(doc.damaged ?? [], [], "no PIT is damaged");
    assert.equal(doc.pits.length, 2);
    for (const p of doc.pits) {
      assert.match(String(p.id), /^[0-9a-f]{24}$/);
      assert.equal(p.seq, 1);
      assert.ok((CONSISTENCY_LEVELS as readonly unknown[]).includes(p.consistency));
      assert.ok(Array.isArray(p.disks));
    }
    const [db, web] = doc.pits as {
      server: string;
      consistency: string;
      disks: { index: number; sizeBytes: number }[];
    }[];
    assert.equal(db?.server, "db-1");
    assert.equal(db?.consistency, "none");
    assert.deepEqual(
      db?.disks.map((d) => [d.index, d.sizeBytes]),
      [
        [0, 5 * MiB],
        [1, 5 * MiB],
      ],
    );
    assert.equal(web?.server, "web-1");
    assert.equal(web?.consistency, "crash");
  });

  void it("store stats --json counts objects and stored bytes as they are on disk", async () => {
    const r = await ok(["store", "stats", "--json", ...repoArgs()]);
    const s = JSON.parse(r.stdout) as {
      pits: number;
      objects: { packs: number; pages: number; other: number };
      storedBytes: { packs: number; pages: number; other: number; total: number };
    };
    assert.equal(s.pits, 2);
    const files = (await readdir(repoA(), { recursive: true, withFileTypes: true })).filter((e) =>
      e.isFile(),
    );
    const under = (dir: string) =>
      files.filter((f) => path.relative(repoA(), f.parentPath).split(path.sep)[0] === dir);
    assert.equal(s.objects.packs, under("packs").length);
    assert.equal(s.objects.pages, under("pages").length);
    assert.ok(s.objects.packs > 0 && s.objects.pages > 0);
    let total = 0;
    for (const f of files)
      if (!path.relative(repoA(), f.parentPath).startsWith("tmp"))
        total += (await stat(path.join(f.parentPath, f.name))).size;
    assert.equal(s.storedBytes.total, total);
    assert.equal(s.storedBytes.packs + s.storedBytes.pages + s.storedBytes.other, total);
  });

  void it("store key export then key import into a fresh path gives a key that opens the repository", async () => {
    const escrow = path.join(tmp, "escrow", "a.key");
    const exported = JSON.parse(
      (await ok(["store", "key", "export", "--json", ...repoArgs(), "--out", escrow])).stdout,
    ) as {
      keyFile: string;
    };
    assert.equal(exported.keyFile, escrow);
    assert.equal((await stat(escrow)).mode & 0o777, 0o600);
    assert.deepEqual(JSON.parse(await readFile(escrow, "utf8")), JSON.parse(await readFile(keyA(), "utf8")));

    const installed = path.join(tmp, "restored", "a.key");
    await ok(["store", "key", "import", "--repo", repoA(), "--in", escrow, "--key-file", installed]);
    assert.equal((await stat(installed)).mode & 0o777, 0o600);
    const v = JSON.parse(
      (await ok(["store", "verify", "--json", ...repoArgs(repoA(), installed)])).stdout,
    ) as { ok: boolean };
    assert.equal(v.ok, true);
  });

  void it("store key export refuses to overwrite an existing file", async () => {
    const existing = path.join(tmp, "keys", "precious.txt");
    await writeFile(existing, "do not overwrite me\n", { mode: 0o600 });
    const r = await failsWithoutChange(
      ["store", "key", "export", ...repoArgs(), "--out", existing],
      [existing, repoA()],
    );
    assertError(r, "KEY_FILE_EXISTS", 1);
  });

  void it("store key import of another repository's key is KEY_MISMATCH and installs nothing", async () => {
    const otherRepo = path.join(tmp, "repo-other");
    const otherKey = path.join(tmp, "keys", "other.key");
    await ok(["store", "init", ...repoArgs(otherRepo, otherKey)]);
    const dest = path.join(tmp, "restored", "wrong.key");
    const r = await failsWithoutChange(
      ["store", "key", "import", "--repo", repoA(), "--in", otherKey, "--key-file", dest],
      [repoA(), dest],
    );
    assertError(r, "KEY_MISMATCH", 1);
  });
});
