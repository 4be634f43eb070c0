import type { Duplex } from "node:stream";
import { type Clock, LifeboatError } from "../base/index.js";
import { decodeMessage, encodeMessage } from "./codec.js";
import { connectionClosed, peerDead, protocolError, remoteError } from "./errors.js";
import { FLAG_RESENT, type Frame, HEADER_BYTES, encodeHeader, frameTypeName, payloadCrc } from "./frame.js";
import { FrameDecoder } from "./frame-decoder.js";
import type { WireMessage } from "./messages.js";
import type { PayloadPool } from "./payload-pool.js";
import type { OutgoingFrame } from "./sender.js";

export type WireRole = "agent" | "replicator";

/** What each side may receive; anything else is a protocol error. */
const ACCEPTS: Record<WireRole, ReadonlySet<WireMessage["type"]>> = {
  agent: new Set(["WELCOME", "ACK", "HAVE", "POINT_DONE", "PING", "PONG", "COMMAND", "ERROR"]),
  replicator: new Set(["HELLO", "BLOCKS", "HAVE_QUERY", "POINT", "PING", "PONG", "ERROR"]),
};

export interface HeartbeatSettings {
  /** A PING is sent every intervalMs. */
  intervalMs: number;
  /** The peer is dead after this many intervals without a byte from it. */
  misses: number;
}

export interface ChannelHandlers {
  /** One decoded, direction-checked message (PING, PONG and ERROR are handled here). Throwing closes the channel with the error. */
  onMessage(msg: WireMessage, frame: Frame): void;
  /** Called once, with why the channel closed. */
  onClose(err: LifeboatError): void;
}

/**
 * One connection speaking frames: decodes what arrives, answers PINGs,
 * sends PINGs and declares the peer dead after `misses` silent intervals,
 * turns a peer's ERROR into a close with that error, and on any protocol
 * fault sends an ERROR frame, closes the socket and reports once. It knows
 * nothing about sequencing: the sessions on top do.
 */
export class FrameChannel {
  private readonly decoder: FrameDecoder;
  private lastHeard: number;
  private timer: NodeJS.Timeout | undefined;
  private nonce = 0;
  private done = false;
  /** Bytes written, frames included. */
  bytesOut = 0;

  constructor(
    private readonly socket: Duplex,
    private readonly role: WireRole,
    private readonly handlers: ChannelHandlers,
    private readonly clock: Clock,
    heartbeat: HeartbeatSettings,
    /** Buffers for large payloads, given back by whoever is done with the messages (PayloadPool). */
    payloads?: PayloadPool,
  ) {
    this.decoder = new FrameDecoder(payloads);
    this.lastHeard = clock.now();
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("end", () => this.finish(connectionClosed("the peer closed the connection")));
    socket.on("close", () => this.finish(connectionClosed("the connection closed")));
    socket.on("error", (err) => this.finish(connectionClosed(`the connection failed: ${err.message}`, err)));
    this.setHeartbeat(heartbeat);
  }

  get closed(): boolean {
    return this.done;
  }

  setHeartbeat(h: HeartbeatSettings): void {
    if (this.timer) clearInterval(this.timer);
    if (this.done) return;
    // The one timer of the wire: it only samples the injected clock, which decides.
    this.timer = setInterval(() => this.beat(h), h.intervalMs);
    this.timer.unref();
  }

  /** Sends an unsequenced message. */
  send(msg: WireMessage): void {
    if (this.done) return;
    const { type, payload } = encodeMessage(msg);
    this.write(encodeHeader(type, 0, 0, payload.length, payloadCrc(payload)), payload);
  }

  /** Sends a sequenced frame kept by a ReliableSender. */
  sendSequenced(f: OutgoingFrame, resent: boolean): void {
    if (this.done) return;
    const flags = resent ? FLAG_RESENT : 0;
    if (!f.headroom) {
      this.write(encodeHeader(f.type, f.seq, flags, f.payload.length, f.crc), f.payload);
      return;
    }
    const { buffer, byteOffset, length } = f.payload;
    const frame = Buffer.from(buffer, byteOffset - HEADER_BYTES, HEADER_BYTES + length);
    encodeHeader(f.type, f.seq, flags, length, f.crc, frame);
    this.bytesOut += frame.length;
    this.socket.write(frame);
  }

  /** Tells the peer why (an ERROR frame), closes the connection and reports `err`. */
  fail(err: unknown): void {
    if (this.done) return;
    const e =
      err instanceof LifeboatError
        ? err
        : new LifeboatError("WIRE_INTERNAL", "the other side of the wire failed unexpectedly", {
            hint: "Check the replicator's log for the error; the agent reconnects and resumes.",
            retryable: true,
            cause: err,
          });
    try {
      this.send({
        type: "ERROR",
        code: e.code,
        message: e.message.slice(0, 4096),
        hint: e.hint.slice(0, 4096),
        retryable: e.retryable,
      });
    } catch {
      // The error could not be encoded (a code outside the schema): closing says enough.
    }
    this.finish(e);
  }

  /** Closes without an error frame; reports `why`. */
  close(why: LifeboatError): void {
    this.finish(why);
  }

  private write(header: Buffer, payload: Buffer): void {
    this.bytesOut += header.length + payload.length;
    this.socket.cork();
    this.socket.write(header);
    if (payload.length > 0) this.socket.write(payload);
    this.socket.uncork();
  }

  private onData(chunk: Buffer): void {
    if (this.done) return;
    this.lastHeard = this.clock.now();
    try {
      for (const frame of this.decoder.push(chunk)) {
        if (this.done) return;
        const msg = decodeMessage(frame.type, frame.payload);
        if (!ACCEPTS[this.role].has(msg.type)) {
          throw protocolError(`${frameTypeName(frame.type)} is not a message the ${this.role} receives`);
        }
        if (msg.type === "PING") this.send({ type: "PONG", nonce: msg.nonce });
        else if (msg.type === "PONG") continue;
        else if (msg.type === "ERROR") return this.finish(remoteError(msg));
        else this.handlers.onMessage(msg, frame);
      }
    } catch (err) {
      this.fail(err);
    }
  }

  private beat(h: HeartbeatSettings): void {
    const silent = this.clock.now() - this.lastHeard;
    if (silent >= h.intervalMs * h.misses) return this.fail(peerDead(silent));
    this.send({ type: "PING", nonce: (this.nonce = (this.nonce + 1) % Number.MAX_SAFE_INTEGER) });
  }

  private finish(err: LifeboatError): void {
    if (this.done) return;
    this.done = true;
    if (this.timer) clearInterval(this.timer);
    this.socket.end();
    // A peer that stopped reading never finishes the close: do not wait for it.
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.handlers.onClose(err);
  }
}
