/**
 * Follows a file another process appends to (QEMU's serial console file):
 * `poll()` reads whatever was added since the last call and hands it to the
 * sink. Polling keeps it simple and works for any filesystem.
 */
import { promises as fs } from "node:fs";
import type { LineSink } from "./line-sink.js";

const CHUNK = 64 << 10;

export class FileFollower {
  private offset = 0;

  constructor(
    private readonly file: string,
    private readonly sink: LineSink,
  ) {}

  /** Reads what was appended (at most `maxBytes` per call, so one poll stays short). */
  async poll(maxBytes = 4 << 20): Promise<void> {
    let fh;
    try {
      fh = await fs.open(this.file, "r");
    } catch {
      return; // not created yet
    }
    try {
      const buf = Buffer.alloc(CHUNK);
      for (let read = 0; read < maxBytes;) {
        const { bytesRead } = await fh.read(buf, 0, CHUNK, this.offset);
        if (bytesRead === 0) return;
        this.offset += bytesRead;
        read += bytesRead;
        this.sink.push(buf.subarray(0, bytesRead));
      }
    } finally {
      await fh.close();
    }
  }
}
