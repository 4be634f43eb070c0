import { randomBytes } from "node:crypto";
import type { Duplex } from "node:stream";
import { type Clock, LifeboatError, type Logger, silentLogger, systemClock } from "../base/index.js";
import { FrameChannel, type HeartbeatSettings } from "./channel.js";
import { checkBlocks } from "./check-blocks.js";
import { protocolError, sessionClosed, shuttingDown } from "./errors.js";
import type { Command, Hello, PointDone, SequencedMessage, Welcome } from "./messages.js";
import { PROTOCOL_VERSIONS, chooseVersion } from "./negotiate.js";
import { PayloadPool } from "./payload-pool.js";
import { type ReceiverConnection, ReliableReceiver } from "./receiver.js";
import type { WindowLimits } from "./sender.js";
import { MAX_BLOCKS_PER_FRAME, MAX_PENDING_QUERIES } from "./frame.js";

/** Who is at the other end, as the listener's authorization established it. */
export interface WirePeer {
  /** Stable id of the authenticated peer (e.g. `agent:<server id>` from its certificate); streams are bound to it. */
  id: string;
}

/** What the replicator does with one agent's stream. */
export interface StreamHandlers {
  /** Applies a sequenced message; resolves once it is durable (only then is it acknowledged). Rejecting closes the connection; the agent resends. */
  apply(msg: SequencedMessage, seq: number): Promise<void>;
  /** Which of these block hashes the repository holds (HAVE_QUERY); absent: none. */
  have?(hashes: Buffer[]): Promise<boolean[]>;
  /**
   * Apply messages as they arrive, without waiting for earlier ones to be
   * durable (`apply` still resolves only when its message is durable, and
   * must apply messages in the order it is called).
   */
  pipelined?: boolean;
  /**
   * A stream the application kept across a restart (the replica's head
   * records its token and position): a HELLO presenting `token` that this
   * process does not know resumes it at `lastApplied` instead of starting over.
   */
  persisted?: { token: string; lastApplied: number };
  /** The stream this connection feeds (its token is what the application persists to resume it). */
  onStream?(token: string): void;
  /** Per-disk resume points for WELCOME; absent: every disk at the stream's last applied seq if resumed, else 0. */
  diskResume?(lastApplied: number): { index: number; lastAcked: number }[];
  /** The connection ended (the stream itself stays resumable). */
  onClose?(err: LifeboatError): void;
}

export interface WireServerOptions {
  /**
   * Decides whether `peer` may stream what `hello` claims (its server id
   * against its certificate, its disks); throws a LifeboatError to refuse
   * (sent to the agent as ERROR, connection closed).
   */
  accept(
    hello: Hello,
    peer: WirePeer,
    connection: ServerConnection,
  ): Promise<StreamHandlers> | StreamHandlers;
  window?: WindowLimits;
  heartbeat?: HeartbeatSettings;
  versions?: readonly number[];
  clock?: Clock;
  logger?: Logger;
}

/** The replicator's handle on one agent connection. */
export interface ServerConnection {
  readonly peer: WirePeer;
  /** Sends a COMMAND to the agent (make a PIT now, rescan, bandwidth cap). */
  command(cmd: Command): void;
  /** Tells the agent which PIT a POINT became. */
  pointDone(done: PointDone): void;
  /** Closes the connection; with an error, the agent is told why. */
  close(err?: LifeboatError): void;
  readonly closed: Promise<LifeboatError>;
}

interface Stream {
  token: string;
  peerId: string;
  receiver: ReliableReceiver;
  /** Those of the latest connection: a resumed stream applies through the handlers its new connection was given. */
  handlers: StreamHandlers;
  /** The connection currently feeding it. */
  current: FrameChannel | undefined;
}

/** What a replicator accepts unacknowledged (the agent's DEFAULT_WINDOW says why 4096 frames). */
export const DEFAULT_SERVER_WINDOW: WindowLimits = { frames: 4096, bytes: 32 * 1024 * 1024 };

