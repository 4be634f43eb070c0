import { useMemo, useState } from "preact/hooks";
import { api } from "../api.js";
import { Badge, Empty, ErrorNote, Loading, StateBadge } from "../components/ui.js";
import { bytes, duration } from "../format.js";
import { about } from "../live.js";
import { usePoll } from "../poll.js";
import { href } from "../router.js";
import type { ServerRow } from "../types.js";

type SortKey = "health" | "name" | "state" | "lag" | "backlog" | "pit" | "rpo" | "ready" | "replicator";
const PAGE_SIZE = 100;
const STATES = [
  "all",
  "attention",
  "CONTINUOUS",
  "INITIAL_SYNC",
  "RESCAN",
  "BACKLOG",
  "STALLED",
  "DISCONNECTED",
];

/** Worst first: the lower, the sooner an operator should look. */
function health(s: ServerRow): number {
  let score = 0;
  if (s.state === "DISCONNECTED" || s.state === "STALLED") score += 8;
  else if (!s.online) score += 6;
  if (!s.rpo.met) score += 4;
  if (s.readiness !== null && !s.readiness.ready) score += 2;
  if (s.state !== "CONTINUOUS") score += 1;
  return -score;
}

/** Not replicating, offline, RPO missed or lagging more than five minutes (readiness is counted apart). */
function needsAttention(s: ServerRow): boolean {
  return (
    s.state === "STALLED" ||
    s.state === "DISCONNECTED" ||
    !s.online ||
    !s.rpo.met ||
    (s.lagSeconds ?? 0) > 300
  );
}

const COMPARE: Record<SortKey, (a: ServerRow, b: ServerRow) => number> = {
  health: (a, b) =>
    health(a) - health(b) || (b.lagSeconds ?? 0) - (a.lagSeconds ?? 0) || a.name.localeCompare(b.name),
  name: (a, b) => a.name.localeCompare(b.name),
  state: (a, b) => a.state.localeCompare(b.state) || a.name.localeCompare(b.name),
  lag: (a, b) => (b.lagSeconds ?? -1) - (a.lagSeconds ?? -1),
  backlog: (a, b) => (b.backlogBytes ?? -1) - (a.backlogBytes ?? -1),
  pit: (a, b) => (b.lastPit?.ageSeconds ?? Infinity) - (a.lastPit?.ageSeconds ?? Infinity),
  rpo: (a, b) => Number(a.rpo.met) - Number(b.rpo.met) || a.name.localeCompare(b.name),
  ready: (a, b) =>
    (a.readiness === null ? 1 : a.readiness.ready ? 2 : 0) -
      (b.readiness === null ? 1 : b.readiness.ready ? 2 : 0) || a.name.localeCompare(b.name),
  replicator: (a, b) => (a.replicator?.name ?? "").localeCompare(b.replicator?.name ?? ""),
};

