import { useEffect, useRef, useState } from "preact/hooks";
import type { EventItem } from "./types.js";

/**
 * Live updates: one server-sent-events stream per signed-in console
 * (GET /api/v1/events with `Accept: text/event-stream`, same origin, the
 * session cookie), shared by every view. Views subscribe with a matcher and
 * reload when a matching event arrives; while the stream is down they poll
 * at their own pace instead (poll.ts).
 *
 * The browser's EventSource reconnects by itself after a dropped stream,
 * sending the last event's id as Last-Event-ID, so nothing is missed. When
 * the server refuses the stream (a 401, a proxy's 502) it gives up for good:
 * the stream is opened again after RETRY_MS, from `?after=` the last seq seen.
 *
 * A hidden tab closes its stream and opens it again when shown (from the
 * last seq seen): a browser allows only a few connections to one host, and
 * tabs nobody looks at must not hold them.
 */

export type LiveState = "connecting" | "live" | "down";

/** How long the stream waits before opening again after the browser gave up on it. */
const RETRY_MS = 5000;

type Listener = (e: EventItem) => void;

const listeners = new Set<Listener>();
const stateListeners = new Set<(s: LiveState) => void>();
// "connecting" until the stream fails: views start at their slow pace, not with a load they repeat at once.
let state: LiveState = "connecting";
let source: EventSource | undefined;
let retry: ReturnType<typeof setTimeout> | undefined;
let lastSeq: number | undefined;
let users = 0;

function setState(s: LiveState): void {
  if (s === state) return;
  state = s;
  for (const l of [...stateListeners]) l(s);
}

function open(): void {
  retry = undefined;
  const url = lastSeq === undefined ? "/api/v1/events" : `/api/v1/events?after=${lastSeq}`;
  const es = new EventSource(url);
  source = es;
  setState("connecting");
  es.onopen = () => setState("live");
  es.onmessage = (m: MessageEvent<string>) => {
    let e: EventItem;
    try {
      e = JSON.parse(m.data) as EventItem;
    } catch {
      return;
    }
    lastSeq = e.seq;
    for (const l of [...listeners]) l(e);
  };
  es.onerror = () => {
    if (source !== es) return;
    setState("down");
    if (es.readyState === EventSource.CLOSED) {
      es.close();
      source = undefined;
      retry = setTimeout(open, RETRY_MS);
    }
  };
}

function close(): void {
  if (retry !== undefined) clearTimeout(retry);
  retry = undefined;
  source?.close();
  source = undefined;
  lastSeq = undefined;
  setState("connecting");
}

function pause(): void {
  if (retry !== undefined) clearTimeout(retry);
  retry = undefined;
  source?.close();
  source = undefined;
  setState("connecting");
}

function onVisibility(): void {
  if (users === 0) return;
  if (document.visibilityState === "hidden") pause();
  else if (source === undefined && retry === undefined) open();
}

/** Keeps the stream open while the calling component (the signed-in shell) is mounted and the tab shown. */
export function useLiveStream(): void {
  useEffect(() => {
    if (users++ === 0) {
      document.addEventListener("visibilitychange", onVisibility);
      if (document.visibilityState !== "hidden") open();
    }
    return () => {
      if (--users === 0) {
        document.removeEventListener("visibilitychange", onVisibility);
        close();
      }
    };
  }, []);
}

/** The stream's state, re-rendering on changes. */
export function useLiveState(): LiveState {
  const [s, set] = useState(state);
  useEffect(() => {
    set(state);
    stateListeners.add(set);
    return () => void stateListeners.delete(set);
  }, []);
  return s;
}

/** Calls `on` (the latest one given) for every event that arrives. */
export function useLiveEvents(on: Listener | undefined): void {
  const ref = useRef(on);
  ref.current = on;
  const active = on !== undefined;
  useEffect(() => {
    if (!active) return;
    const l: Listener = (e) => ref.current?.(e);
    listeners.add(l);
    return () => void listeners.delete(l);
  }, [active]);
}

/** Matchers for the views' usual subjects. */
export const about = {
  /** Any event about servers or their PITs and jobs: the servers list. */
  servers: (e: EventItem) => e.serverId != null || e.type.startsWith("replicator."),
  /** One server's page. */
  /** One server's page (`key` is its id or its name, as in the page's address). */
  server: (key: string) => (e: EventItem) =>
    e.serverId === key ||
    e.server === key ||
    (e.type === "job.finished" && includes(e.payload?.serverIds, key)),
  jobs: (e: EventItem) => e.type === "job.finished",
  job: (id: string) => (e: EventItem) => e.type === "job.finished" && e.payload?.jobId === id,
  replicators: (e: EventItem) => e.type.startsWith("replicator.") || e.type === "server.decommissioned",
  failbacks: (e: EventItem) => e.type.startsWith("failback.") || e.type === "server.failed_over",
};

function includes(list: unknown, id: string): boolean {
  return Array.isArray(list) && list.includes(id);
}
