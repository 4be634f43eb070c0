import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { requireOperator } from "../auth.js";
import type { AppContext } from "../context.js";
import { errorSchema, httpError } from "../http-error.js";
import { type EventFilter, latestEventSeq, listEvents } from "../events.js";
import { authErrors } from "./schemas.js";

export interface EventRouteOptions {
  /** How often a stream looks for new events (default 1000 ms). */
  pollMs?: number;
  /** A comment line after this much silence keeps proxies from closing the stream (default 15 s). */
  keepAliveMs?: number;
  /** How often a stream checks that its API key or console session is still good (default 30 s). */
  authCheckMs?: number;
}

/** Numbers come as strings: the app does not coerce types (a query string is text). */
interface EventsQuery {
  after?: string;
  before?: string;
  limit?: string;
  server?: string;
  type?: string;
}

const eventSchema = {
  type: "object",
  required: ["seq", "at", "type", "serverId", "server", "payload"],
  properties: {
    seq: { type: "integer" },
    at: { type: "string" },
    type: { type: "string" },
    serverId: { type: ["string", "null"] },
    server: { type: ["string", "null"] },
    payload: { type: "object", additionalProperties: true },
  },
} as const;

const TYPES = /^(\*|[a-z][a-z0-9_.]*)(,(\*|[a-z][a-z0-9_.]*))*$/;

/**
 * GET /api/v1/events (viewer). With `Accept: text/event-stream`, a
 * server-sent-events stream: each event is `id: <seq>` and `data: <event
 * JSON>`; it starts after `Last-Event-ID` (what a reconnecting EventSource
 * sends) or `?after=SEQ`, else with the events that come from now on; a
 * comment line keeps it alive; it ends when the server shuts down (the
 * client reconnects with its last id and misses nothing), or when its API key
 * is revoked or its console session ends (checked every authCheckMs). Each
 * stream polls the events table (seq is its primary key): any instance of
 * the control plane serves every event. Otherwise, a JSON page.
 */
export function eventRoutes(app: FastifyInstance, ctx: AppContext, opts: EventRouteOptions = {}): void {
  const viewer = requireOperator(ctx.database, ctx.clock, "viewer");
  const streams = new Set<() => void>();
  app.addHook("preClose", (done) => {
    for (const end of streams) end();
    done();
  });

  app.get<{ Querystring: EventsQuery }>(
    "/api/v1/events",
    {
      onRequest: viewer,
      schema: {
        summary: "events, as a JSON page or (Accept: text/event-stream) a server-sent-events stream",
        description:
          "With `Accept: text/event-stream`: a stream of `id: <seq>` / `data: <event JSON>` messages, " +
          "starting after `Last-Event-ID` (what a reconnecting EventSource sends), else after `after`, " +
          "else with the events to come; `server` and `type` filter it. New events within about a second, " +
          "from the database (any instance serves every event); a `: keep-alive` comment after 15 s of " +
          "silence; it ends when the key is revoked or the session ends (checked every 30 s). " +
          "The web console follows it (docs/console.md, Live updates).",
        headers: {
          type: "object",
          properties: {
            accept: { type: "string" },
            "last-event-id": { type: "string", maxLength: 64 },
          },
        },
        querystring: {
          type: "object",
          additionalProperties: false,
          properties: {
            after: { type: "string", pattern: "^[0-9]{1,15}$" },
            before: { type: "string", pattern: "^[0-9]{1,15}$" },
            limit: { type: "string", pattern: "^([1-9][0-9]{0,2}|1000)$" },
            server: { type: "string", minLength: 1, maxLength: 253 },
            type: { type: "string", minLength: 1, maxLength: 1024, pattern: TYPES.source },
          },
        },
        response: {
          200: {
            type: "object",
            required: ["events", "latestSeq"],
            properties: {
              events: { type: "array", items: eventSchema },
              /** The newest seq in the table when the page was read. */
              latestSeq: { type: "integer" },
            },
          },
          400: errorSchema,
          ...authErrors,
        },
      },
    },
    async (request, reply) => {
      const q = request.query;
      const filter: EventFilter = {
        ...(q.server !== undefined ? { serverId: await serverId(ctx, q.server) } : {}),
        ...(q.type !== undefined ? { types: q.type.split(",").filter((t) => t !== "*") } : {}),
      };
      if (/text\/event-stream/.test(request.headers.accept ?? "")) {
        const from = startSeq(request) ?? num(q.after) ?? (await latestEventSeq(ctx.database));
        const stillAllowed = async () => {
          try {
            await viewer(request, reply);
            return true;
          } catch {
            return false;
          }
        };
        return stream(ctx, request, reply, filter, from, streams, opts, stillAllowed);
      }
      const latestSeq = await latestEventSeq(ctx.database);
      const events = await listEvents(ctx.database, {
        ...filter,
        ...(q.after !== undefined ? { after: Number(q.after) } : {}),
        ...(q.before !== undefined ? { before: Number(q.before) } : {}),
        limit: num(q.limit) ?? 100,
      });
      return { events, latestSeq };
    },
  );
}

