import { Agent, type Dispatcher, request } from "undici";
import { type Clock, type Logger } from "../base/index.js";
import { type Database, type Webhook, releaseLease, tryAcquireLease } from "./db/index.js";
import { type EventView, latestEventSeq, listEvents } from "./events.js";
import { SIGNATURE_HEADER, safeUrl, signBody } from "./webhooks.js";

export interface DelivererOptions {
  database: Database;
  clock: Clock;
  logger: Logger;
  /** This instance's name, as the lease holder. */
  instance: string;
  /** How often due webhooks are looked at (default 1000 ms). */
  pollMs?: number;
  /** The first retry's delay (default 1 s); each next one doubles, up to maxBackoffMs. */
  baseBackoffMs?: number;
  /** The longest delay between attempts (default 5 minutes). */
  maxBackoffMs?: number;
  /** One attempt's limit, connect to response (default 10 s). */
  timeoutMs?: number;
  /** In [0, 1): the jitter's source (tests pass a fixed one). */
  random?: () => number;
}

const LEASE = "webhooks";
const LEASE_TTL_MS = 30_000;
/** Events one webhook delivers in a pass before the others get their turn. */
const BATCH = 50;

/**
 * Delivers events to webhooks, on one control-plane instance at a time (the
 * lease "webhooks", renewed every pass; another instance takes over within
 * 30 s of this one stopping).
 *
 * Each webhook follows the events table from its own cursor (webhooks.
 * cursor_seq), one event at a time, in seq order: an event is POSTed, and
 * only a 2xx answer moves the cursor past it, in the database. So a restart
 * (or a takeover) repeats at most the one event that was in flight, and
 * never skips one; receivers drop a repeat by its `seq` (also in the
 * `Lifeboat-Delivery` header). Events of types a webhook did not ask for move
 * its cursor without a POST.
 *
 * A failure (no answer, a non-2xx status, a timeout) leaves the cursor, and
 * the next attempt waits baseBackoffMs * 2^(failures-1), at most
 * maxBackoffMs, times a random factor in [0.5, 1) (jitter: receivers that
 * come back are not hit by every sender at once). It retries until the
 * receiver takes the event or the webhook is removed; the failures count is
 * in `webhooks list` and the metrics.
 */
export class WebhookDeliverer {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> = Promise.resolve();
  private closed = false;
  private held = false;
  private readonly dispatchers = new Map<string, Agent>();
  private readonly shared: Agent;

  constructor(private readonly opts: DelivererOptions) {
    this.shared = new Agent({ connect: { timeout: this.timeoutMs } });
  }

  private get timeoutMs(): number {
    return this.opts.timeoutMs ?? 10_000;
  }

  start(): void {
    const pollMs = this.opts.pollMs ?? 1000;
    const loop = () => {
      if (this.closed) return;
      this.running = this.tick()
        .catch((err: unknown) => this.opts.logger.error({ err }, "webhook delivery failed"))
        .finally(() => {
          if (!this.closed) this.timer = setTimeout(loop, pollMs);
        });
    };
    this.timer = setTimeout(loop, 0);
  }

  /**
   * One pass: takes (or renews) the lease, then lets every due webhook
   * deliver up to a batch. Returns how many events were delivered.
   */
  async tick(): Promise<number> {
    const { database, clock, instance } = this.opts;
    // No webhook, no write: the lease is a database write, and most sites have none.
    if ((await database.db.selectFrom("webhooks").select("id").limit(1).executeTakeFirst()) === undefined)
      return 0;
    this.held = await tryAcquireLease(database.db, LEASE, instance, LEASE_TTL_MS, clock);
    if (!this.held) return 0;
    const due = await database.db
      .selectFrom("webhooks")
      .selectAll()
      .where("next_attempt_at", "<=", clock.now())
      .execute();
    const counts = await Promise.all(due.map((w) => this.deliverSome(w)));
    return counts.reduce((a, b) => a + b, 0);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.running;
    if (this.held) await releaseLease(this.opts.database.db, LEASE, this.opts.instance).catch(() => false);
    await Promise.all([this.shared, ...this.dispatchers.values()].map((d) => d.close()));
  }

