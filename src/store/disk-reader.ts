/**
 * Reads a disk (a block device or an image file) the way the agent must:
 * with O_DIRECT, into aligned buffers, bypassing the page cache. A mounted
 * device read through the page cache can return blocks older than what the
 * filesystem has written (DESIGN.md, "Facts"); an O_DIRECT read goes to the
 * device. `store import` reads through it too: a disk read once gains
 * nothing from the cache, and filling it costs more than the copy out of it.
 *
 * Memory is bounded: `depth` aligned buffers of `chunkSize` bytes per
 * reader (8 MiB by default), reused for every read.
 */
import { constants, promises as fs } from "node:fs";
import { PAGE, alignedBuffer, roundUp } from "../base/aligned.js";
import { LifeboatError, silentLogger, type Logger } from "../base/index.js";
import { blockDeviceSizeBytes, deviceNumbers, logicalBlockSize, statDisk } from "./block-device.js";

/** A byte range of a disk. */
export interface ByteRange {
  offset: number;
  length: number;
}

export interface OpenDiskOptions {
  /** Bytes per read and size of each buffer (default 4 MiB; rounded up to the alignment). */
  chunkSize?: number;
  /** Reads in flight, one buffer each (default 2): memory is depth × chunkSize. */
  depth?: number;
  logger?: Logger;
}

/** Reads in flight at once in readRanges, when pieces are small enough to share the buffers. */
const MAX_READS_IN_FLIGHT = 16;

