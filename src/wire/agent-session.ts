import { randomInt } from "node:crypto";
import type { Duplex } from "node:stream";
import { type Clock, LifeboatError, type Logger, silentLogger, systemClock } from "../base/index.js";
import { FrameChannel, type HeartbeatSettings } from "./channel.js";
import { connectionClosed, protocolError, sessionClosed, versionUnsupported } from "./errors.js";
import type {
  Command,
  DiskInfo,
  Hello,
  PointDone,
  SequencedMessage,
  Welcome,
  WireMessage,
} from "./messages.js";
import { MAX_PENDING_QUERIES } from "./frame.js";
import { PROTOCOL_VERSIONS } from "./negotiate.js";
import { ReliableSender, type WindowLimits } from "./sender.js";

export interface AgentSessionOptions {
  /** Opens a new connection to the replicator (connectWire, or any Duplex in tests). */
  connect(): Promise<Duplex>;
  agent: Hello["agent"];
  /** The disks as HELLO names them; a function is asked again at every connection (a disk may grow). */
  disks: DiskInfo[] | (() => DiskInfo[]);
  /** Upper bound on the window; the replicator's WELCOME may narrow it. */
  window?: WindowLimits;
  /** Heartbeat until WELCOME sets the replicator's. */
  heartbeat?: HeartbeatSettings;
  /** Wait between reconnects: doubles from minMs up to maxMs, reset by a successful handshake. */
  backoff?: { minMs: number; maxMs: number };
  versions?: readonly number[];
  /** The disks' generation ids for HELLO, asked at every connection (absent: none known). */
  generations?(): { index: number; generation: string }[] | undefined;
  /** The resume token of a stream this agent ran before (kept across its restarts); see `token`. */
  resumeToken?: string;
  clock?: Clock;
  logger?: Logger;
  /** After each handshake. `resumed` false after an earlier one means the replicator lost the stream: rescan. */
  onWelcome?(welcome: Welcome): void;
  onCommand?(command: Command): void;
  onPointDone?(done: PointDone): void;
  /** A connection ended; the session reconnects unless the error is permanent. */
  onDisconnect?(err: LifeboatError): void;
}

/**
 * Frames and bytes sent and not yet acknowledged. Acknowledgements come with
 * checkpoints; scattered small writes travel as many small frames (a 1%
 * change of a 2 GiB disk took 4,628), so the frame limit is set high enough
 * that bytes, not frames, fill the window: at 1024 frames the sender waited
 * on a full window half of the time and the RPO lag doubled.
 */
export const DEFAULT_WINDOW: WindowLimits = { frames: 4096, bytes: 32 * 1024 * 1024 };
export const DEFAULT_HEARTBEAT: HeartbeatSettings = { intervalMs: 5000, misses: 3 };

/**
 * The agent's end of the wire: `send` a sequenced message (BLOCKS, POINT)
 * and it is delivered exactly once, in order, across reconnects; `have`
 * asks which block hashes the replicator holds. The session connects,
 * says HELLO (with the resume token of the last WELCOME), and after a lost
 * connection reconnects with backoff and resends what was not acknowledged.
 * A permanent refusal (no common version, a refused certificate, any ERROR
 * the replicator marks not retryable) ends the session: pending and later
 * calls reject with it.
 */
export class AgentSession {
  private readonly sender: ReliableSender;
  private readonly clock: Clock;
  private readonly log: Logger;
  private channel: FrameChannel | undefined;
  /** The channel once its handshake finished (a HAVE_QUERY before WELCOME is a protocol error). */
  private shaken: FrameChannel | undefined;
  private token: string | undefined;
  private welcome: Welcome | undefined;
  private stopped: LifeboatError | undefined;
  private readonly queries = new Map<
    number,
    { count: number; resolve(have: boolean[]): void; reject(err: unknown): void }
  >();
  private nextQuery = 1;
  private wake: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  /** Handshakes completed: 1 after start, one more per reconnect. */
  connections = 0;

  constructor(private readonly opts: AgentSessionOptions) {
    this.sender = new ReliableSender(opts.window ?? DEFAULT_WINDOW);
    this.token = opts.resumeToken;
    this.clock = opts.clock ?? systemClock;
    this.log = opts.logger ?? silentLogger;
  }

