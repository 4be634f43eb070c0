import { createHash } from "node:crypto";
import { constants, promises as fs } from "node:fs";
import path from "node:path";
import { type Clock, LifeboatError, type Logger, writeFileAtomic } from "../base/index.js";
import { decodeChunkBatch } from "../wire/index.js";
import type { AgentDisk } from "./config.js";
import type { ControlClient, FailbackPass } from "./control-client.js";
import { blockDeviceSizeBytes, deviceNumbers } from "../store/block-device.js";
import { mountedFilesystems } from "./mounted-filesystems.js";

/** Where a pass stands, kept in D/state/failback.json so a restart or a cut link resumes there. */
interface ReceiveState {
  failbackId: string;
  pass: number;
  /** Position in the pass's disk list, and the next chunk of that disk. */
  disk: number;
  cursor: number;
  /** The pass finished here but the control plane may not know yet. */
  completed?: number;
}

export interface ReceiverCounters {
  bytesReceived: number;
  chunksWritten: number;
  chunksCompared: number;
  passes: number;
}

export interface FailbackReceiverOptions {
  failbackId: string;
  control: ControlClient;
  disks: AgentDisk[];
  /** D/state. */
  stateDir: string;
  log: Logger;
  clock: Clock;
  /** Chunks hashed and compared per request (default 128). */
  batchChunks?: number;
  /** The failback ended (ready: replicate again with these generations; else stay fenced). */
  onEnd(end: NonNullable<FailbackPass["end"]>): Promise<void>;
}

const ZERO_ID = Buffer.alloc(32);

/**
 * The original server's agent in receive mode: makes its own disks equal to
 * the recovered instance's replica, pass after pass (control/failback.ts),
 * writing only the chunks the control plane says differ. A disk is opened
 * exclusively (O_EXCL on a block device fails while anything has it mounted,
 * and keeps it from being mounted meanwhile), so a mounted disk is never
 * written: the agent reports the mount and waits. Every batch is made
 * durable (fdatasync) before the cursor that covers it is saved.
 */
export class FailbackReceiver {
  readonly counters: ReceiverCounters = { bytesReceived: 0, chunksWritten: 0, chunksCompared: 0, passes: 0 };
  private stopped = false;
  private wake: (() => void) | undefined;
  private loopDone: Promise<void> = Promise.resolve();
  private statusText = "starting";

  constructor(private readonly o: FailbackReceiverOptions) {}

  get failbackId(): string {
    return this.o.failbackId;
  }

  start(): void {
    this.loopDone = this.loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.loopDone;
  }

  /** What it does now, for the status file. */
  get status(): string {
    return this.statusText;
  }

  private get file(): string {
    return path.join(this.o.stateDir, "failback.json");
  }

  private async loop(): Promise<void> {
    const { control, log } = this.o;
    let state = await this.load();
    let delay = 500;
    while (!this.stopped) {
      try {
        const p = await control.failbackPass(this.o.failbackId, state.completed);
        delay = 500;
        if (p.end) {
          log.info({ failbackId: this.o.failbackId, state: p.end.state }, "failback ended");
          this.statusText = `ended: ${p.end.state}`;
          await this.o.onEnd(p.end);
          await fs.rm(this.file, { force: true });
          return;
        }
        if (p.idleMs !== undefined) {
          this.statusText = "in sync; following the source";
          await this.sleep(p.idleMs);
          continue;
        }
        if (p.pass !== state.pass) {
          state = { failbackId: this.o.failbackId, pass: p.pass!, disk: 0, cursor: 0 };
          await this.save(state);
        }
        await this.runPass(p, state);
        state.completed = p.pass!;
        this.counters.passes++;
        await this.save(state);
      } catch (err) {
        if (this.stopped) return;
        const e =
          err instanceof LifeboatError ? err : new LifeboatError("AGENT_IO", String(err), { cause: err });
        if (e.code === "FAILBACK_PASS_STALE") {
          state = { failbackId: this.o.failbackId, pass: -1, disk: 0, cursor: 0 };
          continue;
        }
        if (e.code === "FAILBACK_NOT_FOUND") {
          log.warn({ failbackId: this.o.failbackId }, "the failback is gone; leaving receive mode");
          await fs.rm(this.file, { force: true });
          await this.o.onEnd({ state: "cancelled" });
          return;
        }
        this.statusText = `${e.code}: ${e.message}`;
        if (e.code.startsWith("FAILBACK_TARGET_"))
          await control
            .failbackProblem(this.o.failbackId, { code: e.code, message: e.message })
            .catch(() => undefined);
        log.warn({ code: e.code, err: e.message, retryInMs: delay }, "failback pass interrupted; resuming");
        await this.sleep(delay);
        delay = Math.min(10_000, delay * 2);
      }
    }
  }

