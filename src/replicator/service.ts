import { type Clock, LifeboatError, type Logger, silentLogger, systemClock } from "../base/index.js";
import { type Pit, type Repository, readHead } from "../store/index.js";
import {
  type Hello,
  type HeartbeatSettings,
  type SequencedMessage,
  type ServerConnection,
  type StreamHandlers,
  type WindowLimits,
  WireServer,
  type WirePeer,
} from "../wire/index.js";
import { ReplicaApplier } from "./applier.js";
import { ReplicaStream } from "./replica-stream.js";

export interface ReplicatorOptions {
  repo: Repository;
  /**
   * The name a connecting agent's PITs carry, from its authenticated identity
   * and its HELLO; throws a LifeboatError to refuse it (a server id that is
   * not its certificate's, a decommissioned server).
   */
  serverName(peer: WirePeer, hello: Hello): Promise<string> | string;
  /**
   * The assignment epoch this replicator writes `server`'s replica with
   * (store/head.ts, "Fencing"), given the highest epoch its head has now;
   * throws a LifeboatError to refuse the stream. Without it the replica is
   * written with epoch 0 (a single replicator).
   */
  takeEpoch?(server: string, peer: WirePeer, headEpoch: number): Promise<number> | number;
  /** A checkpoint runs at most this long after the writes it covers (default 1 s). */
  commitIntervalMs?: number;
  commitBytes?: number;
  window?: WindowLimits;
  heartbeat?: HeartbeatSettings;
  onPit?(server: string, pit: Pit): void;
  clock?: Clock;
  logger?: Logger;
}

interface Replica {
  server: string;
  connection: ServerConnection;
  applier: ReplicaApplier;
  stream: ReplicaStream;
  /** Set when its connection ended: resolves once the replica is checkpointed (unless it failed) and closed. */
  closing?: Promise<void>;
}

/**
 * The replicator: receives agents' replication streams on the wire and
 * applies each to its server's replica in the repository (one writer per
 * server). Every connection gets the replica as its head left it: messages
 * are acknowledged only once a checkpoint made them durable, a connection
 * that ends cleanly is checkpointed first, and one whose message failed is
 * dropped without a checkpoint so that nothing applied in part survives.
 * The stream's resume token is kept in the head, so after a restart an
 * agent resumes where the head is instead of rescanning.
 */
export class Replicator {
  readonly wire: WireServer;
  private readonly replicas = new Map<string, Replica>();
  private readonly log: Logger;
  private closed = false;
  private commandIds = 0;
  /** Bytes of block data applied, by server name, since this replicator started (metrics). */
  private readonly applied = new Map<string, number>();
  /** Bytes of new chunks stored by the streams that ended (the others count theirs in their applier). */
  private storedByEnded = 0;
  /** Every replica not yet closed, even one another connection of its server replaced. */
  private readonly unclosed = new Set<Replica>();

  constructor(private readonly opts: ReplicatorOptions) {
    this.log = opts.logger ?? silentLogger;
    this.wire = new WireServer({
      accept: (hello, peer, connection) => this.accept(hello, peer, connection),
      ...(opts.window ? { window: opts.window } : {}),
      ...(opts.heartbeat ? { heartbeat: opts.heartbeat } : {}),
      clock: opts.clock ?? systemClock,
      logger: this.log,
    });
  }

  /**
   * Bytes of block data (as sent: compressed blocks and patches, not
   * references to blocks the repository holds) applied durably, by server
   * name, since this replicator started.
   */
  ingested(): Map<string, number> {
    return new Map(this.applied);
  }

  /**
   * What this replicator ingested since it started, for its heartbeat:
   * `receivedBytes` is ingested() over every server; `storedBytes` the
   * encoded bytes of new chunks it wrote to the repository (what
   * deduplication and compression left of them); `sessions` the streams it
   * holds now.
   */
  ingestCounters(): {
    receivedBytes: number;
    storedBytes: number;
    sessions: number;
    servers: Record<string, number>;
  } {
    let receivedBytes = 0;
    for (const n of this.applied.values()) receivedBytes += n;
    let storedBytes = this.storedByEnded;
    for (const r of this.unclosed) storedBytes += r.applier.stats.storedBytes;
    return {
      receivedBytes,
      storedBytes,
      sessions: this.replicas.size,
      servers: Object.fromEntries(this.applied),
    };
  }

  /** The servers (by name) whose streams this replicator holds now. */
  servers(): string[] {
    return [...this.replicas.keys()];
  }

  /**
   * Ends `server`'s stream here (it was assigned to another replicator): the
   * connection closes, the replica is checkpointed, and the agent reconnects
   * to the replicator its settings name, where it resumes.
   */
  async release(server: string): Promise<void> {
    const r = this.replicas.get(server);
    if (!r) return;
    this.log.info({ server }, "releasing a stream assigned elsewhere");
    r.connection.close(
      new LifeboatError("REPLICATOR_NOT_ASSIGNED", `server ${server} is now assigned to another replicator`, {
        hint: "the agent reads its replicator's address from its settings and reconnects there",
        retryable: true,
      }),
    );
    await this.retire(r);
  }