/**
 * The replicator's end of the wire. `handle(socket, peer)` runs the protocol
 * on one authenticated connection: HELLO → version negotiation → `accept` →
 * WELCOME with the resume point, then sequenced frames through the stream's
 * ReliableReceiver (exactly once, in order, acknowledged when durable) and
 * HAVE_QUERYs through `have`.
 *
 * Streams (what a resume token names) outlive connections and are bound to
 * the peer that made them: another peer presenting the token gets a new
 * stream. One stream per peer is kept: a peer starting a new stream (no or
 * unknown token) drops its old one, so memory follows the number of agents.
 * Streams live in memory: after a replicator restart agents get
 * `resumed: false` and rescan.
 */
export class WireServer {
  private readonly streams = new Map<string, Stream>();
  private readonly byPeer = new Map<string, string>();
  private readonly channels = new Set<FrameChannel>();
  /** close() was called: new connections are refused. */
  private shut = false;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly window: WindowLimits;
  private readonly heartbeat: HeartbeatSettings;
  /** The buffers of large BLOCKS payloads, shared by every connection; a message's goes back once it is durable. */
  private readonly payloads: PayloadPool;

  constructor(private readonly opts: WireServerOptions) {
    this.clock = opts.clock ?? systemClock;
    this.log = opts.logger ?? silentLogger;
    this.window = opts.window ?? DEFAULT_SERVER_WINDOW;
    this.payloads = PayloadPool.forWindow(this.window.bytes);
    this.heartbeat = opts.heartbeat ?? { intervalMs: 5000, misses: 3 };
  }

  /** Open connections. */
  get connections(): number {
    return this.channels.size;
  }

  /** Refuses a connection before any protocol: sends ERROR and closes. */
  refuse(socket: Duplex, err: LifeboatError): void {
    const channel = new FrameChannel(
      socket,
      "replicator",
      { onMessage: () => {}, onClose: () => {} },
      this.clock,
      this.heartbeat,
    );
    channel.fail(err);
  }

  handle(socket: Duplex, peer: WirePeer): ServerConnection {
    if (this.shut) {
      // Closing: a connection that arrives now is refused, so the listener can finish closing.
      const err = shuttingDown();
      this.refuse(socket, err);
      return {
        peer,
        command: () => undefined,
        pointDone: () => undefined,
        close: () => undefined,
        closed: Promise.resolve(err),
      };
    }
    let stream: Stream | undefined;
    let handlers: StreamHandlers | undefined;
    let hello: Hello | undefined;
    let pendingQueries = 0;
    let endedWith!: (err: LifeboatError) => void;
    const closed = new Promise<LifeboatError>((r) => (endedWith = r));
    const receiverConn: ReceiverConnection = {
      ack: (seq: number) => channel.send({ type: "ACK", seq }),
      fail: (err: unknown) => channel.fail(err),
    };
    const channel: FrameChannel = new FrameChannel(
      socket,
      "replicator",
      {
        onMessage: (msg, frame) => {
          if (msg.type === "HELLO") {
            if (hello) throw protocolError("a second HELLO");
            hello = msg;
            // bind() runs before WELCOME is written: frames that follow it find the stream.
            const bind = (s: Stream, h: StreamHandlers) => {
              stream = s;
              handlers = h;
            };
            this.greet(channel, msg, conn, receiverConn, bind).catch((err: unknown) => channel.fail(err));
            return;
          }
          if (!stream || !handlers || !hello)
            throw protocolError(`${msg.type} before the handshake finished`);
          switch (msg.type) {
            case "BLOCKS":
              checkBlocks(msg, hello.disks);
              stream.receiver.accept(frame.seq, msg, frame.payload.length);
              return;
            case "POINT":
              for (const d of msg.disks) {
                if (!hello.disks.some((h) => h.index === d.index))
                  throw protocolError(`POINT names disk ${d.index}, which HELLO did not declare`);
              }
              stream.receiver.accept(frame.seq, msg, frame.payload.length);
              return;
            case "HAVE_QUERY": {
              if (pendingQueries >= MAX_PENDING_QUERIES) {
                throw protocolError(`more than ${MAX_PENDING_QUERIES} HAVE_QUERYs unanswered`);
              }
              pendingQueries++;
              const ask = handlers.have?.(msg.hashes) ?? Promise.resolve(msg.hashes.map(() => false));
              ask.then(
                (have) => {
                  pendingQueries--;
                  channel.send({
                    type: "HAVE",
                    id: msg.id,
                    have: msg.hashes.map((_, i) => have[i] === true),
                  });
                },
                (err: unknown) => channel.fail(err),
              );
              return;
            }
            default:
              throw protocolError(`unexpected ${msg.type}`);
          }
        },
        onClose: (err) => {
          this.channels.delete(channel);
          if (stream?.current === channel) {
            stream.current = undefined;
            stream.receiver.detach(receiverConn);
          }
          if (err.code !== "WIRE_SESSION_CLOSED" && err.code !== "WIRE_CONNECTION_CLOSED") {
            this.log.warn(
              { peer: peer.id, code: err.code, err: err.message },
              "wire connection closed with an error",
            );
          }
          handlers?.onClose?.(err);
          endedWith(err);
        },
      },
      this.clock,
      this.heartbeat,
      this.payloads,
    );
    this.channels.add(channel);
    const conn: ServerConnection = {
      peer,
      command: (cmd) => channel.send({ ...cmd, type: "COMMAND" }),
      pointDone: (done) => channel.send({ ...done, type: "POINT_DONE" }),
      close: (err) => (err ? channel.fail(err) : channel.close(sessionClosed())),
      closed,
    };
    return conn;
  }

