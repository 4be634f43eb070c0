import { useCallback, useEffect, useRef, useState } from "preact/hooks";

/**
 * Loads `load()` now and every `everyMs` while the page is shown (not while
 * the tab is hidden); `reload()` loads at once. Keeps the last data while a
 * later load fails, and says so.
 */
export function usePoll<T>(
  load: (signal: AbortSignal) => Promise<T>,
  everyMs: number,
  deps: unknown[],
): { data: T | undefined; error: Error | undefined; reload: () => void; loadedAt: number | undefined } {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<Error | undefined>(undefined);
  const [loadedAt, setLoadedAt] = useState<number | undefined>(undefined);
  const [tick, setTick] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;
  useEffect(() => {
    setData(undefined);
    setError(undefined);
  }, deps);
  useEffect(() => {
    const ctl = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const run = async () => {
      if (document.visibilityState !== "hidden") {
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
      if (everyMs > 0) timer = setTimeout(() => void run(), everyMs);
    };
    void run();
    return () => {
      ctl.abort();
      if (timer !== undefined) clearTimeout(timer);
    };
  }, [...deps, tick, everyMs]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { data, error, reload, loadedAt };
}
