import { crc32 } from "./crc32.js";
import type { ImageFile } from "./image-file.js";

/**
 * Partition tables: MBR (with extended partitions) and GPT (header and entry
 * array CRCs checked, the backup header used when the primary is damaged).
 * Sizes and offsets are in bytes. An image with neither is "none": it may hold
 * a filesystem directly, which the caller probes at offset 0.
 */
export interface Partition {
  /** 1-based, as Linux numbers them (sda1; logical MBR partitions from 5). */
  number: number;
  start: number;
  size: number;
  /** GPT: the type GUID (upper case); MBR: the type byte as two hex digits. */
  type: string;
  /** A readable name of the type when it is a well-known one. */
  typeName: string;
  /** GPT partition name, when set. */
  name?: string;
  /** GPT unique partition GUID, or for MBR the disk signature and number (PARTUUID= in fstab). */
  partUuid: string;
  bootable: boolean;
  esp: boolean;
  biosBoot: boolean;
}

export interface PartitionTable {
  type: "gpt" | "mbr" | "none";
  /** GPT disk GUID or MBR disk signature (8 hex digits). */
  diskId?: string;
  partitions: Partition[];
  /** Damage found and worked around (a bad primary GPT), or not (both copies bad). */
  warnings: string[];
}

const ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const BIOS_BOOT_GUID = "21686148-6449-6E6F-744E-656564454649";
const GPT_TYPES: Record<string, string> = {
  [ESP_GUID]: "EFI system",
  [BIOS_BOOT_GUID]: "BIOS boot",
  "0FC63DAF-8483-4772-8E79-3D69D8477DE4": "Linux filesystem",
  "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux root (x86-64)",
  "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap",
  "E6D6D379-F507-44C2-A23C-238F2A3DF928": "Linux LVM",
  "A19D880F-05FC-4D3B-A006-743F0F84911E": "Linux RAID",
  "BC13C2FF-59E6-4262-A352-B275FD6F7172": "Linux extended boot",
  "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "Microsoft basic data",
};
const MBR_TYPES: Record<number, string> = {
  0x83: "Linux",
  0x82: "Linux swap",
  0x8e: "Linux LVM",
  0xfd: "Linux RAID",
  0xef: "EFI system",
  0x07: "NTFS/exFAT",
  0x0b: "FAT32",
  0x0c: "FAT32 (LBA)",
  0x06: "FAT16",
  0x0e: "FAT16 (LBA)",
};
const EXTENDED = new Set([0x05, 0x0f, 0x85]);
const SECTOR = 512;
/** More GPT entries than this, or a bigger array, is not a table we trust. */
const MAX_GPT_ENTRIES = 4096;
const MAX_GPT_ARRAY = 1 << 20;
const MAX_LOGICAL = 128;

export async function readPartitionTable(img: ImageFile): Promise<PartitionTable> {
  const mbr = await img.read(0, SECTOR);
  const hasSignature = mbr[510] === 0x55 && mbr[511] === 0xaa;
  const entries = hasSignature ? mbrEntries(mbr) : [];
  const protective = entries.some((e) => e.type === 0xee);
  const gptAt1 = (await img.read(SECTOR, 8)).toString("latin1") === "EFI PART";
  if (protective || gptAt1) {
    const gpt = await readGpt(img);
    if (gpt) return gpt;
    return {
      type: "gpt",
      partitions: [],
      warnings: ["GPT headers are damaged (both the primary and the backup)"],
    };
  }
  if (hasSignature && entries.length > 0 && entries.every((e) => sane(e, img.size))) {
    return readMbr(img, mbr);
  }
  return { type: "none", partitions: [], warnings: [] };
}

interface MbrEntry {
  status: number;
  type: number;
  lba: number;
  sectors: number;
}

function mbrEntries(sector: Buffer): MbrEntry[] {
  const out: MbrEntry[] = [];
  for (let i = 0; i < 4; i++) {
    const o = 446 + i * 16;
    const e = {
      status: sector[o]!,
      type: sector[o + 4]!,
      lba: sector.readUInt32LE(o + 8),
      sectors: sector.readUInt32LE(o + 12),
    };
    out.push(e);
  }
  // Empty slots are skipped, but keep their status byte in the sanity check (a FAT boot sector fails it).
  return out.filter((e) => e.type !== 0 || e.status !== 0);
}

function sane(e: MbrEntry, diskSize: number): boolean {
  if (e.status !== 0 && e.status !== 0x80) return false;
  if (e.type === 0 || e.sectors === 0 || e.lba === 0) return false;
  return (e.lba + e.sectors) * SECTOR <= diskSize + SECTOR * 2048;
}

async function readMbr(img: ImageFile, mbr: Buffer): Promise<PartitionTable> {
  const signature = mbr.readUInt32LE(440).toString(16).padStart(8, "0");
  const partitions: Partition[] = [];
  const warnings: string[] = [];
  for (let i = 0; i < 4; i++) {
    const o = 446 + i * 16;
    const e: MbrEntry = {
      status: mbr[o]!,
      type: mbr[o + 4]!,
      lba: mbr.readUInt32LE(o + 8),
      sectors: mbr.readUInt32LE(o + 12),
    };
    if (e.type === 0 || e.sectors === 0) continue;
    if (EXTENDED.has(e.type)) {
      await readLogical(img, e.lba, signature, partitions, warnings);
      continue;
    }
    partitions.push(mbrPartition(i + 1, e, e.lba, signature));
  }
  return { type: "mbr", diskId: signature, partitions, warnings };
}

