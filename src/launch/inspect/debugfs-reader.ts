import { LifeboatError } from "../../base/index.js";
import {
  type DirEntry,
  type FsReader,
  MAX_DIR_ENTRIES,
  MAX_LINKS,
  resolveLink,
  safePath,
} from "./fs-reader.js";
import { runBounded } from "./run-bounded.js";

const TIMEOUT_MS = 120_000;

/**
 * Reads an ext2/3/4 filesystem with e2fsprogs' debugfs, opened read-only in
 * catastrophic mode (`-c`: no bitmaps, no journal replay) at a byte offset in
 * the image (`IMAGE?offset=N`): no mount, no loop device, nothing written.
 * debugfs resolves symbolic links in the middle of a path itself, from the
 * filesystem's own root; links in the last component are resolved here.
 */
export class DebugfsReader implements FsReader {
  private constructor(
    private readonly device: string,
    private readonly label: string,
  ) {}

  static async open(imagePath: string, offset: number, label: string): Promise<DebugfsReader> {
    if (imagePath.includes("?"))
      throw new LifeboatError("LAUNCH_FS_UNREADABLE", `cannot read ${label}: the image path contains "?"`, {
        hint: "rename the image file or link to it under a name without ? (debugfs reads options after ?)",
      });
    const r = new DebugfsReader(offset ? `${imagePath}?offset=${offset}` : imagePath, label);
    await r.request("stat /", 1 << 20);
    return r;
  }

  async readFile(path: string, maxBytes: number): Promise<Buffer | null> {
    const st = await this.resolve(path);
    if (!st || st.kind !== "file") return null;
    if (st.size > maxBytes) throw tooLarge(this.label, path, st.size, maxBytes);
    const out = await this.request(`cat ${st.path}`, maxBytes);
    return out.stdout;
  }

  async list(path: string): Promise<DirEntry[] | null> {
    const st = await this.resolve(path);
    if (!st || st.kind !== "dir") return null;
    const out = await this.request(`ls -p ${st.path}`, 8 << 20);
    const entries: DirEntry[] = [];
    // Each line: /inode/mode/uid/gid/name/size/ — a name cannot hold "/", so split from both ends.
    for (const line of out.stdout.toString("utf8").split("\n")) {
      const f = line.split("/");
      if (f.length < 8 || f[0] !== "") continue;
      const mode = parseInt(f[2]!, 8);
      const name = f.slice(5, -2).join("/");
      if (name === "." || name === ".." || name === "") continue;
      entries.push({ name, kind: kindOf(mode), size: Number(f[f.length - 2]) || 0 });
      if (entries.length >= MAX_DIR_ENTRIES) break;
    }
    return entries;
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  private async resolve(
    path: string,
  ): Promise<{ path: string; kind: DirEntry["kind"]; size: number } | null> {
    let p = safePath(path);
    for (let hop = 0; p !== null && hop <= MAX_LINKS; hop++) {
      const out = await this.request(`stat ${p}`, 1 << 20, true);
      if (out === null) return null;
      const text = out.stdout.toString("latin1");
      const type = /Type: (\w+)/.exec(text)?.[1];
      const size = Number(/\bSize: (\d+)/.exec(text)?.[1] ?? "0");
      if (type === "symlink") {
        const dest = /Fast link dest: "([^"]*)"/.exec(text)?.[1];
        if (dest === undefined) return null;
        p = safePath(resolveLink(p, dest));
        continue;
      }
      const kind = type === "regular" ? "file" : type === "directory" ? "dir" : "other";
      return { path: p, kind, size };
    }
    return null;
  }

  private async request(cmd: string, maxStdout: number): Promise<{ stdout: Buffer }>;
  private async request(cmd: string, maxStdout: number, absentOk: true): Promise<{ stdout: Buffer } | null>;
  private async request(
    cmd: string,
    maxStdout: number,
    absentOk = false,
  ): Promise<{ stdout: Buffer } | null> {
    const r = await runBounded("debugfs", ["-c", "-R", cmd, this.device], {
      maxStdout,
      timeoutMs: TIMEOUT_MS,
    });
    const errors = r.stderr
      .split("\n")
      .filter((l) => l && !l.startsWith("debugfs ") && !/catastrophic mode/.test(l));
    if (absentOk && errors.some((l) => /File not found by ext2_lookup/.test(l))) return null;
    if (r.code === null && !r.overflow && !r.timedOut)
      throw new LifeboatError(
        "LAUNCH_TOOL_MISSING",
        `cannot run debugfs to read ${this.label}: ${r.stderr}`,
        {
          hint: "install e2fsprogs on this host",
        },
      );
    if (r.timedOut || errors.length > 0 || (r.overflow && !cmd.startsWith("stat ")))
      throw new LifeboatError(
        "LAUNCH_FS_UNREADABLE",
        `cannot read ${this.label} (${cmd}): ${r.timedOut ? "debugfs timed out" : r.overflow ? "output too large" : errors.join("; ")}`,
        { hint: "the filesystem may be damaged; run e2fsck -n on a copy of the image to see how" },
      );
    return { stdout: r.stdout };
  }
}

function kindOf(mode: number): DirEntry["kind"] {
  switch (mode & 0o170000) {
    case 0o100000:
      return "file";
    case 0o040000:
      return "dir";
    case 0o120000:
      return "symlink";
    default:
      return "other";
  }
}

export function tooLarge(label: string, path: string, size: number, max: number): LifeboatError {
  return new LifeboatError(
    "LAUNCH_FILE_TOO_LARGE",
    `${path} on ${label} is ${size} bytes, more than the ${max} bytes inspect reads`,
    { hint: "a file this large is unexpected here; check the image" },
  );
}
