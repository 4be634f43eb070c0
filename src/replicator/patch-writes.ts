/**
 * The applier's writes of byte ranges (applier.ts): small writes and
 * discards (writeBytes), and patches of one chunk checked against the
 * sender's hash of its block (patchChunk). Each chunk they touch is patched
 * by ChunkWrites (chunk-writes.ts), starting from its bytes as the writes
 * issued before leave them; a patch takes a patch slot, not a place in the
 * applier's chain.
 */
import { LifeboatError } from "../base/index.js";
import type { Repository } from "../store/index.js";
import type { ChunkWrites, TrackedDisk } from "./chunk-writes.js";

export class PatchWrites {
  /** `usable`: the disk a write goes to; throws if the applier failed or has no such disk. */
  constructor(
    private readonly repo: Repository,
    private readonly writes: ChunkWrites,
    private readonly usable: (diskIndex: number) => TrackedDisk,
  ) {}

  /** Writes a byte range, chunk by chunk (ReplicaApplier.writeBytes says what must hold). */
  async writeBytes(diskIndex: number, offset: number, data: Uint8Array): Promise<void> {
    const disk = this.usable(diskIndex);
    if (offset < 0 || offset + data.length > disk.meta.sizeBytes) {
      throw new LifeboatError(
        "REPLICA_BAD_WRITE",
        `a write of ${data.length} bytes at ${offset} runs past the end of disk ${diskIndex} (${disk.meta.sizeBytes} bytes)`,
        { hint: "the sender's idea of the disk size is out of date; it must report the new size first" },
      );
    }
    const cs = this.repo.config.chunkSize;
    for (let pos = offset; pos < offset + data.length;) {
      const index = Math.floor(pos / cs);
      const chunkStart = index * cs;
      const chunkLen = Math.min(cs, disk.meta.sizeBytes - chunkStart);
      const until = Math.min(chunkStart + chunkLen, offset + data.length);
      const piece = Buffer.from(data.subarray(pos - offset, until - offset)); // the caller may reuse `data`
      const at = pos - chunkStart;
      await this.writes.patchSlot();
      this.writes.issuePatch(disk, index, (content) => piece.copy(content, at), {
        whole: at === 0 && piece.length === chunkLen,
      });
      pos = until;
    }
  }

  /**
   * Applies byte ranges to one chunk (ReplicaApplier.patchChunk says what
   * must hold); `check` gets the SHA-256 of the result before it can take
   * effect.
   */
  async patchChunk(
    diskIndex: number,
    offset: number,
    patches: { at: number; data: Uint8Array }[],
    check: (sha256: Buffer) => void,
  ): Promise<void> {
    const disk = this.usable(diskIndex);
    const cs = this.repo.config.chunkSize;
    const chunkLen = Math.min(cs, disk.meta.sizeBytes - offset);
    if (
      offset % cs !== 0 ||
      chunkLen <= 0 ||
      patches.some((p) => p.at < 0 || p.at + p.data.length > chunkLen)
    ) {
      throw new LifeboatError(
        "REPLICA_BAD_WRITE",
        `a patch at ${offset} does not lie inside one chunk of disk ${diskIndex} (${disk.meta.sizeBytes} bytes)`,
        { hint: "the sender's idea of the disk size is out of date; it must report the new size first" },
      );
    }
    await this.writes.patchSlot();
    this.writes.issuePatch(
      disk,
      offset / cs,
      (content) => {
        for (const p of patches) content.set(p.data, p.at);
      },
      { check },
    );
  }
}
