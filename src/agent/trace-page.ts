/**
 * Decoding of the kernel's binary trace buffer pages, as `trace_pipe_raw`
 * hands them out (one ring-buffer sub-buffer per read).
 *
 * A page is a 16-byte header — u64 timestamp, then `commit`: the number of
 * data bytes in its low 30 bits, and in bit 31 a flag saying events were lost
 * before this page — followed by events. Each event starts with a 32-bit
 * word: `type_len` in the low 5 bits, a time delta in the other 27.
 *   type_len 1..28  data of type_len*4 bytes follows the word
 *   type_len 0      the next u32 is a length L; data is L-4 bytes after it
 *   29 (padding)    time delta 0: the rest of the page is empty; else skip
 *                   4 + the next u32 bytes (a discarded event)
 *   30, 31          time extend / absolute time stamp: 8 bytes, no data
 * The data of an event is the record the event's `format` file describes,
 * starting with `common_type` (the event id).
 */

export const RB_MISSED_EVENTS = 0x80000000;
const COMMIT_LENGTH_MASK = 0x3fffffff;
const PAGE_HEADER = 16;

interface Field {
  offset: number;
  size: number;
}

/** Where the fields block_bio_queue records live, read from its `format` file. */
export interface BioQueueLayout {
  id: number;
  dev: Field;
  sector: Field;
  nrSector: Field;
  rwbs: Field;
}

/** Parses an event `format` file; throws when a field the tracker needs is missing. */
export function parseBioQueueFormat(text: string): BioQueueLayout {
  const id = /^ID:\s*(\d+)/m.exec(text);
  const fields = new Map<string, Field>();
  for (const m of text.matchAll(/field:[^;]*?\s(\w+)(?:\[\d+\])?;\s*offset:(\d+);\s*size:(\d+);/g))
    fields.set(m[1]!, { offset: Number(m[2]), size: Number(m[3]) });
  const get = (name: string): Field => {
    const f = fields.get(name);
    if (!f) throw new Error(`event format has no field ${name}`);
    return f;
  };
  if (!id) throw new Error("event format has no ID");
  return {
    id: Number(id[1]),
    dev: get("dev"),
    sector: get("sector"),
    nrSector: get("nr_sector"),
    rwbs: get("rwbs"),
  };
}

/** One decoded record (block_bio_queue, or another block event of the same fields). */
export interface BioEvent {
  /** The event's id (its layout's `id`). */
  event: number;
  dev: number;
  sector: number;
  sectors: number;
  rwbs: string;
}

function readUnsigned(b: Buffer, at: number, size: number): number {
  switch (size) {
    case 2:
      return b.readUInt16LE(at);
    case 4:
      return b.readUInt32LE(at);
    case 8:
      return Number(b.readBigUInt64LE(at));
    default:
      throw new Error(`unexpected field size ${size}`);
  }
}

/**
 * Calls `onEvent` for every block_bio_queue record in `page` (records of
 * other events are skipped) and says whether the page carries the
 * lost-events flag. Stops at the first malformed event and reports it.
 */
export function decodePage(
  page: Buffer,
  layouts: BioQueueLayout | BioQueueLayout[],
  onEvent: (e: BioEvent) => void,
): { missedEvents: boolean; malformed: boolean } {
  const list = Array.isArray(layouts) ? layouts : [layouts];
  if (page.length < PAGE_HEADER) return { missedEvents: false, malformed: page.length !== 0 };
  const commit = page.readUInt32LE(8);
  const missedEvents = (commit & RB_MISSED_EVENTS) !== 0;
  const end = Math.min(page.length, PAGE_HEADER + (commit & COMMIT_LENGTH_MASK));
  let at = PAGE_HEADER;
  while (at + 4 <= end) {
    const word = page.readUInt32LE(at);
    const typeLen = word & 0x1f;
    const delta = word >>> 5;
    let dataAt: number;
    let dataLen: number;
    let next: number;
    if (typeLen === 29) {
      if (delta === 0) break;
      if (at + 8 > end) return { missedEvents, malformed: true };
      next = at + 4 + page.readUInt32LE(at + 4);
      at = next;
      continue;
    } else if (typeLen === 30 || typeLen === 31) {
      at += 8;
      continue;
    } else if (typeLen === 0) {
      if (at + 8 > end) return { missedEvents, malformed: true };
      const len = page.readUInt32LE(at + 4);
      dataAt = at + 8;
      dataLen = len - 4;
      next = at + 4 + len;
    } else {
      dataAt = at + 4;
      dataLen = typeLen * 4;
      next = dataAt + dataLen;
    }
    if (dataLen < 0 || next > end || next <= at) return { missedEvents, malformed: true };
    const type = dataLen >= 2 ? page.readUInt16LE(dataAt) : -1;
    const layout = list.find((l) => l.id === type);
    if (layout) {
      const r = layout.rwbs;
      if (dataLen < r.offset + r.size) return { missedEvents, malformed: true };
      const raw = page.subarray(dataAt + r.offset, dataAt + r.offset + r.size);
      const nul = raw.indexOf(0);
      onEvent({
        event: layout.id,
        dev: readUnsigned(page, dataAt + layout.dev.offset, layout.dev.size),
        sector: readUnsigned(page, dataAt + layout.sector.offset, layout.sector.size),
        sectors: readUnsigned(page, dataAt + layout.nrSector.offset, layout.nrSector.size),
        rwbs: raw.toString("latin1", 0, nul < 0 ? raw.length : nul),
      });
    }
    at = next;
  }
  return { missedEvents, malformed: false };
}