  /** Closes every connection and replica (checkpointing those in good order). */
  async close(): Promise<void> {
    this.closed = true;
    this.wire.close();
    await Promise.all([...this.replicas.values()].map((r) => this.retire(r)));
  }

  private async accept(hello: Hello, peer: WirePeer, connection: ServerConnection): Promise<StreamHandlers> {
    const { repo } = this.opts;
    if (this.closed)
      throw new LifeboatError("WIRE_SHUTTING_DOWN", "the replicator is shutting down", {
        hint: "Nothing to do: the agent reconnects and resumes when the replicator is back.",
        retryable: true,
      });
    const server = await this.opts.serverName(peer, hello);
    for (const d of hello.disks) {
      if (d.blockSize !== repo.config.chunkSize) {
        throw new LifeboatError(
          "REPLICA_BLOCK_SIZE",
          `disk ${d.index} is sent in blocks of ${d.blockSize} bytes; this repository's chunks are ${repo.config.chunkSize}`,
          { hint: `configure the agent's block size to ${repo.config.chunkSize}`, retryable: false },
        );
      }
    }
    // One writer per server: a new connection first retires the one before it.
    const previous = this.replicas.get(server);
    if (previous) {
      previous.connection.close();
      await this.retire(previous);
    }
    const head = await readHead(repo, server);
    const epoch = this.opts.takeEpoch ? await this.opts.takeEpoch(server, peer, head?.epoch ?? 0) : 0;
    const applier = await ReplicaApplier.open(
      repo,
      server,
      hello.disks.map((d) => ({ index: d.index, sizeBytes: d.sizeBytes, source: d.id })),
      { epoch },
    );
    const replica: Replica = {
      server,
      connection,
      applier,
      stream: new ReplicaStream(applier, {
        ...(this.opts.commitIntervalMs !== undefined ? { commitIntervalMs: this.opts.commitIntervalMs } : {}),
        ...(this.opts.commitBytes !== undefined ? { commitBytes: this.opts.commitBytes } : {}),
        onDurable: () => undefined, // submit() resolves each message's promise; the wire acknowledges
        onPit: (pointId, seq, pit) => {
          connection.pointDone({ pointId, seq, pitId: pit.id });
          this.opts.onPit?.(server, pit);
        },
        onFailure: (err) => connection.close(asLifeboatError(err)),
        onDiverged: (disk, offset) => {
          this.log.warn(
            { server, disk, offset },
            "a patched block differs from the agent's; asking for a rescan",
          );
          connection.command({ id: ++this.commandIds, command: "rescan", disks: [disk] });
        },
      }),
    };
    this.replicas.set(server, replica);
    this.unclosed.add(replica);
    if (this.closed) {
      await this.retire(replica);
      throw new LifeboatError("WIRE_SHUTTING_DOWN", "the replicator is shutting down", {
        hint: "Nothing to do: the agent reconnects and resumes when the replicator is back.",
        retryable: true,
      });
    }
    this.log.info({ server, peer: peer.id, appliedSeq: applier.appliedSeq }, "replication stream accepted");
    return {
      pipelined: true,
      apply: (msg, seq) =>
        replica.stream.submit(msg, seq).then(() => {
          const n = dataBytes(msg);
          if (n > 0) this.applied.set(server, (this.applied.get(server) ?? 0) + n);
        }),
      have: (hashes) => Promise.resolve(hashes.map((h) => applier.holds(h))),
      ...(head?.session ? { persisted: { token: head.session, lastApplied: head.appliedSeq } } : {}),
      onStream: (token) => {
        if (token !== applier.session) replica.stream.rebase();
        applier.useSession(token);
      },
      onClose: () => void this.retire(replica),
    };
  }

  /** Checkpoints (unless a message failed) and closes a replica whose connection ended; idempotent. */
  private retire(r: Replica): Promise<void> {
    r.closing ??= (async () => {
      try {
        if (!r.stream.hasFailed) await r.stream.commit();
      } catch (err) {
        this.log.warn({ server: r.server, err: String(err) }, "checkpoint at the end of a connection failed");
      }
      await r.stream.close();
      await r.applier.close();
      // In one step, so that the sum never drops (a counter that drops reads as a restart).
      this.storedByEnded += r.applier.stats.storedBytes;
      this.unclosed.delete(r);
      if (this.replicas.get(r.server) === r) this.replicas.delete(r.server);
    })();
    return r.closing;
  }
}

function dataBytes(msg: SequencedMessage): number {
  if (msg.type !== "BLOCKS") return 0;
  if (msg.kind === "patch") return msg.patches.reduce((n, p) => n + p.data.length, 0);
  return msg.blocks.reduce((n, b) => n + b.data.length, 0);
}

function asLifeboatError(err: Error): LifeboatError {
  return err instanceof LifeboatError
    ? err
    : new LifeboatError("STORE_IO", err.message, { cause: err, retryable: true });
}