export class DiskReader {
  private readonly bufs: Buffer[];
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly handle: fs.FileHandle,
    /** Size in bytes. */
    readonly size: number,
    readonly isBlockDevice: boolean,
    /** True when reads bypass the page cache. */
    readonly direct: boolean,
    /** Why reads are buffered (an image file on a filesystem that refuses O_DIRECT), else null. */
    readonly bufferedReason: string | null,
    /** Offsets and lengths of device reads are multiples of this. */
    readonly alignment: number,
    chunkSize: number,
    depth: number,
  ) {
    this.bufs = Array.from({ length: depth }, () => alignedBuffer(chunkSize, Math.max(alignment, PAGE)));
  }

  /**
   * Opens a block device or image file read-only with O_DIRECT. A block
   * device that refuses O_DIRECT is an error (`DISK_DIRECT_IO_UNSUPPORTED`):
   * buffered reads of a live device are not trustworthy. An image file on a
   * filesystem that refuses it (tmpfs) is opened buffered, and `direct`,
   * `bufferedReason` and a warning say so.
   */
  static async open(path: string, opts: OpenDiskOptions = {}): Promise<DiskReader> {
    const log = opts.logger ?? silentLogger;
    const st = await statDisk(path);
    if (!st.isFile() && !st.isBlockDevice())
      throw new LifeboatError("DISK_UNREADABLE", `${path} is neither a file nor a block device`, {
        hint: "give a raw image file or a block device",
      });
    let size = st.size;
    let alignment = PAGE;
    if (st.isBlockDevice()) {
      const { major, minor } = deviceNumbers(st.rdev);
      size = await blockDeviceSizeBytes(major, minor);
      alignment = Math.max(PAGE, await logicalBlockSize(major, minor));
    }
    let handle: fs.FileHandle;
    let bufferedReason: string | null = null;
    try {
      handle = await fs.open(path, constants.O_RDONLY | constants.O_DIRECT);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== "EINVAL") throw unreadable(path, err);
      if (st.isBlockDevice())
        throw new LifeboatError("DISK_DIRECT_IO_UNSUPPORTED", `block device ${path} refuses O_DIRECT reads`, {
          hint: "the agent reads devices bypassing the page cache; use the scan tracker on a device that allows O_DIRECT, or report the device type",
          cause: err,
        });
      bufferedReason = `the filesystem holding ${path} refuses O_DIRECT (EINVAL); reading through the page cache`;
      log.warn({ disk: path }, bufferedReason);
      try {
        handle = await fs.open(path, constants.O_RDONLY);
      } catch (err2) {
        throw unreadable(path, err2);
      }
    }
    const chunk = roundUp(Math.max(opts.chunkSize ?? 4 << 20, alignment), alignment);
    return new DiskReader(
      path,
      handle,
      size,
      st.isBlockDevice(),
      bufferedReason === null,
      bufferedReason,
      alignment,
      chunk,
      Math.max(1, Math.floor(opts.depth ?? 2)),
    );
  }

  /** Bytes per device read (the buffer's size). */
  get chunkSize(): number {
    return this.bufs[0]!.length;
  }

  /** A copy of `length` bytes at `offset` (any alignment; the range must lie inside the disk). */
  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(length);
    let filled = 0;
    await this.readRanges([{ offset, length }], (off, data) => {
      data.copy(out, off - offset);
      filled += data.length;
    });
    if (filled !== length) throw new Error(`internal: read ${filled} of ${length} bytes`);
    return out;
  }

  /**
   * Reads each range in order in pieces of at most `chunkSize` bytes, calling
   * `onData(offset, data)` for each piece, in order; ranges may have any
   * alignment (the device is read aligned, the piece trimmed). Reads run
   * ahead while `onData` works: large pieces one per buffer (`depth` in
   * flight), small ones side by side in the buffers, up to
   * MAX_READS_IN_FLIGHT (blocks scattered over a disk, read one or two at a
   * time, would each wait for the device in turn). `data` is a view of one
   * of the reader's buffers: it is valid until the promise `onData` returns
   * settles, so copy what must outlive it. Ranges must lie inside the disk
   * (checked before anything is read).
   */
  async readRanges(
    ranges: Iterable<ByteRange>,
    onData: (offset: number, data: Buffer) => void | Promise<void>,
  ): Promise<void> {
    if (this.closed) throw new Error(`reader of ${this.path} is closed`);
    const list = [...ranges];
    for (const r of list)
      if (r.offset < 0 || r.length < 0 || r.offset + r.length > this.size)
        throw new LifeboatError(
          "DISK_RANGE_OUTSIDE",
          `range ${r.offset}+${r.length} lies outside disk ${this.path} of ${this.size} bytes`,
          { hint: "the disk may have shrunk; rescan its size" },
        );
    const pieces = this.pieces(list);
    const chunk = this.chunkSize;
    type Done = { piece: Piece; buf: number; data: Buffer; got: number };
    const inflight: Promise<Done>[] = [];
    // Pieces are placed one after another in a buffer, then in the next once it is all consumed
    // (pieces are consumed in the order read): `used` counts each buffer's pieces not consumed.
    const used = this.bufs.map(() => 0);
    let cur = 0;
    let at = 0;
    let next = pieces.next();
    const issue = (): boolean => {
      if (next.done || inflight.length >= MAX_READS_IN_FLIGHT) return false;
      const piece = next.value;
      if (at + piece.want > chunk) {
        const following = (cur + 1) % this.bufs.length;
        if (used[following]! > 0 || (following === cur && used[cur]! > 0)) return false;
        cur = following;
        at = 0;
      }
      const buf = cur;
      const data = this.bufs[buf]!.subarray(at, at + piece.want);
      at += piece.want;
      used[buf]!++;
      next = pieces.next();
      const p = this.readAt(data, piece.start, piece.want).then((got) => ({ piece, buf, data, got }));
      p.catch(() => undefined); // awaited below; this only keeps an early failure from going unhandled
      inflight.push(p);
      return true;
    };
    try {
      while (issue());
      while (inflight.length) {
        const { piece, buf, data, got } = await inflight.shift()!;
        const from = piece.pos - piece.start;
        const to = piece.next - piece.start;
        if (got < to)
          throw new LifeboatError(
            "DISK_UNREADABLE",
            `disk ${this.path} ended at ${piece.start + got} bytes, before ${piece.end} (it shrank while being read?)`,
            { hint: "rescan the disk's size and read again" },
          );
        await onData(piece.pos, data.subarray(from, to));
        used[buf]!--;
        while (issue());
      }
    } finally {
      await Promise.allSettled(inflight);
    }
  }

  /** The aligned device reads that cover the ranges, in order. */
  private *pieces(ranges: ByteRange[]): Generator<Piece> {
    const a = this.alignment;
    const chunk = this.bufs[0]!.length;
    for (const r of ranges) {
      const end = r.offset + r.length;
      for (let pos = r.offset; pos < end;) {
        const start = pos - (pos % a);
        const want = Math.min(chunk, roundUp(end, a) - start);
        const next = Math.min(start + want, end);
        yield { start, want, pos, end, next };
        pos = next;
      }
    }
  }

  /** One read into `buf`; returns the bytes read (short only at the end of the disk). */
  private async readAt(buf: Buffer, position: number, length: number): Promise<number> {
    let done = 0;
    while (done < length) {
      let n: number;
      try {
        ({ bytesRead: n } = await this.handle.read(buf, done, length - done, position + done));
      } catch (err) {
        throw unreadable(this.path, err, `at byte ${position + done}`);
      }
      if (n === 0) break;
      done += n;
      // O_DIRECT reads return whole aligned blocks; a short one means end of file.
      if (done % this.alignment !== 0) break;
    }
    return done;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }
}

interface Piece {
  /** Aligned device offset and length of the read. */
  start: number;
  want: number;
  /** The part of a range it serves: [pos, next), inside a range ending at `end`. */
  pos: number;
  next: number;
  end: number;
}

function unreadable(path: string, err: unknown, where = ""): LifeboatError {
  const code = (err as NodeJS.ErrnoException).code;
  return new LifeboatError(
    "DISK_UNREADABLE",
    `cannot read disk ${path}${where ? " " + where : ""}: ${code === "EACCES" ? "permission denied" : code === "ENOENT" ? "no such file or device" : (err as Error).message}`,
    { hint: "check the path; block devices need root; an I/O error here may be a failing disk", cause: err },
  );
}
