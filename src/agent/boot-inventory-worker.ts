/**
 * @internal A worker thread that collects one boot inventory and exits:
 * unpacking an initramfs of tens of megabytes takes a second or more of CPU
 * (zstd decompresses synchronously), which must not hold up replication on
 * the agent's main thread.
 */
import { parentPort, workerData } from "node:worker_threads";
import { collectBootInventory } from "./boot-inventory.js";

const { root, now } = workerData as { root: string; now: number };
collectBootInventory({ root, now }).then(
  (inventory) => parentPort!.postMessage({ ok: true, inventory }),
  (err: unknown) => parentPort!.postMessage({ ok: false, message: String(err) }),
);
