import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { useLiveEvents, useLiveState } from "./live.js";
import type { EventItem } from "./types.js";

/** While the event stream is up, a view that follows events still reloads this often (what events do not carry). */
export const LIVE_REFRESH_MS = 30_000;
/** Events come in bursts: a view reloads at most this often for them. */
const EVENT_RELOAD_GAP_MS = 1000;

export interface LiveOptions {
  /** The events that change what the view shows: each reloads it (at most once a second). */
  match: (e: EventItem) => boolean;
  /** The reload interval while the stream is up (default LIVE_REFRESH_MS). */
  everyMs?: number;
}

/**
 * Loads `load()` now and every `everyMs` while the page is shown (not while
 * the tab is hidden); `reload()` loads at once. Keeps the last data while a
 * later load fails, and says so.
 *
 * With `live`, the view follows the event stream (live.ts): a matching event
 * reloads it, and while the stream is up `everyMs` gives way to the slow
 * `live.everyMs`; when the stream is down, the view polls every `everyMs`
 * again, and it reloads once the stream is back.
 */
export function usePoll<T>(
  load: (signal: AbortSignal) => Promise<T>,
  everyMs: number,
  deps: unknown[],
  live?: LiveOptions,
): { data: T | undefined; error: Error | undefined; reload: () => void; loadedAt: number | undefined } {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<Error | undefined>(undefined);
  const [loadedAt, setLoadedAt] = useState<number | undefined>(undefined);
  const [tick, setTick] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;
  const stream = useLiveState();
  const interval =
    live === undefined || everyMs === 0 || stream === "down" ? everyMs : (live.everyMs ?? LIVE_REFRESH_MS);
  const lastRun = useRef(0);
  const pending = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  useEffect(() => {
    setData(undefined);
    setError(undefined);
  }, deps);
  useEffect(() => {
    const ctl = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const run = async () => {
      if (document.visibilityState !== "hidden") {
        lastRun.current = Date.now();
        try {
          const d = await loadRef.current(ctl.signal);
          if (ctl.signal.aborted) return;
          setData(d);
          setError(undefined);
          setLoadedAt(Date.now());
        } catch (err) {
          if (ctl.signal.aborted) return;
          setError(err as Error);
        }
      }
      if (interval > 0) timer = setTimeout(() => void run(), interval);
    };
    void run();
    return () => {
      ctl.abort();
      if (timer !== undefined) clearTimeout(timer);
    };
  }, [...deps, tick, interval]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  // Back in a shown tab: fresh data at once (a hidden tab loads nothing and holds no stream).
  useEffect(() => {
    if (interval === 0) return;
    const shown = () => {
      if (document.visibilityState === "visible") reload();
    };
    document.addEventListener("visibilitychange", shown);
    return () => document.removeEventListener("visibilitychange", shown);
  }, [interval === 0]);
  const matchRef = useRef(live?.match);
  matchRef.current = live?.match;
  useLiveEvents(
    live === undefined
      ? undefined
      : (e) => {
          if (matchRef.current?.(e) !== true || pending.current !== undefined) return;
          const wait = Math.max(100, lastRun.current + EVENT_RELOAD_GAP_MS - Date.now());
          pending.current = setTimeout(() => {
            pending.current = undefined;
            reload();
          }, wait);
        },
  );
  useEffect(
    () => () => {
      if (pending.current !== undefined) clearTimeout(pending.current);
    },
    [],
  );
  return { data, error, reload, loadedAt };
}