/** Walks the chain of extended boot records; logical partitions are numbered from 5. */
async function readLogical(
  img: ImageFile,
  extStart: number,
  signature: string,
  out: Partition[],
  warnings: string[],
): Promise<void> {
  let ebr = extStart;
  const seen = new Set<number>();
  for (let n = 5; n < 5 + MAX_LOGICAL; n++) {
    if (seen.has(ebr) || ebr * SECTOR >= img.size) {
      warnings.push(`the chain of logical partitions loops or leaves the disk at sector ${ebr}`);
      return;
    }
    seen.add(ebr);
    const s = await img.read(ebr * SECTOR, SECTOR);
    if (s[510] !== 0x55 || s[511] !== 0xaa) return;
    const first = { status: s[446]!, type: s[450]!, lba: s.readUInt32LE(454), sectors: s.readUInt32LE(458) };
    if (first.type !== 0 && first.sectors !== 0) out.push(mbrPartition(n, first, ebr + first.lba, signature));
    const next = s.readUInt32LE(470);
    if (s[466] === 0 || next === 0) return;
    ebr = extStart + next;
  }
  warnings.push(`more than ${MAX_LOGICAL} logical partitions; the rest are not listed`);
}

function mbrPartition(number: number, e: MbrEntry, lba: number, signature: string): Partition {
  return {
    number,
    start: lba * SECTOR,
    size: e.sectors * SECTOR,
    type: e.type.toString(16).padStart(2, "0"),
    typeName: EXTENDED.has(e.type) ? "extended" : (MBR_TYPES[e.type] ?? "unknown"),
    partUuid: `${signature}-${number.toString(16).padStart(2, "0")}`,
    bootable: e.status === 0x80,
    esp: e.type === 0xef,
    biosBoot: false,
  };
}

async function readGpt(img: ImageFile): Promise<PartitionTable | null> {
  const warnings: string[] = [];
  const primary = await gptAt(img, 1);
  if (primary.table) return { ...primary.table, warnings };
  const lastLba = Math.floor(img.size / SECTOR) - 1;
  const backup = lastLba > 1 ? await gptAt(img, lastLba) : { table: null, why: "disk too small" };
  if (backup.table) {
    warnings.push(
      `the primary GPT is damaged (${primary.why}); the backup GPT at the end of the disk was used`,
    );
    return { ...backup.table, warnings };
  }
  return {
    type: "gpt",
    partitions: [],
    warnings: [`GPT damaged: primary ${primary.why}; backup ${backup.why}`],
  };
}

async function gptAt(
  img: ImageFile,
  lba: number,
): Promise<{ table: Omit<PartitionTable, "warnings"> | null; why: string }> {
  const h = await img.read(lba * SECTOR, SECTOR);
  if (h.toString("latin1", 0, 8) !== "EFI PART") return { table: null, why: "no GPT signature" };
  const headerSize = h.readUInt32LE(12);
  if (headerSize < 92 || headerSize > SECTOR) return { table: null, why: `header size ${headerSize}` };
  const copy = Buffer.from(h.subarray(0, headerSize));
  copy.writeUInt32LE(0, 16);
  if (crc32(copy) !== h.readUInt32LE(16)) return { table: null, why: "header CRC mismatch" };
  const entriesLba = Number(h.readBigUInt64LE(72));
  const count = h.readUInt32LE(80);
  const entrySize = h.readUInt32LE(84);
  if (count > MAX_GPT_ENTRIES || entrySize < 128 || entrySize % 8 !== 0 || count * entrySize > MAX_GPT_ARRAY)
    return { table: null, why: `entry array of ${count} x ${entrySize} bytes` };
  if (!Number.isSafeInteger(entriesLba * SECTOR) || entriesLba * SECTOR >= img.size)
    return { table: null, why: "entry array outside the disk" };
  const arr = await img.read(entriesLba * SECTOR, count * entrySize);
  if (crc32(arr) !== h.readUInt32LE(88)) return { table: null, why: "entry array CRC mismatch" };
  const partitions: Partition[] = [];
  for (let i = 0; i < count; i++) {
    const e = arr.subarray(i * entrySize, (i + 1) * entrySize);
    const type = guid(e, 0);
    if (type === "00000000-0000-0000-0000-000000000000") continue;
    const first = Number(e.readBigUInt64LE(32));
    const last = Number(e.readBigUInt64LE(40));
    if (last < first || !Number.isSafeInteger(last * SECTOR)) continue;
    const name = e.toString("utf16le", 56, 128).replace(/\0.*$/s, "");
    partitions.push({
      number: i + 1,
      start: first * SECTOR,
      size: (last - first + 1) * SECTOR,
      type,
      typeName: GPT_TYPES[type] ?? "unknown",
      ...(name ? { name } : {}),
      partUuid: guid(e, 16).toLowerCase(),
      bootable: (e.readBigUInt64LE(48) & 4n) !== 0n,
      esp: type === ESP_GUID,
      biosBoot: type === BIOS_BOOT_GUID,
    });
  }
  return { table: { type: "gpt", diskId: guid(h, 56).toLowerCase(), partitions }, why: "" };
}

/** A GUID as text: the first three fields are little-endian on disk. */
function guid(b: Buffer, o: number): string {
  const hex = (from: number, to: number, le: boolean) => {
    const s = Buffer.from(b.subarray(o + from, o + to));
    return (le ? s.reverse() : s).toString("hex");
  };
  return `${hex(0, 4, true)}-${hex(4, 6, true)}-${hex(6, 8, true)}-${hex(8, 10, false)}-${hex(10, 16, false)}`.toUpperCase();
}
