import { spawn } from "node:child_process";
import { Readable } from "node:stream";
import { createGunzip } from "node:zlib";
import { DecompressStream } from "zstd-napi";
import { LifeboatError } from "../../base/index.js";

export type Compression = "none" | "gzip" | "zstd" | "xz" | "lz4" | "lz4-legacy" | "bzip2" | "lzma" | "lzo";

/** The compression a segment of an initramfs starts with, by its magic bytes; null when unknown. */
export function detectCompression(b: Buffer): Compression | null {
  const starts = (...bytes: number[]) => bytes.every((x, i) => b[i] === x);
  if (b.toString("latin1", 0, 5) === "07070") return "none";
  if (starts(0x1f, 0x8b)) return "gzip";
  if (starts(0x28, 0xb5, 0x2f, 0xfd)) return "zstd";
  if (starts(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00)) return "xz";
  if (starts(0x02, 0x21, 0x4c, 0x18)) return "lz4-legacy";
  if (starts(0x04, 0x22, 0x4d, 0x18)) return "lz4";
  if (starts(0x42, 0x5a, 0x68)) return "bzip2";
  if (starts(0x5d, 0x00, 0x00)) return "lzma";
  if (starts(0x89, 0x4c, 0x5a, 0x4f)) return "lzo";
  return null;
}

/**
 * The decompressed bytes of `input` as a stream of chunks. gzip and zstd
 * decompress in process; xz and lz4 through the host's `xz -dc` and `lz4 -dc`
 * (the host needs xz-utils and lz4). Breaking out of the loop stops the work.
 * Errors are thrown as they come: the caller decides whether what it already
 * has is enough (trailing padding after the last archive is not an error).
 */
export async function* decompress(kind: Compression, input: Buffer): AsyncGenerator<Buffer> {
  switch (kind) {
    case "gzip":
      yield* streamOf(Readable.from([input]).pipe(createGunzip()), kind);
      return;
    case "zstd":
      // Only the frames: a zstd decoder refuses the zero padding that may follow them.
      yield* streamOf(
        // Fed in 1 MiB pieces: one large write makes the decoder emit its whole output at once.
        Readable.from(pieces(input.subarray(0, zstdFramesEnd(input)), 1 << 20)).pipe(new DecompressStream()),
        kind,
      );
      return;
    case "xz":
      yield* tool("xz", ["-dc", "-q"], input);
      return;
    case "lz4":
    case "lz4-legacy":
      yield* tool("lz4", ["-dc", "-q"], input);
      return;
    default:
      throw new LifeboatError(
        "LAUNCH_INITRAMFS_UNSUPPORTED",
        `initramfs compressed with ${kind}, which inspect does not read`,
        {
          hint: "regenerate the initramfs with gzip, zstd, xz or lz4 compression, or check it on the source server",
        },
      );
  }
}

async function* streamOf(
  s: NodeJS.ReadableStream & { destroy(): void },
  kind: string,
): AsyncGenerator<Buffer> {
  try {
    for await (const chunk of s) yield chunk as Buffer;
  } catch (err) {
    throw new LifeboatError(
      "LAUNCH_INITRAMFS_CORRUPT",
      `corrupt initramfs: ${kind} data: ${(err as Error).message}`,
      {
        hint: "regenerate the initramfs on the source server (update-initramfs -u, or dracut -f)",
        cause: err,
      },
    );
  } finally {
    s.destroy();
  }
}

async function* tool(cmd: string, args: string[], input: Buffer): AsyncGenerator<Buffer> {
  const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"] });
  let stderr = "";
  let spawnError: Error | null = null;
  child.stderr.on("data", (d: Buffer) => {
    if (stderr.length < 4096) stderr += d.toString();
  });
  child.once("error", (err) => (spawnError = err));
  // The child may exit (or be killed) before it read everything: that is not our error.
  child.stdin.on("error", () => undefined);
  child.stdin.end(input);
  const closed = new Promise<number | null>((resolve) => child.once("close", (code) => resolve(code)));
  try {
    for await (const chunk of child.stdout) yield chunk as Buffer;
    const code = await closed;
    if (spawnError)
      throw new LifeboatError(
        "LAUNCH_TOOL_MISSING",
        `cannot run ${cmd} to decompress an initramfs: ${(spawnError as Error).message}`,
        {
          hint: `install ${cmd === "xz" ? "xz-utils" : "lz4"} on this host`,
        },
      );
    if (code !== 0)
      throw new LifeboatError(
        "LAUNCH_INITRAMFS_CORRUPT",
        `corrupt initramfs: ${cmd} -d says: ${stderr.trim() || `exit ${code}`}`,
        {
          hint: "regenerate the initramfs on the source server (update-initramfs -u, or dracut -f)",
        },
      );
  } finally {
    if (child.exitCode === null) child.kill("SIGKILL");
  }
}

function* pieces(b: Buffer, size: number): Generator<Buffer> {
  for (let at = 0; at < b.length; at += size) yield b.subarray(at, Math.min(b.length, at + size));
}

/**
 * Where the zstd frames at the start of `b` end, found by walking frame and
 * block headers (RFC 8878); the whole buffer when they are damaged, so the
 * decoder reports the damage.
 */
export function zstdFramesEnd(b: Buffer): number {
  let o = 0;
  while (o + 8 <= b.length) {
    const magic = b.readUInt32LE(o);
    if ((magic & 0xfffffff0) === 0x184d2a50) {
      o += 8 + b.readUInt32LE(o + 4);
      continue;
    }
    if (magic !== 0xfd2fb528) break;
    const fhd = b[o + 4]!;
    const single = (fhd >> 5) & 1;
    const fcsSize = [single ? 1 : 0, 2, 4, 8][fhd >> 6]!;
    const dictSize = [0, 1, 2, 4][fhd & 3]!;
    o += 5 + (single ? 0 : 1) + dictSize + fcsSize;
    for (;;) {
      if (o + 3 > b.length) return b.length;
      const h = b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16);
      const type = (h >> 1) & 3;
      if (type === 3) return b.length;
      o += 3 + (type === 1 ? 1 : h >>> 3);
      if (h & 1) break;
    }
    if (fhd & 4) o += 4;
  }
  return Math.min(o, b.length);
}
