/**
 * Stopping worker threads safely. A worker that loads a native addon
 * (@ronomon/direct-io, zstd-napi) and is terminated while the addon
 * initialises aborts the whole process: the addon asserts that every N-API
 * call succeeds, and calls fail once termination has begun. So a pool never
 * terminates its workers outright: it asks each to stop, the worker closes
 * its port when it reaches that message (its modules are loaded by then),
 * and only a worker that has not exited after a grace period is terminated.
 */
import { writeFileSync } from "node:fs";
import { type Worker, parentPort } from "node:worker_threads";

const STOP = "lifeboat:stop-worker";

/**
 * Young generation of a worker that encodes or decodes blocks, MiB. Each
 * block costs a few buffers that die at once (a cipher's or compressor's
 * output among them), and they are freed only when the worker collects
 * garbage: a small young generation collects often, so they do not pile up
 * to tens of MiB per worker (an export's peak RSS fell from about 300 to
 * 250 MiB; its CPU time stayed within the run-to-run noise).
 */
export const WORKER_YOUNG_GENERATION_MB = 2;

/** Thread names of the agent's block workers (hashing, compression) and the repository's chunk workers. */
export const BLOCK_THREAD_NAME = "lifeboat-block";
export const CHUNK_THREAD_NAME = "lifeboat-chunk";

/**
 * In a worker: handles each message from the pool, and stops when asked.
 * `threadName` (at most 15 bytes) names the worker's thread for the kernel,
 * so that `top -H`, `ps -L` and /proc/PID/task/TID/comm tell the pools'
 * threads apart from the main thread and libuv's (all "node" otherwise).
 */
export function serveMessages<T>(handle: (msg: T) => void, threadName?: string): void {
  if (threadName) nameThread(threadName);
  const port = parentPort!;
  port.on("message", (msg: T | { type: typeof STOP }) => {
    if ((msg as { type?: unknown })?.type === STOP) port.close();
    else handle(msg as T);
  });
}

/** In the pool: asks `w` to stop, terminating it only if it has not exited after `graceMs`. */
export async function stopWorker(w: Worker, graceMs = 10_000): Promise<void> {
  if (w.threadId === -1) return;
  const exited = new Promise<void>((resolve) => w.once("exit", () => resolve()));
  // An unref'd worker (the agent's) must still keep the process alive until it has stopped.
  w.ref();
  try {
    w.postMessage({ type: STOP });
  } catch {
    // The port is closed: the worker has exited or is exiting.
  }
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<"late">((resolve) => {
    timer = setTimeout(() => resolve("late"), graceMs);
    timer.unref();
  });
  if ((await Promise.race([exited, late])) === "late") await w.terminate();
  clearTimeout(timer);
}

/** Names the calling thread (Linux; elsewhere, or where /proc is not mounted, nothing happens). */
function nameThread(name: string): void {
  try {
    writeFileSync("/proc/thread-self/comm", name.slice(0, 15));
  } catch {
    // Not Linux, or no /proc: the thread keeps its name.
  }
}
