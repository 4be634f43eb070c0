import { LifeboatError } from "../../base/index.js";
import { CpioScanner, corrupt } from "./cpio-scanner.js";
import { type Compression, decompress, detectCompression } from "./decompress.js";

export interface InitramfsInfo {
  /** The compression of each archive segment, in order ("none" for an early uncompressed cpio). */
  segments: Compression[];
  /** Kernel modules it holds, normalised (`-` as `_`), sorted. */
  modules: string[];
  /** Kernel versions under lib/modules/ in it. */
  kernelVersions: string[];
  /** Modules listed in a modules.builtin inside it, normalised. */
  builtin: string[];
  entries: number;
}

/** Unpacked bytes we are willing to scan in one initramfs. */
export const MAX_UNPACKED = 4 * 1024 ** 3;
const MAX_BUILTIN_FILE = 4 << 20;
const MODULE = /(?:^|\/)([^/]+)\.ko(?:\.(?:xz|zst|gz))?$/;
const MODULES_DIR = /^(?:\.\/)?(?:usr\/)?lib\/modules\/([^/]+)\//;

/** A module name as the kernel compares them: `-` and `_` are the same. */
export const normalizeModule = (name: string) => name.replace(/-/g, "_");

/** The module names listed in a modules.builtin (or modules.dep) text: one path per line. */
export function modulesListed(text: string): string[] {
  const out = new Set<string>();
  for (const line of text.split("\n")) {
    const m = MODULE.exec(line.split(":")[0]!.trim());
    if (m) out.add(normalizeModule(m[1]!));
  }
  return [...out];
}

/**
 * Lists what an initramfs holds: the kernel's format of cpio archives one after
 * another, each uncompressed or compressed, typically an uncompressed early
 * archive (CPU microcode) followed by a compressed main one. Throws
 * LAUNCH_INITRAMFS_CORRUPT or LAUNCH_INITRAMFS_UNSUPPORTED, never anything else
 * about the data.
 */
export async function parseInitramfs(data: Buffer, maxUnpacked = MAX_UNPACKED): Promise<InitramfsInfo> {
  const modules = new Set<string>();
  const versions = new Set<string>();
  const builtin = new Set<string>();
  const segments: Compression[] = [];
  let entries = 0;
  const onEntry = (e: { name: string; mode: number }) => {
    const dir = MODULES_DIR.exec(e.name);
    if (dir) versions.add(dir[1]!);
    const m = MODULE.exec(e.name);
    if (m && (e.mode & 0o170000) === 0o100000) modules.add(normalizeModule(m[1]!));
  };
  const capture = (name: string, size: number) =>
    name.endsWith("/modules.builtin") && size <= MAX_BUILTIN_FILE;
  const onCapture = (_: string, text: Buffer) =>
    modulesListed(text.toString("utf8")).forEach((m) => builtin.add(m));

  let offset = 0;
  // Zero padding may sit before the first archive too.
  while (offset < data.length && data[offset] === 0) offset++;
  while (offset < data.length) {
    const kind = detectCompression(data.subarray(offset, offset + 8));
    if (kind === null)
      throw corrupt(`unknown data at byte ${offset} (neither a cpio archive nor a known compression)`);
    const scanner = new CpioScanner(onEntry, capture, onCapture);
    if (kind === "none") {
      scanner.push(data.subarray(offset));
      entries += scanner.entries;
      for (let i = 0; i < Math.max(1, scanner.archiveCount); i++) segments.push("none");
      if (scanner.stoppedAt === null) {
        scanner.finish();
        break;
      }
      offset += scanner.stoppedAt;
      continue;
    }
    segments.push(kind);
    await scanCompressed(kind, data.subarray(offset), scanner, maxUnpacked);
    entries += scanner.entries;
    // What follows a compressed archive is not located (a decompressor does not say where it stopped).
    break;
  }
  if (segments.length === 0) throw corrupt("the file is empty");
  if (entries === 0) throw corrupt("no files in it");
  return {
    segments,
    modules: [...modules].sort(),
    kernelVersions: [...versions].sort(),
    builtin: [...builtin].sort(),
    entries,
  };
}

async function scanCompressed(
  kind: Compression,
  input: Buffer,
  scanner: CpioScanner,
  maxUnpacked: number,
): Promise<void> {
  let unpacked = 0;
  try {
    for await (const chunk of decompress(kind, input)) {
      unpacked += chunk.length;
      if (unpacked > maxUnpacked)
        throw new LifeboatError(
          "LAUNCH_INITRAMFS_CORRUPT",
          `corrupt initramfs: unpacks to more than ${maxUnpacked} bytes`,
          {
            hint: "an initramfs this large is not plausible; check the file on the source server",
          },
        );
      scanner.push(chunk);
      if (scanner.done) break;
    }
  } catch (err) {
    // Decompressors complain about padding after the last archive; the archive itself is whole.
    if (
      scanner.complete &&
      scanner.archiveCount > 0 &&
      (err as LifeboatError).code === "LAUNCH_INITRAMFS_CORRUPT"
    )
      return;
    throw err;
  }
  if (scanner.stoppedAt !== null) throw corrupt(`junk after an archive inside the ${kind} data`);
  scanner.finish();
}
