import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, api } from "../api.js";
import { Badge, Empty, ErrorNote, Loading } from "../components/ui.js";
import { ago, time } from "../format.js";
import { useLiveEvents, useLiveState } from "../live.js";
import { LIVE_REFRESH_MS, usePoll } from "../poll.js";
import type { AuditRecord, EventItem } from "../types.js";
import { useServerNames } from "./jobs.js";

export function EventsPage() {
  const [tab, setTab] = useState<"events" | "audit">("events");
  return (
    <div class="page">
      <div class="page-head">
        <div>
          <h1>Events &amp; audit</h1>
          <p class="muted">What happened to servers and jobs, and who did what.</p>
        </div>
      </div>
      <div class="tabs" role="tablist">
        <button
          type="button"
          role="tab"
          class={tab === "events" ? "active" : ""}
          onClick={() => setTab("events")}
        >
          Events
        </button>
        <button
          type="button"
          role="tab"
          class={tab === "audit" ? "active" : ""}
          onClick={() => setTab("audit")}
        >
          Audit log
        </button>
      </div>
      <div class="card">{tab === "events" ? <Events /> : <Audit />}</div>
    </div>
  );
}

function eventTone(type: string): "ok" | "warn" | "bad" | "info" | "muted" {
  if (/disconnected|stalled|breach|damage|failed/i.test(type)) return "bad";
  if (/succeeded|created|finished/i.test(type)) return "ok";
  return "info";
}

const KEEP = 300;

/**
 * The newest events, then the ones that come: from the event stream
 * (live.ts) as they arrive, and by asking for what came after the last one
 * seen (`?after=`) every 5 s while the stream is down (every 30 s while up).
 */
function useEvents(): { events: EventItem[] | undefined; error: Error | undefined } {
  const [events, setEvents] = useState<EventItem[] | undefined>(undefined);
  const [error, setError] = useState<Error | undefined>(undefined);
  const stream = useLiveState();
  const kept = useRef<{ after: number; events: EventItem[] } | undefined>(undefined);
  const add = (more: EventItem[]) => {
    const k = kept.current;
    if (k === undefined) return;
    const fresh = more.filter((e) => e.seq > k.after);
    if (fresh.length === 0) return;
    k.after = Math.max(k.after, ...fresh.map((e) => e.seq));
    k.events = [...k.events, ...fresh].slice(-KEEP);
    setEvents(k.events);
  };
  useLiveEvents((e) => add([e]));
  useEffect(() => {
    const ctl = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const run = async () => {
      try {
        if (kept.current === undefined) {
          const r = await api<{ events: EventItem[]; latestSeq: number }>(`/api/v1/events?limit=${KEEP}`, {
            signal: ctl.signal,
          });
          kept.current = { after: r.latestSeq, events: r.events };
          setEvents(r.events);
        } else {
          const r = await api<{ events: EventItem[] }>(
            `/api/v1/events?after=${kept.current.after}&limit=${KEEP}`,
            { signal: ctl.signal },
          );
          add(r.events);
        }
        setError(undefined);
      } catch (err) {
        if (ctl.signal.aborted) return;
        setError(err as Error);
        if (err instanceof ApiError && err.status === 404) return;
      }
      timer = setTimeout(() => void run(), stream === "down" ? 5000 : LIVE_REFRESH_MS);
    };
    void run();
    return () => {
      ctl.abort();
      if (timer !== undefined) clearTimeout(timer);
    };
  }, [stream === "down"]);
  return { events, error };
}

function Events() {
  const { events: loaded, error } = useEvents();
  const names = useServerNames();
  if (loaded === undefined) {
    if (error instanceof ApiError && error.status === 404)
      return (
        <Empty title="Events are not available">This control plane does not serve the events API.</Empty>
      );
    return error ? <ErrorNote error={error} /> : <Loading />;
  }
  const events = [...loaded].sort((a, b) => b.seq - a.seq);
  if (events.length === 0)
    return <Empty title="No events yet">State changes and finished jobs appear here.</Empty>;
  return (
    <table class="table" id="events-table">
      <thead>
        <tr>
          <th>When</th>
          <th>Event</th>
          <th>Server</th>
          <th>Details</th>
        </tr>
      </thead>
      <tbody>
        {events.map((e) => (
          <tr key={e.seq} data-seq={e.seq}>
            <td title={time(e.at)}>{ago(e.at)}</td>
            <td>
              <Badge tone={eventTone(e.type)}>{e.type}</Badge>
            </td>
            <td>{e.serverId ? (names.get(e.serverId) ?? e.server ?? e.serverId) : "—"}</td>
            <td class="muted small">{e.payload ? summarize(e.payload) : ""}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function summarize(o: Record<string, unknown>): string {
  return Object.entries(o)
    .map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`)
    .join(" · ");
}

function Audit() {
  const r = usePoll(
    (signal) => api<{ records: AuditRecord[] }>("/api/v1/audit?limit=200", { signal }),
    10_000,
    [],
  );
  if (r.data === undefined) return r.error ? <ErrorNote error={r.error} /> : <Loading />;
  if (r.data.records.length === 0) return <Empty title="The audit log is empty" />;
  return (
    <table class="table">
      <thead>
        <tr>
          <th>When</th>
          <th>Who</th>
          <th>Action</th>
          <th>On</th>
          <th>Result</th>
          <th>From</th>
        </tr>
      </thead>
      <tbody>
        {r.data.records.map((a) => (
          <tr key={a.seq}>
            <td title={time(a.at)}>{ago(a.at)}</td>
            <td>
              <code class="small">{a.actor}</code>
            </td>
            <td>{a.action}</td>
            <td>
              <code class="small">{a.target}</code>
            </td>
            <td>
              <Badge tone={a.result === "ok" ? "ok" : a.result === "denied" ? "bad" : "warn"}>
                {a.result}
              </Badge>
            </td>
            <td class="muted small">{a.source}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
