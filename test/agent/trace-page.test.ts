import assert from "node:assert/strict";
import { readFileSync, existsSync } from "node:fs";
import { describe, it } from "node:test";
import { decodePage, parseBioQueueFormat, type BioEvent } from "../../src/agent/trace-page.js";

// The format file as this machine's kernel (6.18) prints it; the test also
// parses the live one when it is readable.
const FORMAT = `name: block_bio_queue
ID: 2097
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;
\tfield:sector_t sector;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned int nr_sector;\toffset:24;\tsize:4;\tsigned:0;
\tfield:char rwbs[10];\toffset:28;\tsize:10;\tsigned:0;
\tfield:char comm[16];\toffset:38;\tsize:16;\tsigned:0;
`;

const layout = parseBioQueueFormat(FORMAT);

function record(dev: number, sector: number, sectors: number, rwbs: string, id = layout.id): Buffer {
  const r = Buffer.alloc(56);
  r.writeUInt16LE(id, 0);
  r.writeUInt32LE(dev, 8);
  r.writeBigUInt64LE(BigInt(sector), 16);
  r.writeUInt32LE(sectors, 24);
  r.write(rwbs, 28, "latin1");
  r.write("kworker", 38, "latin1");
  return r;
}

/** An event of the small kind: type_len = data length / 4 in the header word. */
const small = (data: Buffer) => Buffer.concat([word(data.length / 4, 7), data]);
/** An event of the long kind: type_len 0, then a length word counting itself. */
const long = (data: Buffer) => Buffer.concat([word(0, 7), u32(data.length + 4), data]);
const word = (typeLen: number, delta: number) => u32(typeLen | (delta << 5));
function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

function page(events: Buffer[], flags = 0): Buffer {
  const data = Buffer.concat(events);
  const p = Buffer.alloc(4096);
  p.writeBigUInt64LE(123456789n, 0);
  p.writeUInt32LE((data.length | flags) >>> 0, 8);
  data.copy(p, 16);
  return p;
}

function decode(p: Buffer) {
  const events: Omit<BioEvent, "event">[] = [];
  const res = decodePage(p, layout, ({ event, ...e }) => {
    assert.equal(event, layout.id);
    events.push(e);
  });
  return { ...res, events };
}

void describe("trace page decoding", () => {
  void it("reads the fields the format file names", () => {
    assert.deepEqual(layout, {
      id: 2097,
      dev: { offset: 8, size: 4 },
      sector: { offset: 16, size: 8 },
      nrSector: { offset: 24, size: 4 },
      rwbs: { offset: 28, size: 10 },
    });
    const live = "/sys/kernel/tracing/events/block/block_bio_queue/format";
    if (existsSync(live)) assert.doesNotThrow(() => parseBioQueueFormat(readFileSync(live, "utf8")));
  });

  void it("decodes small and long events around time extends and discarded padding", () => {
    const dev = 7 * 2 ** 20 + 3;
    const p = page([
      small(record(dev, 2048, 8, "WS")),
      Buffer.concat([word(30, 1), u32(99)]), // time extend: 8 bytes, no data
      long(record(dev, 2 ** 40, 256, "FWFSM")),
      Buffer.concat([word(29, 5), u32(64), Buffer.alloc(60)]), // a discarded event: the length word counts itself
      small(record(dev, 100, 1, "R", 1)), // another event id: skipped
      small(record(dev, 4096, 2048, "D")),
    ]);
    const r = decode(p);
    assert.equal(r.malformed, false);
    assert.equal(r.missedEvents, false);
    assert.deepEqual(r.events, [
      { dev, sector: 2048, sectors: 8, rwbs: "WS" },
      { dev, sector: 2 ** 40, sectors: 256, rwbs: "FWFSM" },
      { dev, sector: 4096, sectors: 2048, rwbs: "D" },
    ]);
  });

  void it("stops at null padding and honours the commit length", () => {
    const e = small(record(1, 1, 1, "W"));
    const p = page([e, word(29, 0), e]);
    assert.equal(decode(p).events.length, 1, "padding with no time delta ends the page");
    const q = page([e, e]);
    q.writeUInt32LE(e.length, 8); // commit says only one event's worth of data
    assert.equal(decode(q).events.length, 1);
  });

  void it("reports the lost-events flag and malformed pages", () => {
    assert.equal(decode(page([small(record(1, 1, 1, "W"))], 0x80000000)).missedEvents, true);
    const bad = page([Buffer.concat([word(0, 1), u32(4000)])]);
    assert.equal(decode(bad).malformed, true, "a length past the commit is malformed");
  });
});