  /** Closes every connection (before the listener closes: server.close() waits for them). */
  close(): void {
    this.shut = true;
    for (const c of [...this.channels]) c.close(shuttingDown());
  }

  private async greet(
    channel: FrameChannel,
    hello: Hello,
    conn: ServerConnection,
    receiverConn: ReceiverConnection,
    bind: (stream: Stream, handlers: StreamHandlers) => void,
  ): Promise<void> {
    const version = chooseVersion(this.opts.versions ?? PROTOCOL_VERSIONS, hello.versions);
    const handlers = await this.opts.accept(hello, conn.peer, conn);
    if (this.shut) throw shuttingDown();
    if (channel.closed) throw sessionClosed();
    let stream = hello.resumeToken ? this.streams.get(hello.resumeToken) : undefined;
    let resumed = stream !== undefined && stream.peerId === conn.peer.id;
    if (hello.resumeToken && handlers.persisted?.token === hello.resumeToken) {
      // The handlers' durable state is the truth: an in-memory stream may have applied past what it
      // acknowledged before its connection ended, and the handlers have since made that durable.
      stream = this.newStream(conn.peer.id, handlers, handlers.persisted);
      resumed = true;
    } else if (!resumed) stream = this.newStream(conn.peer.id, handlers);
    const s = stream!;
    s.handlers = handlers;
    // A stream has one connection: a reconnect replaces one the agent gave up on (half-open).
    if (s.current && s.current !== channel) s.current.close(sessionClosed());
    s.current = channel;
    await s.receiver.idle();
    if (channel.closed || s.current !== channel) throw sessionClosed();
    s.receiver.attach(receiverConn);
    const lastAcked = s.receiver.lastApplied;
    const welcome: Welcome = {
      version,
      resumeToken: s.token,
      resumed,
      lastAcked,
      disks:
        handlers.diskResume?.(lastAcked) ??
        hello.disks.map((d) => ({ index: d.index, lastAcked: resumed ? lastAcked : 0 })),
      window: this.window,
      limits: { maxBlocksPerFrame: MAX_BLOCKS_PER_FRAME },
      heartbeatMs: this.heartbeat.intervalMs,
      heartbeatMisses: this.heartbeat.misses,
    };
    bind(s, handlers);
    handlers.onStream?.(s.token);
    channel.send({ ...welcome, type: "WELCOME" });
  }

  private newStream(
    peerId: string,
    handlers: StreamHandlers,
    persisted?: { token: string; lastApplied: number },
  ): Stream {
    const old = this.byPeer.get(peerId);
    if (old) {
      this.streams.get(old)?.current?.close(sessionClosed());
      this.streams.delete(old);
    }
    const token = persisted?.token ?? randomBytes(24).toString("base64url");
    const stream: Stream = {
      token,
      peerId,
      handlers,
      current: undefined,
      receiver: new ReliableReceiver(
        (msg, seq) => stream.handlers.apply(msg, seq).then(() => this.payloads.giveBack(msg)),
        this.window,
        {
          pipelined: handlers.pipelined ?? false,
          ...(persisted ? { lastApplied: persisted.lastApplied } : {}),
        },
      ),
    };
    this.streams.set(token, stream);
    this.byPeer.set(peerId, token);
    return stream;
  }
}