  private async deliverSome(hook: Webhook): Promise<number> {
    const { database } = this.opts;
    const types = JSON.parse(hook.event_types_json) as string[];
    let cursor = Number(hook.cursor_seq);
    let delivered = 0;
    while (delivered < BATCH && !this.closed) {
      // Every seq up to `latest` has committed (seq grows in commit order), so with no match
      // after the cursor the cursor may move to `latest`.
      const latest = await latestEventSeq(database);
      const [event] = await listEvents(database, {
        after: cursor,
        limit: 1,
        ...(types.includes("*") ? {} : { types }),
      });
      if (event === undefined) {
        if (latest > cursor) await this.advance(hook, cursor, latest, false);
        return delivered;
      }
      const error = await this.post(hook, event);
      if (error !== undefined) {
        await this.failed(hook, cursor, delivered > 0 ? 0 : Number(hook.failures), error);
        return delivered;
      }
      if (!(await this.advance(hook, cursor, event.seq, true))) return delivered;
      cursor = event.seq;
      delivered++;
    }
    return delivered;
  }

  /** POSTs one event; the error's text when it was not taken. */
  private async post(hook: Webhook, event: EventView): Promise<string | undefined> {
    const body = JSON.stringify(event);
    const t = Math.floor(this.opts.clock.now() / 1000);
    try {
      const res = await request(hook.url, {
        method: "POST",
        dispatcher: this.dispatcher(hook),
        headers: {
          "content-type": "application/json",
          "user-agent": "lifeboat-webhook/1",
          "lifeboat-event": event.type,
          "lifeboat-delivery": `${hook.id}:${event.seq}`,
          [SIGNATURE_HEADER.toLowerCase()]: signBody(hook.secret, t, body),
        },
        body,
        headersTimeout: this.timeoutMs,
        bodyTimeout: this.timeoutMs,
      });
      await res.body.dump();
      if (res.statusCode >= 200 && res.statusCode < 300) return undefined;
      return `HTTP ${res.statusCode}`;
    } catch (err) {
      const e = err as { code?: string; message?: string };
      return `${e.code ?? "ERROR"}: ${e.message ?? String(err)}`.slice(0, 500);
    }
  }

  private dispatcher(hook: Webhook): Dispatcher {
    if (hook.ca_pem === null) return this.shared;
    let d = this.dispatchers.get(hook.id);
    if (d === undefined) {
      d = new Agent({ connect: { timeout: this.timeoutMs, ca: hook.ca_pem } });
      this.dispatchers.set(hook.id, d);
    }
    return d;
  }

  /** Moves the cursor from `from` to `to` (false: someone else moved it, or the webhook is gone). */
  private async advance(hook: Webhook, from: number, to: number, delivered: boolean): Promise<boolean> {
    const now = this.opts.clock.now();
    const r = await this.opts.database.db
      .updateTable("webhooks")
      .set({
        cursor_seq: to,
        ...(delivered ? { failures: 0, next_attempt_at: now, last_delivered_at: now, last_error: null } : {}),
      })
      .where("id", "=", hook.id)
      .where("cursor_seq", "=", from)
      .executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  private async failed(hook: Webhook, cursor: number, before: number, error: string): Promise<void> {
    const failures = before + 1;
    const delay = backoffMs(failures, {
      baseMs: this.opts.baseBackoffMs ?? 1000,
      maxMs: this.opts.maxBackoffMs ?? 300_000,
      random: this.opts.random ?? Math.random,
    });
    this.opts.logger.warn(
      { webhook: hook.id, url: safeUrl(hook.url), failures, retryInMs: delay, error },
      "webhook delivery failed",
    );
    await this.opts.database.db
      .updateTable("webhooks")
      .set({ failures, next_attempt_at: this.opts.clock.now() + delay, last_error: error })
      .where("id", "=", hook.id)
      .where("cursor_seq", "=", cursor)
      .execute();
  }
}

/** The wait before attempt `failures` + 1: exponential, capped, with jitter in [0.5, 1). */
export function backoffMs(
  failures: number,
  o: { baseMs: number; maxMs: number; random: () => number },
): number {
  const full = Math.min(o.maxMs, o.baseMs * 2 ** Math.min(30, Math.max(0, failures - 1)));
  return Math.round(full * (0.5 + o.random() * 0.5));
}