  /** Connects and shakes hands; resolves with the first WELCOME. Later connections are made in the background. */
  start(): Promise<Welcome> {
    if (this.loop) throw new Error("start() called twice");
    return new Promise((resolve, reject) => {
      this.loop = this.run(resolve, reject);
    });
  }

  /** Queues a sequenced message; resolves with its seq once it is in the window (waits while the window is full). */
  send(msg: SequencedMessage): Promise<number> {
    return this.sender.send(msg);
  }

  /** Resolves when the replicator has acknowledged `seq` (it is durable there). */
  whenAcked(seq: number): Promise<void> {
    return this.sender.whenAcked(seq);
  }

  /** Asks which of `hashes` (SHA-256 of blocks) the replicator holds. Rejects if the connection drops first; ask again. */
  have(hashes: Buffer[]): Promise<boolean[]> {
    if (this.stopped) return Promise.reject(this.stopped);
    const channel = this.shaken;
    if (!channel || channel.closed || channel !== this.channel)
      return Promise.reject(connectionClosed("not connected to the replicator"));
    if (this.queries.size >= MAX_PENDING_QUERIES) {
      return Promise.reject(new RangeError(`at most ${MAX_PENDING_QUERIES} have() calls may be outstanding`));
    }
    const id = this.nextQuery;
    this.nextQuery = (this.nextQuery % 0xffffffff) + 1;
    return new Promise((resolve, reject) => {
      this.queries.set(id, { count: hashes.length, resolve, reject });
      channel.send({ type: "HAVE_QUERY", id, hashes });
    });
  }

  get lastAcked(): number {
    return this.sender.lastAcked;
  }

  /** The stream's resume token once shaken hands: keep it to resume the stream after a restart. */
  get resumeToken(): string | undefined {
    return this.token;
  }

  get inFlight(): { frames: number; bytes: number } {
    return this.sender.inFlight;
  }

  get resent(): { frames: number; bytes: number } {
    return { frames: this.sender.resentFrames, bytes: this.sender.resentBytes };
  }

  /** The connection in use, for tests that cut it. */
  get currentChannel(): FrameChannel | undefined {
    return this.channel;
  }

  /**
   * Closes the current connection so that the session connects again at once
   * with a fresh HELLO (after a disk changed size); nothing is lost: what was
   * not acknowledged is resent.
   */
  reconnect(reason: string): void {
    this.channel?.close(connectionClosed(reason));
  }

  /** Stops reconnecting, closes the connection and fails pending calls with WIRE_SESSION_CLOSED. */
  async close(): Promise<void> {
    this.stop(sessionClosed());
    await this.loop;
  }

  private stop(err: LifeboatError): void {
    this.stopped ??= err;
    this.sender.close(this.stopped);
    this.channel?.close(this.stopped);
    this.wake?.();
  }

  private async run(started: (w: Welcome) => void, failed: (err: unknown) => void): Promise<void> {
    const backoff = this.opts.backoff ?? { minMs: 500, maxMs: 30_000 };
    let delay = backoff.minMs;
    let first = true;
    while (!this.stopped) {
      let err: LifeboatError;
      try {
        const socket = await this.opts.connect();
        const closed = this.connectOnce(socket);
        const welcome = await closed.welcome;
        this.connections++;
        delay = backoff.minMs;
        if (first) started(welcome);
        first = false;
        err = await closed.ended;
      } catch (e) {
        err = e instanceof LifeboatError ? e : (toRetryable(e) ?? connectionClosed(String(e), e));
      }
      this.sender.detach();
      this.channel = undefined;
      this.shaken = undefined;
      for (const q of this.queries.values()) q.reject(err);
      this.queries.clear();
      if (this.stopped) break;
      this.opts.onDisconnect?.(err);
      if (!err.retryable) {
        this.log.error({ code: err.code, err: err.message }, "wire session refused; not reconnecting");
        this.stop(err);
        break;
      }
      this.log.warn(
        { code: err.code, err: err.message, retryInMs: delay },
        "wire connection lost; reconnecting",
      );
      await this.pause(delay);
      delay = Math.min(backoff.maxMs, delay * 2);
    }
    if (first) failed(this.stopped);
  }

  /** Waits `ms` on the clock, or less if the session is closed meanwhile. */
  private async pause(ms: number): Promise<void> {
    const jittered = Math.round(ms * (0.75 + randomInt(0, 500) / 1000));
    await Promise.race([this.clock.sleep(jittered), new Promise<void>((r) => (this.wake = r))]);
    this.wake = undefined;
  }