  private async runPass(p: FailbackPass, state: ReceiveState): Promise<void> {
    const disks = p.disks ?? [];
    const batch = this.o.batchChunks ?? 128;
    for (; state.disk < disks.length && !this.stopped; state.disk++, state.cursor = 0) {
      const d = disks[state.disk]!;
      const cfg = this.o.disks.find((x) => x.index === d.target);
      if (!cfg)
        throw new LifeboatError("FAILBACK_TARGET_NO_DISK", `this server has no disk ${d.target}`, {
          hint: "add the disk to the agent's configuration (agent install --disk)",
        });
      const fd = await openForWrite(cfg, d.sizeBytes);
      try {
        this.statusText = `pass ${p.pass} (${p.kind}): disk ${d.target}`;
        if (p.kind === "changes") {
          let from: number | null = state.cursor;
          while (from !== null && !this.stopped) {
            const buf = await this.o.control.failbackChanges(this.o.failbackId, {
              pass: p.pass!,
              disk: d.source,
              from,
            });
            from = await this.apply(fd, buf, d);
            state.cursor = from ?? d.chunkCount;
            await this.save(state);
          }
        } else {
          for (let first = state.cursor; first < d.chunkCount && !this.stopped;) {
            const n = Math.min(batch, d.chunkCount - first);
            const hashes = await hashChunks(fd, first, n, d.chunkSize, d.sizeBytes);
            const buf = await this.o.control.failbackCompare(this.o.failbackId, {
              pass: p.pass!,
              disk: d.source,
              first,
              hashes,
            });
            this.counters.chunksCompared += n;
            await this.apply(fd, buf, d);
            first += n;
            state.cursor = first;
            await this.save(state);
          }
        }
      } finally {
        await fd.close();
      }
      if (this.stopped) return;
    }
    if (this.stopped) throw new LifeboatError("AGENT_STOPPING", "the agent is stopping", { retryable: true });
  }

  /** Writes a batch's chunks, makes them durable, and returns where the next batch starts. */
  private async apply(
    fd: fs.FileHandle,
    buf: Buffer,
    d: { sizeBytes: number; chunkSize: number },
  ): Promise<number | null> {
    const { header, chunks } = decodeChunkBatch<{ next: number | null }>(buf, d.chunkSize);
    this.counters.bytesReceived += buf.length;
    for (const c of chunks) {
      const at = c.index * d.chunkSize;
      const len = Math.min(c.data.length, d.sizeBytes - at);
      if (len <= 0) continue;
      await fd.write(c.data, 0, len, at);
      this.counters.chunksWritten++;
    }
    if (chunks.length > 0) await fd.datasync();
    return header.next;
  }

  private async load(): Promise<ReceiveState> {
    try {
      const s = JSON.parse(await fs.readFile(this.file, "utf8")) as ReceiveState;
      if (s.failbackId === this.o.failbackId) return s;
    } catch {
      // none yet, or damaged: start the pass the control plane gives from its beginning
    }
    return { failbackId: this.o.failbackId, pass: 0, disk: 0, cursor: 0 };
  }

