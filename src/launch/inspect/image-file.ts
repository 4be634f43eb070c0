import { promises as fs } from "node:fs";
import { LifeboatError } from "../../base/index.js";

/** The most one read of partition or superblock metadata may ask for. */
export const MAX_METADATA_READ = 4 << 20;

/**
 * A disk image opened read-only for metadata reads. Every read is bounded:
 * a length past MAX_METADATA_READ is refused and reads stop at the end of the
 * image (the missing tail reads as zeros), so nothing read from the image can
 * make us allocate or seek where it says.
 */
export class ImageFile {
  private constructor(
    readonly path: string,
    readonly size: number,
    private readonly fh: fs.FileHandle,
  ) {}

  static async open(path: string): Promise<ImageFile> {
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(path, "r");
    } catch (err) {
      throw new LifeboatError(
        "LAUNCH_IMAGE_UNREADABLE",
        `cannot open disk image ${path}: ${(err as Error).message}`,
        {
          hint: "give the path of a raw disk image file or block device that you can read",
          cause: err,
          exitCode: 2,
        },
      );
    }
    try {
      const st = await fh.stat();
      let size = st.size;
      if (st.isBlockDevice()) size = await blockDeviceSize(st.rdev);
      else if (!st.isFile()) throw new Error("neither a file nor a block device");
      return new ImageFile(path, size, fh);
    } catch (err) {
      await fh.close();
      throw new LifeboatError(
        "LAUNCH_IMAGE_UNREADABLE",
        `cannot use ${path} as a disk image: ${(err as Error).message}`,
        {
          hint: "give the path of a raw disk image file or block device",
          cause: err,
          exitCode: 2,
        },
      );
    }
  }

  /** Reads `length` bytes at `offset`; bytes past the end of the image read as zeros. */
  async read(offset: number, length: number): Promise<Buffer> {
    if (length < 0 || length > MAX_METADATA_READ || !Number.isSafeInteger(offset) || offset < 0)
      throw new RangeError(`refused metadata read of ${length} bytes at ${offset}`);
    const buf = Buffer.alloc(length);
    if (offset >= this.size) return buf;
    const n = Math.min(length, this.size - offset);
    let done = 0;
    while (done < n) {
      const { bytesRead } = await this.fh.read(buf, done, n - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return buf;
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

async function blockDeviceSize(rdev: number): Promise<number> {
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
  const sectors = Number((await fs.readFile(`/sys/dev/block/${major}:${minor}/size`, "utf8")).trim());
  if (!Number.isSafeInteger(sectors)) throw new Error("cannot read the block device's size");
  return sectors * 512;
}