export function ServersPage() {
  const { data, error, loadedAt } = usePoll(
    (signal) => api<{ servers: ServerRow[]; generatedAt: string }>("/api/v1/console/servers", { signal }),
    5000,
    [],
    // Lag and backlog change with every heartbeat, which is not an event: reloaded every 15 s while live.
    { match: about.servers, everyMs: 15_000 },
  );
  const [filter, setFilter] = useState("");
  const [state, setState] = useState("all");
  const [sort, setSort] = useState<{ key: SortKey; reverse: boolean }>({ key: "health", reverse: false });
  const [page, setPage] = useState(0);

  const rows = useMemo(() => {
    const all = data?.servers ?? [];
    const f = filter.trim().toLowerCase();
    const picked = all.filter(
      (s) =>
        (f === "" ||
          s.name.toLowerCase().includes(f) ||
          (s.replicator?.name ?? "").toLowerCase().includes(f) ||
          (s.group ?? "").toLowerCase().includes(f)) &&
        (state === "all" || (state === "attention" ? needsAttention(s) : s.state === state)),
    );
    picked.sort(COMPARE[sort.key]);
    if (sort.reverse) picked.reverse();
    return picked;
  }, [data, filter, state, sort]);

  if (data === undefined && error !== undefined) return <ErrorNote error={error} />;
  if (data === undefined) return <Loading />;
  const all = data.servers;
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
  const current = Math.min(page, pages - 1);
  const shown = rows.slice(current * PAGE_SIZE, (current + 1) * PAGE_SIZE);
  const counts = {
    total: all.length,
    protected: all.filter((s) => s.state === "CONTINUOUS" && s.rpo.met).length,
    attention: all.filter(needsAttention).length,
    rpoMissed: all.filter((s) => !s.rpo.met).length,
    notReady: all.filter((s) => s.readiness !== null && !s.readiness.ready).length,
  };
  const th = (key: SortKey, label: string, cls = "") => (
    <th
      class={`sortable ${cls} ${sort.key === key ? "sorted" : ""}`}
      aria-sort={sort.key === key ? (sort.reverse ? "descending" : "ascending") : "none"}
      onClick={() => setSort({ key, reverse: sort.key === key ? !sort.reverse : false })}
    >
      {label}
      {sort.key === key ? <span class="sort-mark">{sort.reverse ? "▲" : "▼"}</span> : null}
    </th>
  );

  return (
    <div class="page">
      <div class="page-head">
        <div>
          <h1>Servers</h1>
          <p class="muted">
            {counts.total} protected server{counts.total === 1 ? "" : "s"} · updated{" "}
            {loadedAt ? new Date(loadedAt).toLocaleTimeString() : "—"}
            {error ? <span class="text-bad"> · last refresh failed</span> : null}
          </p>
        </div>
      </div>
      <div class="summary">
        <div class="summary-item">
          <span class="summary-value">{counts.total}</span>
          <span class="summary-label">servers</span>
        </div>
        <div class="summary-item summary-ok">
          <span class="summary-value">{counts.protected}</span>
          <span class="summary-label">replicating within RPO</span>
        </div>
        <div class={`summary-item ${counts.attention > 0 ? "summary-bad" : ""}`}>
          <span class="summary-value">{counts.attention}</span>
          <span class="summary-label">need attention</span>
        </div>
        <div class={`summary-item ${counts.rpoMissed > 0 ? "summary-warn" : ""}`}>
          <span class="summary-value">{counts.rpoMissed}</span>
          <span class="summary-label">RPO missed</span>
        </div>
        <div class={`summary-item ${counts.notReady > 0 ? "summary-warn" : ""}`}>
          <span class="summary-value">{counts.notReady}</span>
          <span class="summary-label">not launch-ready</span>
        </div>
      </div>
      {all.length === 0 ? (
        <div class="card">
          <Empty title="No servers yet">
            Make an install token on the Tokens page and run <code>lifeboat agent install</code> on a server
            to protect it.
          </Empty>
        </div>
      ) : (
        <div class="card">
          <div class="toolbar">
            <input
              class="search"
              type="search"
              placeholder="Filter by name, replicator or group"
              value={filter}
              onInput={(e) => {
                setFilter(e.currentTarget.value);
                setPage(0);
              }}
            />
            <select
              value={state}
              onChange={(e) => {
                setState(e.currentTarget.value);
                setPage(0);
              }}
            >
              {STATES.map((s) => (
                <option key={s} value={s}>
                  {s === "all" ? "All states" : s === "attention" ? "Needs attention" : s}
                </option>
              ))}
            </select>
            <span class="muted small toolbar-count">
              {rows.length === all.length
                ? `${all.length} server${all.length === 1 ? "" : "s"}`
                : `${rows.length} of ${all.length}`}
            </span>
          </div>
          {rows.length === 0 ? (
            <Empty title="No server matches">Change the filter to see more.</Empty>
          ) : (
            <div class="table-wrap">
              <table class="table" id="servers-table">
                <thead>
                  <tr>
                    {th("name", "Server")}
                    {th("state", "Replication")}
                    {th("lag", "Lag", "num")}
                    {th("backlog", "Backlog", "num")}
                    {th("pit", "Last PIT")}
                    {th("rpo", "RPO")}
                    {th("ready", "Launch readiness")}
                    {th("replicator", "Replicator")}
                  </tr>
                </thead>
                <tbody>
                  {shown.map((s) => (
                    <ServerLine key={s.id} s={s} />
                  ))}
                </tbody>
              </table>
            </div>
          )}
          {pages > 1 ? (
            <div class="pager">
              <button type="button" class="btn" disabled={current === 0} onClick={() => setPage(current - 1)}>
                Previous
              </button>
              <span class="muted">
                Page {current + 1} of {pages}
              </span>
              <button
                type="button"
                class="btn"
                disabled={current >= pages - 1}
                onClick={() => setPage(current + 1)}
              >
                Next
              </button>
            </div>
          ) : null}
        </div>
      )}
    </div>
  );
}

function ServerLine(props: { s: ServerRow }) {
  const s = props.s;
  return (
    <tr data-server={s.name}>
      <td>
        <a class="strong" href={href("servers", s.name)}>
          {s.name}
        </a>
        {s.group ? <span class="muted small"> · {s.group}</span> : null}
        {!s.online && s.state !== "DISCONNECTED" ? <div class="small text-bad">offline</div> : null}
      </td>
      <td>
        <StateBadge state={s.state} />
      </td>
      <td class="num lag" data-lag={s.lagSeconds ?? ""}>
        {duration(s.lagSeconds)}
      </td>
      <td class="num">{bytes(s.backlogBytes)}</td>
      <td>
        {s.lastPit ? (
          <>
            {duration(s.lastPit.ageSeconds)} ago
            <div class="muted small">{s.lastPit.consistency}</div>
          </>
        ) : (
          <span class="muted">none yet</span>
        )}
      </td>
      <td>
        {s.rpo.met ? (
          <Badge tone="ok" title={`target ${duration(s.rpo.targetSeconds)}`}>
            Met
          </Badge>
        ) : (
          <Badge tone="bad" title={`target ${duration(s.rpo.targetSeconds)}`}>
            Missed
          </Badge>
        )}
      </td>
      <td>
        {s.readiness === null ? (
          <span class="muted">not reported</span>
        ) : s.readiness.ready ? (
          <Badge tone="ok" title={s.readiness.verdict}>
            Ready · {s.readiness.profile}
          </Badge>
        ) : (
          <Badge tone="warn" title={s.readiness.verdict}>
            {s.readiness.problems} problem{s.readiness.problems === 1 ? "" : "s"} · {s.readiness.profile}
          </Badge>
        )}
      </td>
      <td>{s.replicator ? s.replicator.name : <span class="muted">embedded</span>}</td>
    </tr>
  );
}
