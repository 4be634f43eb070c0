import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { LineSink, cleanLine } from "../../src/launch/targets/line-sink.js";

function sink(opts: { maxLineBytes?: number; maxTotalBytes?: number } = {}) {
  const lines: string[] = [];
  let limited = 0;
  const s = new LineSink({
    maxLineBytes: opts.maxLineBytes ?? 100,
    maxTotalBytes: opts.maxTotalBytes ?? 1000,
    keepLast: 2,
    onLine: (l) => lines.push(l),
    onLimit: () => limited++,
  });
  return { s, lines, limited: () => limited };
}

void describe("line sink", () => {
  void it("joins lines split across chunks and passes the last one on at the end", () => {
    const { s, lines } = sink();
    s.push(Buffer.from("one\ntw"));
    s.push(Buffer.from("o\r\nthr"));
    assert.equal(s.pending(), "thr");
    s.end();
    assert.deepEqual(lines, ["one", "two", "thr"]);
    assert.deepEqual(s.lastLines(), ["two", "thr"]);
  });

  void it("keeps a character split across chunks whole", () => {
    const { s, lines } = sink();
    const bytes = Buffer.from("héllo\n");
    s.push(bytes.subarray(0, 2));
    s.push(bytes.subarray(2));
    assert.deepEqual(lines, ["héllo"]);
  });

  void it("cuts long lines and stops passing lines on past the total, keeping the last ones", () => {
    const { s, lines, limited } = sink({ maxLineBytes: 5, maxTotalBytes: 20 });
    s.push(Buffer.from("abcdefghij\n"));
    for (let i = 0; i < 10; i++) s.push(Buffer.from(`l${i}\n`));
    assert.equal(lines[0], "abcde [line cut]");
    assert.ok(lines.length < 11);
    assert.equal(limited(), 1);
    assert.ok(s.suppressed > 0);
    assert.deepEqual(s.lastLines(), ["l8", "l9"]);
  });

  void it("drops terminal escapes and control characters", () => {
    assert.equal(cleanLine("\x1b[0;32m  OK  \x1b[0m Started\x07 x\ty"), "  OK   Started x\ty");
  });
});
