import os from "node:os";
import path from "node:path";

/** Where tests keep the Node 24 binary of the single executable between runs (as boot-kernel.ts does). */
export function testNodeCache(): string {
  return process.getuid?.() === 0
    ? "/var/cache/lifeboat-test/node-sea"
    : path.join(os.tmpdir(), "lifeboat-test-cache", "node-sea");
}