  private async save(s: ReceiveState): Promise<void> {
    await writeFileAtomic(this.file, `${JSON.stringify(s)}\n`, { mode: 0o600 });
  }

  private async sleep(ms: number): Promise<void> {
    if (this.stopped) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(t);
        resolve();
      };
    });
    this.wake = undefined;
  }
}

/** Reads whether a failback was being received (D/state/failback.json), so a restarted agent goes on with it. */
export async function pendingFailback(stateDir: string): Promise<string | undefined> {
  try {
    const s = JSON.parse(await fs.readFile(path.join(stateDir, "failback.json"), "utf8")) as ReceiveState;
    return typeof s.failbackId === "string" ? s.failbackId : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Opens a target disk for writing, refusing one that is mounted (a block
 * device is opened O_EXCL, which the kernel refuses while a filesystem on it
 * is mounted and which keeps it from being mounted while open) or smaller
 * than the source disk.
 */
async function openForWrite(cfg: AgentDisk, sizeBytes: number): Promise<fs.FileHandle> {
  if (cfg.kind === "device") {
    const mounted = await mountedFilesystems(cfg.path, undefined, true);
    if (mounted.length > 0)
      throw new LifeboatError(
        "FAILBACK_TARGET_MOUNTED",
        `disk ${cfg.index} (${cfg.path}) has ${mounted.map((m) => `${m.source} mounted at ${m.mountPoint}`).join(", ")}; a failback never writes a mounted disk`,
        {
          hint: "unmount it (stop what uses it first); the failback goes on by itself. A boot disk fails back from the failback boot environment (docs/failback.md)",
        },
      );
  }
  let fd: fs.FileHandle;
  try {
    fd = await fs.open(cfg.path, constants.O_RDWR | (cfg.kind === "device" ? constants.O_EXCL : 0));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EBUSY")
      throw new LifeboatError(
        "FAILBACK_TARGET_MOUNTED",
        `disk ${cfg.index} (${cfg.path}) is in use (mounted, or held by another device); a failback never writes it then`,
        { hint: "unmount the disk and stop what holds it; the failback goes on by itself", cause: err },
      );
    throw new LifeboatError(
      "FAILBACK_TARGET_UNWRITABLE",
      `cannot open disk ${cfg.index} (${cfg.path}) for writing: ${(err as Error).message}`,
      { hint: "run the agent as root and check the disk's path in config.json", cause: err },
    );
  }
  const st = await fd.stat();
  const size = st.isBlockDevice()
    ? await blockDeviceSizeBytes(deviceNumbers(st.rdev).major, deviceNumbers(st.rdev).minor)
    : st.size;
  if (size < sizeBytes) {
    await fd.close();
    throw new LifeboatError(
      "FAILBACK_TARGET_TOO_SMALL",
      `disk ${cfg.index} (${cfg.path}) has ${size} bytes; the source disk has ${sizeBytes}`,
      { hint: "grow the disk (or fail back onto another server) and start the failback again" },
    );
  }
  return fd;
}

/** SHA-256 of each chunk (the zero id for an all-zero chunk), of the part within the source disk's size. */
async function hashChunks(
  fd: fs.FileHandle,
  first: number,
  n: number,
  chunkSize: number,
  sizeBytes: number,
): Promise<Buffer> {
  const start = first * chunkSize;
  const len = Math.min(n * chunkSize, sizeBytes - start);
  const buf = Buffer.alloc(len);
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fd.read(buf, got, len - got, start + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  const out = Buffer.alloc(n * 32);
  for (let i = 0; i < n; i++) {
    const c = buf.subarray(i * chunkSize, Math.min(len, (i + 1) * chunkSize));
    const h = c.every((b) => b === 0) ? ZERO_ID : createHash("sha256").update(c).digest();
    h.copy(out, i * 32);
  }
  return out;
}