const num = (s: string | undefined) => (s === undefined ? undefined : Number(s));

/** A server's id from an id or a name (an unknown one filters to nothing). */
async function serverId(ctx: AppContext, key: string): Promise<string> {
  const row = await ctx.database.db
    .selectFrom("servers")
    .select("id")
    .where((eb) => eb.or([eb("id", "=", key), eb("name", "=", key)]))
    .executeTakeFirst();
  return row?.id ?? key;
}

function startSeq(request: FastifyRequest): number | undefined {
  const header = request.headers["last-event-id"];
  if (header === undefined) return undefined;
  const value = Array.isArray(header) ? header[0] : header;
  if (value === undefined || !/^\d{1,15}$/.test(value.trim()))
    throw httpError(
      400,
      "REQUEST_INVALID",
      "header Last-Event-ID: must be an event seq",
      "send the id of the last event received",
    );
  return Number(value.trim());
}

async function stream(
  ctx: AppContext,
  request: FastifyRequest,
  reply: FastifyReply,
  filter: EventFilter,
  from: number,
  streams: Set<() => void>,
  opts: EventRouteOptions,
  stillAllowed: () => Promise<boolean>,
): Promise<void> {
  const pollMs = opts.pollMs ?? 1000;
  const keepAliveMs = opts.keepAliveMs ?? 15_000;
  const authCheckMs = opts.authCheckMs ?? 30_000;
  let lastAuth = ctx.clock.now();
  const raw = reply.raw;
  reply.hijack();
  raw.writeHead(200, {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache, no-transform",
    "x-accel-buffering": "no",
  });
  let open = true;
  let wake: (() => void) | undefined;
  const end = () => {
    open = false;
    wake?.();
  };
  streams.add(end);
  // The response's close, not the request's: the request's fires once its (empty) body is read.
  raw.once("close", end);
  const write = async (text: string) => {
    if (!raw.write(text))
      await new Promise<void>((resolve) => raw.once("drain", resolve).once("close", resolve));
  };
  let cursor = from;
  let lastWrite = Date.now();
  try {
    await write(`retry: ${Math.max(1000, pollMs)}\n: from ${cursor}\n\n`);
    while (open && !raw.destroyed) {
      // A revoked key or an ended session ends its streams too (the client's reconnection gets the 401).
      if (ctx.clock.now() - lastAuth >= authCheckMs) {
        if (!(await stillAllowed())) {
          request.log.info(
            { lastSeq: cursor },
            "event stream ended: its API key or session is no longer valid",
          );
          break;
        }
        lastAuth = ctx.clock.now();
      }
      const page = await listEvents(ctx.database, { ...filter, after: cursor, limit: 500 });
      for (const e of page) {
        if (!open) break;
        await write(`id: ${e.seq}\ndata: ${JSON.stringify(e)}\n\n`);
        cursor = e.seq;
        lastWrite = Date.now();
      }
      if (page.length === 500 || !open) continue;
      if (Date.now() - lastWrite >= keepAliveMs) {
        await write(": keep-alive\n\n");
        lastWrite = Date.now();
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(pollMs, keepAliveMs));
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = undefined;
    }
  } catch (err) {
    if (open) request.log.warn({ err }, "the event stream failed");
  } finally {
    streams.delete(end);
    raw.off("close", end);
    raw.end();
    request.log.debug({ lastSeq: cursor }, "event stream ended");
  }
}
