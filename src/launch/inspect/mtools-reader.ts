import { LifeboatError } from "../../base/index.js";
import { tooLarge } from "./debugfs-reader.js";
import { type DirEntry, type FsReader, MAX_DIR_ENTRIES, safePath } from "./fs-reader.js";
import { runBounded } from "./run-bounded.js";

const TIMEOUT_MS = 60_000;
/** No user or system mtools configuration, and no geometry checks (images are not floppies). */
const ENV = { MTOOLSRC: "/dev/null", MTOOLS_SKIP_CHECK: "1" };

/**
 * Reads a FAT filesystem (the EFI system partition) with mtools at a byte
 * offset in the image (`-i IMAGE@@OFFSET`): no mount, no root, nothing
 * written. FAT has no symbolic links, so there is nothing to escape through.
 */
export class MtoolsReader implements FsReader {
  private constructor(
    private readonly target: string,
    private readonly label: string,
  ) {}

  static async open(imagePath: string, offset: number, label: string): Promise<MtoolsReader> {
    if (imagePath.includes("@@"))
      throw new LifeboatError("LAUNCH_FS_UNREADABLE", `cannot read ${label}: the image path contains "@@"`, {
        hint: "rename the image file or link to it under a name without @@ (mtools reads an offset after @@)",
      });
    const r = new MtoolsReader(`${imagePath}@@${offset}`, label);
    if ((await r.list("/")) === null)
      throw new LifeboatError("LAUNCH_FS_UNREADABLE", `cannot read ${label}: mtools does not recognise it`, {
        hint: "the filesystem may be damaged; check it with fsck.vfat -n on a copy of the image",
      });
    return r;
  }

  async readFile(path: string, maxBytes: number): Promise<Buffer | null> {
    const p = safePath(path);
    if (p === null) return null;
    const r = await this.run("mcopy", ["-n", "-i", this.target, `::${p}`, "-"], maxBytes);
    if (r.overflow) throw tooLarge(this.label, path, maxBytes + 1, maxBytes);
    if (r.code !== 0) return null;
    return r.stdout;
  }

  async list(path: string): Promise<DirEntry[] | null> {
    const p = safePath(path);
    if (p === null) return null;
    const r = await this.run("mdir", ["-b", "-a", "-i", this.target, `::${p}`], 4 << 20);
    if (r.code !== 0) return null;
    const prefix = p === "/" ? "::/" : `::${p}/`;
    const out: DirEntry[] = [];
    for (const line of r.stdout.toString("utf8").split("\n")) {
      if (!line.startsWith(prefix)) continue;
      const rest = line.slice(prefix.length);
      const dir = rest.endsWith("/");
      const name = dir ? rest.slice(0, -1) : rest;
      if (!name || name.includes("/")) continue;
      out.push({ name, kind: dir ? "dir" : "file", size: 0 });
      if (out.length >= MAX_DIR_ENTRIES) break;
    }
    return out;
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  private async run(cmd: string, args: string[], maxStdout: number) {
    const r = await runBounded(cmd, args, { maxStdout, timeoutMs: TIMEOUT_MS, env: ENV });
    if (r.code === null && !r.overflow && !r.timedOut)
      throw new LifeboatError("LAUNCH_TOOL_MISSING", `cannot run ${cmd} to read ${this.label}: ${r.stderr}`, {
        hint: "install mtools on this host",
      });
    if (r.timedOut)
      throw new LifeboatError("LAUNCH_FS_UNREADABLE", `cannot read ${this.label}: ${cmd} timed out`, {
        hint: "the filesystem may be damaged; check it with fsck.vfat -n on a copy of the image",
      });
    return r;
  }
}
