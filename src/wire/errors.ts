import { LifeboatError } from "../base/index.js";

/**
 * The wire's own errors. A protocol error means the peer sent something the
 * protocol forbids: the connection that carried it is closed (never the
 * process), and the sender's next connection resumes from its last
 * acknowledged frame, so nothing is lost by closing. That is why protocol
 * errors are retryable: a new connection may well succeed.
 */

const PROTOCOL_HINT =
  "The connection was closed and will resume from the last acknowledged frame. If it recurs, check that agent and replicator run adjacent Lifeboat releases and that nothing between them rewrites the TLS stream; report it with both logs.";

export function protocolError(message: string, cause?: unknown): LifeboatError {
  return new LifeboatError("WIRE_PROTOCOL", message, { hint: PROTOCOL_HINT, cause, retryable: true });
}

export function frameTooLarge(message: string): LifeboatError {
  return new LifeboatError("WIRE_FRAME_TOO_LARGE", message, { hint: PROTOCOL_HINT, retryable: true });
}

export function checksumMismatch(message: string): LifeboatError {
  return new LifeboatError("WIRE_CHECKSUM", message, { hint: PROTOCOL_HINT, retryable: true });
}

export function versionUnsupported(ours: readonly number[], theirs: readonly number[]): LifeboatError {
  return new LifeboatError(
    "WIRE_VERSION_UNSUPPORTED",
    `no common wire protocol version: this side speaks ${ours.join(", ")}, the peer ${theirs.join(", ") || "none"}`,
    {
      hint: "Agents and replicators work together across adjacent releases only. Upgrade the older side (usually the agent: lifeboat bundle publish, then reinstall).",
    },
  );
}

export function peerDead(idleMs: number): LifeboatError {
  return new LifeboatError(
    "WIRE_PEER_DEAD",
    `the peer sent nothing for ${idleMs} ms, not even a heartbeat; the connection is considered dead`,
    {
      hint: "The link or the peer stalled (a VPN drop, a firewall expiring the connection, a hung process). The agent reconnects by itself and resumes; if it recurs, check the link and the peer's load.",
      retryable: true,
    },
  );
}

export function connectionClosed(message: string, cause?: unknown): LifeboatError {
  return new LifeboatError("WIRE_CONNECTION_CLOSED", message, {
    hint: "The connection to the peer ended. The agent reconnects by itself and resumes from the last acknowledged frame.",
    retryable: true,
    cause,
  });
}

export function sessionClosed(): LifeboatError {
  return new LifeboatError("WIRE_SESSION_CLOSED", "the wire session was closed by this side", {
    hint: "The process is shutting down or the session was replaced; nothing to do.",
  });
}

/** The replicator is stopping (shutdown, restart, upgrade): the agent reconnects with backoff. */
export function shuttingDown(): LifeboatError {
  return new LifeboatError("WIRE_SHUTTING_DOWN", "the replicator is shutting down", {
    hint: "Nothing to do: the agent reconnects and resumes when the replicator is back.",
    retryable: true,
  });
}

/** An ERROR frame from the peer, carried on with the peer's code. */
export function remoteError(body: {
  code: string;
  message: string;
  hint?: string | undefined;
  retryable?: boolean | undefined;
}): LifeboatError {
  return new LifeboatError(body.code, `the peer reported: ${body.message}`, {
    hint: body.hint ?? "",
    retryable: body.retryable ?? false,
  });
}

export function streamReset(): LifeboatError {
  return new LifeboatError(
    "WIRE_STREAM_RESET",
    "the replicator does not know this replication stream any more (it restarted or lost its state); frames it had acknowledged may not be kept",
    {
      hint: "Nothing to do by hand: the agent starts a new stream and rescans its disks to send what the replicator lacks.",
      retryable: true,
    },
  );
}
