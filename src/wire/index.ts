/**
 * wire: the agent↔replicator data protocol, shared by both ends (so nothing
 * here reaches agent/, replicator/, store/ or control/).
 *
 * Words: a *frame* is a 24-byte header (magic, format, type, flags, sequence
 * number, length, CRC-32) and a payload of at most its type's limit; a
 * *message* is a frame's decoded payload. *Sequenced* messages (BLOCKS,
 * POINT) carry sequence numbers 1, 2, ... on a *stream*, which a *resume
 * token* names and which outlives connections; an *ACK* says everything up to
 * a sequence number is durable; the *window* bounds what is sent and not yet
 * acknowledged. A *consistency point* (POINT) becomes a PIT (POINT_DONE).
 * The wire runs on the control plane's TLS port, chosen by ALPN
 * `lifeboat-wire/1`. docs/wire.md describes it all.
 */
export {
  FrameType,
  type Frame,
  FLAG_RESENT,
  HEADER_BYTES,
  MAX_PAYLOAD,
  MAX_FRAME_BYTES,
  MAX_BLOCK_SIZE,
  MAX_BLOCKS_PER_FRAME,
  MAX_HAVE_HASHES,
  encodeFrame,
} from "./frame.js";
export { FrameDecoder } from "./frame-decoder.js";
export { PayloadArena } from "./payload-arena.js";
export { PayloadPool } from "./payload-pool.js";
export { decodeMessage, encodeMessage, type EncodedMessage } from "./codec.js";
export { checkBlocks } from "./check-blocks.js";
export {
  BLOCK_SIZES,
  CONSISTENCY_LEVELS,
  type Block,
  type BlockEncoding,
  type BlocksMessage,
  type Command,
  type ConsistencyLevel,
  type DiskInfo,
  type Hello,
  type MessageOf,
  type Patch,
  type Point,
  type PointDone,
  type SequencedMessage,
  type Welcome,
  type WireMessage,
} from "./messages.js";
export { PROTOCOL_VERSIONS, chooseVersion } from "./negotiate.js";
export { ReliableSender, type WindowLimits, type OutgoingFrame, type FrameWriter } from "./sender.js";
export { ReliableReceiver, type ApplyFn, type ReceiverConnection } from "./receiver.js";
export { FrameChannel, type ChannelHandlers, type HeartbeatSettings, type WireRole } from "./channel.js";
export {
  AgentSession,
  type AgentSessionOptions,
  DEFAULT_WINDOW,
  DEFAULT_HEARTBEAT,
} from "./agent-session.js";
export {
  WireServer,
  type WireServerOptions,
  type WirePeer,
  type StreamHandlers,
  type ServerConnection,
  DEFAULT_SERVER_WINDOW,
} from "./wire-server.js";
export { WIRE_ALPN, attachWire, wireConnectionHandler } from "./listener.js";
export { connectWire, type WireConnectOptions } from "./client.js";
export { type BatchChunk, decodeChunkBatch, encodeChunkBatch } from "./chunk-batch.js";
