/**
 * Worker thread that computes one SHA-256 over a stream of pieces sent in
 * order (hash-thread.ts): bytes in memory shared with the sender, or a
 * length of zeros hashed from one static buffer. It answers each piece that
 * asks for it once it was hashed (its buffer may then be reused), and the
 * digest when asked.
 */
import { createHash } from "node:crypto";
import { parentPort } from "node:worker_threads";
import { serveMessages } from "../base/workers.js";
import type { HashReply, HashRequest } from "./hash-thread.js";

const ZEROS = Buffer.alloc(4 << 20);
const hash = createHash("sha256");

function reply(msg: HashReply): void {
  parentPort!.postMessage(msg);
}

serveMessages<HashRequest>((msg) => {
  switch (msg.type) {
    case "bytes":
      hash.update(msg.bytes);
      if (msg.ack !== undefined) reply({ type: "hashed", ack: msg.ack });
      return;
    case "zeros":
      for (let left = msg.length; left > 0; left -= ZEROS.length)
        hash.update(ZEROS.subarray(0, Math.min(left, ZEROS.length)));
      return;
    case "digest":
      reply({ type: "digest", hex: hash.digest("hex") });
      return;
  }
});
