/**
 * Memory for I/O that bypasses the page cache (O_DIRECT): its address must
 * be aligned to the device's logical block size, which a plain Buffer's is
 * not. One place loads the native addon that allocates it, so that the
 * agent's bundle (bundle/esbuild.ts) rewrites one require.
 */
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const directIo = require("@ronomon/direct-io") as {
  getAlignedBuffer(size: number, alignment: number): Buffer;
};

/** The unit of alignment used everywhere: a page, a multiple of every logical block size seen. */
export const PAGE = 4096;

/** A zero-filled buffer of `size` bytes whose address is a multiple of `alignment` (default a page). */
export function alignedBuffer(size: number, alignment = PAGE): Buffer {
  return directIo.getAlignedBuffer(size, alignment);
}

/** `n` rounded up to a multiple of `step`. */
export function roundUp(n: number, step: number): number {
  return Math.ceil(n / step) * step;
}
