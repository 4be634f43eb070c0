/**
 * A standalone replicator's link to the control plane (standalone.ts): the
 * servers assigned to it, and the heartbeat loop that keeps it online,
 * reports its ingest counters and the PITs it made, and follows changes of
 * its assignments.
 */
import { type Clock, isLifeboatError, type Logger } from "../base/index.js";
import type { Pit } from "../store/index.js";
import type { Replicator } from "./service.js";

/** PITs one heartbeat reports (the control plane reads each from the repository). */
const PITS_PER_HEARTBEAT = 20;
/** PITs kept for a control plane that does not answer; older ones wait for `store reindex`. */
const MAX_PENDING_PITS = 1000;

/** A request to the control plane over the replicator's mutual-TLS identity. */
export type ControlCall = <T>(path: string, o?: { method?: "GET" | "POST"; body?: unknown }) => Promise<T>;

/** What the heartbeat loop needs of the replicator: its counters, and its streams to end those of servers assigned elsewhere. */
export type HeartbeatSubject = Pick<Replicator, "ingestCounters" | "servers" | "release">;

export class ControlLink {
  /** Server id → name, of the servers assigned to this replicator. */
  readonly assigned = new Map<string, string>();
  /** PITs made here and not yet in the control plane's catalog: PIT id → server id. */
  private readonly pendingPits = new Map<string, string>();
  private wake: (() => void) | undefined;
  private newPit = false;
  /** A control plane older than these reports refuses them (REQUEST_INVALID): heartbeats go on without. */
  private plain = false;
  private readonly startedAt: string;
  private stopped = false;
  private stop!: () => void;
  private readonly stopping = new Promise<void>((r) => (this.stop = r));
  private beating: Promise<void> = Promise.resolve();

  constructor(
    private readonly call: ControlCall,
    /** host:port agents reach the replicator at. */
    private readonly address: string,
    clock: Clock,
    private readonly log: Logger,
  ) {
    this.startedAt = new Date(clock.now()).toISOString();
  }

  /** Reads the assignments again. */
  async refresh(): Promise<void> {
    const r = await this.call<{ servers: { id: string; name: string }[] }>("/api/v1/replicator/assignments");
    this.assigned.clear();
    for (const s of r.servers) this.assigned.set(s.id, s.name);
  }

  /**
   * A PIT was made here: it goes to the control plane's catalog with the
   * next heartbeat, which it brings forward; a heartbeat that fails keeps it
   * for the one after (at most MAX_PENDING_PITS).
   */
  pitMade(server: string, pit: Pit): void {
    const serverId = [...this.assigned].find(([, name]) => name === server)?.[0];
    if (serverId === undefined || this.plain) return;
    if (this.pendingPits.size >= MAX_PENDING_PITS) {
      const oldest = this.pendingPits.keys().next().value!;
      this.pendingPits.delete(oldest);
      this.log.warn(
        { pit: oldest },
        "the control plane has not taken this PIT: `lifeboat store reindex` catalogs it",
      );
    }
    this.pendingPits.set(pit.id, serverId);
    this.newPit = true;
    this.wake?.();
  }

  /** Starts the heartbeat loop. */
  start(subject: HeartbeatSubject): void {
    this.beating = this.beat(subject);
  }

  /** Stops the heartbeat loop; resolves once it has ended. */
  async close(): Promise<void> {
    this.stopped = true;
    this.stop();
    await this.beating;
  }

  private async beat(subject: HeartbeatSubject): Promise<void> {
    let every = 15;
    while (!this.stopped) {
      this.newPit = false;
      let progressed = false;
      try {
        const r = await this.heartbeat(subject);
        every = r.heartbeatSeconds;
        for (const id of r.pitsRecorded ?? []) progressed = this.pendingPits.delete(id) || progressed;
        if (r.servers.some((id) => !this.assigned.has(id)) || r.servers.length !== this.assigned.size) {
          await this.refresh();
          // Streams of servers assigned elsewhere (a drain, the pool's rebalance) end here.
          const names = new Set(this.assigned.values());
          for (const server of subject.servers()) if (!names.has(server)) await subject.release(server);
        }
      } catch (err) {
        if (!this.plain && isLifeboatError(err) && err.code === "REQUEST_INVALID") {
          this.plain = true;
          this.pendingPits.clear();
          this.log.warn(
            { err: String(err) },
            "the control plane takes no ingest or PIT reports (older version): its catalog learns this replicator's PITs at `lifeboat store reindex`",
          );
          continue;
        }
        if (!this.stopped) this.log.warn({ err: String(err) }, "replicator heartbeat failed");
      }
      // A PIT made meanwhile, or more than one heartbeat carries: the next one goes at once.
      if (!this.stopped && (this.newPit || (progressed && this.pendingPits.size > 0))) continue;
      await this.pause(every * 1000);
    }
  }

  private heartbeat(subject: HeartbeatSubject) {
    const pits = [...this.pendingPits]
      .slice(0, PITS_PER_HEARTBEAT)
      .map(([pitId, serverId]) => ({ pitId, serverId }));
    return this.call<{ heartbeatSeconds: number; servers: string[]; pitsRecorded?: string[] }>(
      "/api/v1/replicator/heartbeat",
      {
        method: "POST",
        body: {
          state: "ACTIVE",
          address: this.address,
          ...(this.plain ? {} : { ingest: { startedAt: this.startedAt, ...subject.ingestCounters() } }),
          ...(pits.length > 0 && !this.plain ? { pits } : {}),
        },
      },
    );
  }

  /** Waits `ms`, or less when a PIT is made or the link stops. */
  private async pause(ms: number): Promise<void> {
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms);
      t.unref();
      this.wake = () => {
        clearTimeout(t);
        resolve();
      };
      this.stopping.then(() => {
        clearTimeout(t);
        resolve();
      }, resolve);
    });
    this.wake = undefined;
  }
}
