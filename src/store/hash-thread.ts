import { Worker } from "node:worker_threads";
import { LifeboatError } from "../base/index.js";
import { stopWorker } from "../base/workers.js";

export type HashRequest =
  { type: "bytes"; bytes: Uint8Array; ack?: number } | { type: "zeros"; length: number } | { type: "digest" };

export type HashReply = { type: "hashed"; ack: number } | { type: "digest"; hex: string };

/**
 * One SHA-256 computed on a thread of its own (hash-worker.ts) from pieces
 * given in order, so that hashing a whole disk takes neither the main
 * thread (which keeps the workers fed) nor a decode worker. Bytes in a
 * SharedArrayBuffer are not copied: `then` runs once the thread hashed them
 * (their buffer may be reused from then on). A failure of the thread goes to
 * `onError` and fails the digest.
 */
export class HashThread {
  private readonly worker: Worker;
  private readonly acks = new Map<number, () => void>();
  private nextAck = 0;
  private waiting: { resolve(hex: string): void; reject(e: Error): void } | undefined;
  private failure: Error | undefined;

  constructor(private readonly onError: (err: Error) => void = () => undefined) {
    this.worker = new Worker(new URL("./hash-worker.js", import.meta.url));
    this.worker.on("message", (m: HashReply) => {
      if (m.type === "hashed") {
        const then = this.acks.get(m.ack);
        this.acks.delete(m.ack);
        then?.();
      } else {
        this.waiting?.resolve(m.hex);
        this.waiting = undefined;
      }
    });
    this.worker.on("error", (err) => this.fail(err));
    this.worker.on("exit", () => {
      if (this.waiting || this.acks.size > 0)
        this.fail(new LifeboatError("STORE_IO", "the hash thread stopped with work in hand"));
    });
  }

  update(bytes: Uint8Array, then?: () => void): void {
    if (this.failure) return;
    if (!then) {
      this.worker.postMessage({ type: "bytes", bytes } satisfies HashRequest);
      return;
    }
    const ack = this.nextAck++;
    this.acks.set(ack, then);
    this.worker.postMessage({ type: "bytes", bytes, ack } satisfies HashRequest);
  }

  zeros(length: number): void {
    if (this.failure || length <= 0) return;
    this.worker.postMessage({ type: "zeros", length } satisfies HashRequest);
  }

  /** The digest (hex) of everything given so far; once only. */
  digest(): Promise<string> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
      this.worker.postMessage({ type: "digest" } satisfies HashRequest);
    });
  }

  async close(): Promise<void> {
    this.failure ??= new LifeboatError("STORE_IO", "the hash thread is closed");
    await stopWorker(this.worker);
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    this.acks.clear();
    this.waiting?.reject(err);
    this.waiting = undefined;
    this.onError(err);
  }
}