  /** Runs one connection: HELLO, then WELCOME (or ERROR), then traffic until it closes. */
  private connectOnce(socket: Duplex): { welcome: Promise<Welcome>; ended: Promise<LifeboatError> } {
    let onWelcome!: (w: Welcome) => void;
    let onEnded!: (e: LifeboatError) => void;
    const welcome = new Promise<Welcome>((resolve) => (onWelcome = resolve));
    const ended = new Promise<LifeboatError>((resolve) => (onEnded = resolve));
    let shook = false;
    const versions = this.opts.versions ?? PROTOCOL_VERSIONS;
    const channel = new FrameChannel(
      socket,
      "agent",
      {
        onMessage: (msg) => {
          if (!shook) {
            if (msg.type !== "WELCOME") throw protocolError(`${msg.type} before WELCOME`);
            if (!versions.includes(msg.version)) throw versionUnsupported(versions, [msg.version]);
            this.handshake(channel, msg);
            shook = true;
            onWelcome(msg);
            return;
          }
          this.onMessage(msg);
        },
        onClose: (err) => {
          onEnded(err);
          // Before WELCOME the connection's end is the handshake's failure.
          if (!shook) welcomeFailed(err);
        },
      },
      this.clock,
      this.welcome
        ? { intervalMs: this.welcome.heartbeatMs, misses: this.welcome.heartbeatMisses }
        : (this.opts.heartbeat ?? DEFAULT_HEARTBEAT),
    );
    let welcomeFailed!: (e: LifeboatError) => void;
    const guarded = Promise.race([welcome, new Promise<never>((_, reject) => (welcomeFailed = reject))]);
    this.channel = channel;
    channel.send({
      type: "HELLO",
      versions: [...versions],
      agent: this.opts.agent,
      disks: typeof this.opts.disks === "function" ? this.opts.disks() : this.opts.disks,
      ...(this.token ? { resumeToken: this.token } : {}),
      ...generationsOf(this.opts.generations?.()),
    });
    return { welcome: guarded, ended };
  }

  private handshake(channel: FrameChannel, w: Welcome): void {
    const window = this.opts.window ?? DEFAULT_WINDOW;
    this.sender.setLimits({
      frames: Math.min(window.frames, w.window.frames),
      bytes: Math.min(window.bytes, w.window.bytes),
    });
    channel.setHeartbeat({ intervalMs: w.heartbeatMs, misses: w.heartbeatMisses });
    if (!w.resumed) this.sender.restart();
    else if (!this.welcome && this.sender.lastSeq === 0 && w.lastAcked > 0)
      this.sender.continueAfter(w.lastAcked);
    this.token = w.resumeToken;
    this.welcome = w;
    this.shaken = channel;
    this.sender.attach((f, resent) => channel.sendSequenced(f, resent), w.resumed ? w.lastAcked : 0);
    this.opts.onWelcome?.(w);
  }

  private onMessage(msg: WireMessage): void {
    switch (msg.type) {
      case "ACK":
        this.sender.ack(msg.seq);
        return;
      case "HAVE": {
        const q = this.queries.get(msg.id);
        if (!q) throw protocolError(`HAVE for query ${msg.id}, which was not asked`);
        if (msg.have.length !== q.count) {
          throw protocolError(
            `HAVE answers ${msg.have.length} hashes; query ${msg.id} asked about ${q.count}`,
          );
        }
        this.queries.delete(msg.id);
        q.resolve(msg.have);
        return;
      }
      case "COMMAND":
        this.opts.onCommand?.(msg);
        return;
      case "POINT_DONE":
        this.opts.onPointDone?.(msg);
        return;
      default:
        throw protocolError(`unexpected ${msg.type} after WELCOME`);
    }
  }
}

/** Network errors from connect() (refused, reset, TLS) are worth retrying; others are not. */
function toRetryable(e: unknown): LifeboatError | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code === "string" && /^E[A-Z]+$/.test(code)) {
    return connectionClosed(`cannot connect: ${(e as Error).message}`, e);
  }
  return undefined;
}

function generationsOf(g: { index: number; generation: string }[] | undefined): {
  generations?: { index: number; generation: string }[];
} {
  return g && g.length > 0 ? { generations: g } : {};
}
