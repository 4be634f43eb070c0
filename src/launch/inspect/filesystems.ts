import type { ImageFile } from "./image-file.js";

/**
 * Filesystem detection by superblock magic. Only the fields fstab can name a
 * filesystem by are read (UUID, label); nothing else in the superblock is
 * trusted.
 */
export type FsType = "ext2" | "ext3" | "ext4" | "xfs" | "vfat" | "swap" | "btrfs" | "LVM2_member";

export interface Filesystem {
  type: FsType;
  uuid?: string;
  label?: string;
  /** Byte offset of the filesystem in the image and its size (the partition's, or the whole disk). */
  offset: number;
  size: number;
  /** The partition number holding it; absent when the disk is not partitioned. */
  partition?: number;
}

export async function probeFilesystem(
  img: ImageFile,
  offset: number,
  size: number,
): Promise<Omit<Filesystem, "offset" | "size" | "partition"> | null> {
  const head = await img.read(offset, 8192);
  if (head.readUInt16LE(1024 + 0x38) === 0xef53) return ext(head.subarray(1024));
  if (head.toString("latin1", 0, 4) === "XFSB") {
    return { type: "xfs", uuid: uuidText(head, 32), ...labelOf(head, 108, 12) };
  }
  if (head.toString("latin1", 4086, 4096) === "SWAPSPACE2") {
    return { type: "swap", uuid: uuidText(head, 1036), ...labelOf(head, 1052, 16) };
  }
  if (head.toString("latin1", 512, 520) === "LABELONE") return { type: "LVM2_member" };
  const fat = vfat(head);
  if (fat) return fat;
  if (size > 0x10048) {
    const b = await img.read(offset + 0x10040, 8);
    if (b.toString("latin1") === "_BHRfS_M") return { type: "btrfs" };
  }
  return null;
}

function ext(sb: Buffer): Omit<Filesystem, "offset" | "size" | "partition"> {
  const compat = sb.readUInt32LE(0x5c);
  const incompat = sb.readUInt32LE(0x60);
  // extents, 64bit or flex_bg make it ext4; a journal without them ext3.
  const type: FsType = incompat & (0x40 | 0x80 | 0x200) ? "ext4" : compat & 0x4 ? "ext3" : "ext2";
  return { type, uuid: uuidText(sb, 0x68), ...labelOf(sb, 0x78, 16) };
}

function vfat(b: Buffer): Omit<Filesystem, "offset" | "size" | "partition"> | null {
  if (b[510] !== 0x55 || b[511] !== 0xaa) return null;
  const bps = b.readUInt16LE(11);
  if (![512, 1024, 2048, 4096].includes(bps) || b[13] === 0) return null;
  let idAt: number;
  if (b.toString("latin1", 0x52, 0x57) === "FAT32") idAt = 0x43;
  else if (b.toString("latin1", 0x36, 0x39) === "FAT") idAt = 0x27;
  else return null;
  const id = b.readUInt32LE(idAt).toString(16).toUpperCase().padStart(8, "0");
  const label = b.toString("latin1", idAt + 4, idAt + 15).trimEnd();
  return {
    type: "vfat",
    uuid: `${id.slice(0, 4)}-${id.slice(4)}`,
    ...(label && label !== "NO NAME" ? { label } : {}),
  };
}

function uuidText(b: Buffer, o: number): string {
  const h = b.toString("hex", o, o + 16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function labelOf(b: Buffer, o: number, n: number): { label?: string } {
  const raw = b.subarray(o, o + n);
  const end = raw.indexOf(0);
  const label = raw
    .subarray(0, end < 0 ? n : end)
    .toString("utf8")
    .trim();
  return label ? { label } : {};
}
