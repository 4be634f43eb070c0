import { useState } from "preact/hooks";
import { ApiError, api, enc } from "../api.js";
import { can } from "../app.js";
import { LagChart } from "../components/lag-chart.js";
import {
  Badge,
  Card,
  Confirm,
  Empty,
  ErrorNote,
  Loading,
  StateBadge,
  Stat,
  stateTone,
} from "../components/ui.js";
import { ago, bytes, duration, jobType, time } from "../format.js";
import { about } from "../live.js";
import { usePoll } from "../poll.js";
import { go, href } from "../router.js";
import type { Job, Pit, Replicator, Server, Session } from "../types.js";
import { SettingsCard } from "./server-settings.js";

const CONSISTENCY_TONE: Record<string, "ok" | "info" | "warn" | "muted"> = {
  application: "ok",
  filesystem: "info",
  crash: "warn",
  none: "muted",
};

export function ServerPage(props: { id: string; session: Session }) {
  const id = props.id;
  const mine = about.server(id);
  // Lag, backlog and sync progress change with every heartbeat, which is not an event: 15 s while live.
  const server = usePoll((signal) => api<Server>(`/api/v1/servers/${enc(id)}`, { signal }), 5000, [id], {
    match: mine,
    everyMs: 15_000,
  });
  const lag = usePoll(
    (signal) =>
      api<{ samples: { at: string; lagSeconds: number | null }[] }>(
        `/api/v1/servers/${enc(id)}/lag?hours=6`,
        {
          signal,
        },
      ),
    60_000,
    [id],
  );
  const pits = usePoll(
    (signal) => api<{ pits: Pit[] }>(`/api/v1/pits?server=${enc(id)}`, { signal }),
    30_000,
    [id],
    { match: (e) => e.type === "pit.created" && mine(e), everyMs: 120_000 },
  );
  const jobs = usePoll(
    (signal) => api<{ jobs: Job[] }>(`/api/v1/jobs?server=${enc(id)}`, { signal }),
    10_000,
    [id],
    { match: mine },
  );
  const replicators = usePoll(
    (signal) => api<{ replicators: Replicator[] }>("/api/v1/replicators", { signal }),
    60_000,
    [],
  );
  const [launch, setLaunch] = useState<"drill" | "recovery" | null>(null);
  const [busy, setBusy] = useState(false);
  const [launchError, setLaunchError] = useState<Error | undefined>(undefined);

  if (server.data === undefined && server.error !== undefined) return <ErrorNote error={server.error} />;
  if (server.data === undefined) return <Loading />;
  const s = server.data;
  const operator = can(props.session, "operator");
  const newest = pits.data?.pits.at(-1);

  const start = async () => {
    if (launch === null) return;
    setBusy(true);
    setLaunchError(undefined);
    try {
      const r = await api<{ job: Job }>("/api/v1/launches", {
        method: "POST",
        body: { servers: [s.id], mode: launch },
      });
      setLaunch(null);
      go("jobs", r.job.id);
    } catch (err) {
      setLaunchError(err as ApiError);
    } finally {
      setBusy(false);
    }
  };

  return (
    <div class="page">
      <nav class="crumbs">
        <a href={href("servers")}>Servers</a> / <span>{s.name}</span>
      </nav>
      <div class="page-head">
        <div>
          <h1>
            {s.name} <StateBadge state={s.state} />
            {!s.online ? <Badge tone="bad">offline</Badge> : null}
          </h1>
          <p class="muted">
            {s.hostname ?? "hostname unknown"} · registered {time(s.registeredAt)} · last heartbeat{" "}
            {ago(s.lastSeenAt)}
          </p>
        </div>
        {operator ? (
          <div class="actions">
            <button type="button" class="btn btn-primary" onClick={() => setLaunch("drill")}>
              Launch drill
            </button>
            <button type="button" class="btn btn-danger-outline" onClick={() => setLaunch("recovery")}>
              Recover
            </button>
          </div>
        ) : null}
      </div>

      <div class="stats">
        <Stat label="Lag" tone={(s.lagSeconds ?? 0) > 300 ? "bad" : undefined}>
          <span id="server-lag">{duration(s.lagSeconds)}</span>
        </Stat>
        <Stat label="Backlog">{bytes(s.backlogBytes)}</Stat>
        <Stat label="Last PIT">{newest ? `${ago(newest.time)}` : "none yet"}</Stat>
        <Stat label="Replicator">
          {s.replicatorId === null
            ? "embedded"
            : (replicators.data?.replicators.find((r) => r.id === s.replicatorId)?.name ?? s.replicatorId)}
        </Stat>
        <Stat label="Tracker">{typeof s.inventory?.tracker === "string" ? s.inventory.tracker : "—"}</Stat>
      </div>

      <div class="grid-2">
        <Card title="Lag, last 6 hours">
          {lag.data === undefined ? (
            <Loading />
          ) : lag.data.samples.length < 2 ? (
            <Empty title="Not enough samples yet">
              The control plane keeps one sample a minute from heartbeats.
            </Empty>
          ) : (
            <LagChart samples={lag.data.samples} />
          )}
        </Card>
        <DisksCard server={s} />
      </div>

      <Card title="Points in time">
        <PitTimeline pits={pits.data?.pits} />
      </Card>

      <div class="grid-2">
        <ReadinessCard server={s} />
        <Card title="Recent jobs">
          {jobs.data === undefined ? (
            <Loading />
          ) : jobs.data.jobs.length === 0 ? (
            <Empty title="No jobs yet">Drills and recoveries of this server appear here.</Empty>
          ) : (
            <table class="table compact">
              <tbody>
                {jobs.data.jobs.slice(0, 8).map((j) => (
                  <tr key={j.id}>
                    <td>
                      <a href={href("jobs", j.id)}>{jobType(j.type)}</a>
                    </td>
                    <td>
                      <Badge tone={stateTone(j.state)}>{j.state}</Badge>
                    </td>
                    <td class="muted">{ago(j.createdAt)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </Card>
      </div>

      <div class="grid-2">
        <SettingsCard serverId={s.id} kind="replication" editable={operator} />
        <SettingsCard serverId={s.id} kind="launch" editable={operator} />
      </div>

      <Card title="Inventory">
        <dl class="kv">
          <dt>Server id</dt>
          <dd>
            <code>{s.id}</code>
          </dd>
          <dt>Hostname</dt>
          <dd>{s.hostname ?? "—"}</dd>
          <dt>Consistency group</dt>
          <dd>{s.group ?? "—"}</dd>
          <dt>Disks</dt>
          <dd>{s.inventory?.disks?.length ?? 0}</dd>
        </dl>
        <details class="raw">
          <summary>Everything the agent reported</summary>
          <pre>{JSON.stringify(s.inventory, null, 2)}</pre>
        </details>
      </Card>

      <Confirm
        open={launch !== null}
        title={launch === "recovery" ? `Recover ${s.name}?` : `Launch a drill of ${s.name}?`}
        confirmLabel={launch === "recovery" ? "Start recovery" : "Start drill"}
        danger={launch === "recovery"}
        busy={busy}
        onCancel={() => {
          setLaunch(null);
          setLaunchError(undefined);
        }}
        onConfirm={() => void start()}
      >
        <p>
          {launch === "recovery"
            ? "A recovery launches the server from its newest PIT with its launch settings and keeps it running. Use it when the source is lost."
            : "A drill launches a copy of the server from its newest PIT with its launch settings, checks it, and writes a drill report. The source is not touched."}
        </p>
        <p class="muted">
          Newest PIT:{" "}
          {newest ? `${time(newest.time)} (${newest.consistency})` : "none yet — the launch will fail"}
        </p>
        {launchError ? <ErrorNote error={launchError} /> : null}
      </Confirm>
    </div>
  );
}

function DisksCard(props: { server: Server }) {
  const disks = props.server.inventory?.disks ?? [];
  return (
    <Card title="Disks">
      {disks.length === 0 ? (
        <Empty title="No disks reported">The agent reports its disks with its heartbeats.</Empty>
      ) : (
        <table class="table compact">
          <thead>
            <tr>
              <th>Disk</th>
              <th class="num">Size</th>
              <th>State</th>
              <th>Progress</th>
            </tr>
          </thead>
          <tbody>
            {disks.map((d) => {
              const p = d.progress;
              const pct = p && p.totalBytes > 0 ? Math.min(100, (100 * p.doneBytes) / p.totalBytes) : null;
              return (
                <tr key={d.index}>
                  <td>
                    <code>{d.path}</code>
                  </td>
                  <td class="num">{bytes(d.sizeBytes)}</td>
                  <td>
                    <StateBadge state={d.state} />
                  </td>
                  <td class="progress-cell">
                    {pct !== null && p ? (
                      <>
                        <div class="progress" role="progressbar" aria-valuenow={Math.round(pct)}>
                          <div class="progress-bar" style={{ width: `${pct}%` }} />
                        </div>
                        <div class="muted small">
                          {pct.toFixed(0)}% · {bytes(p.bytesPerSecond)}/s · ETA {duration(p.etaSeconds)}
                        </div>
                      </>
                    ) : d.state === "CONTINUOUS" ? (
                      <span class="muted">in sync</span>
                    ) : (
                      <span class="muted">—</span>
                    )}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
    </Card>
  );
}

function PitTimeline(props: { pits: Pit[] | undefined }) {
  if (props.pits === undefined) return <Loading />;
  if (props.pits.length === 0)
    return <Empty title="No points in time yet">The first PIT is made when the initial sync finishes.</Empty>;
  const recent = props.pits.slice(-40);
  const first = Date.parse(recent[0]!.time);
  const last = Date.parse(recent.at(-1)!.time);
  const span = Math.max(1, last - first);
  return (
    <div>
      <div class="timeline" aria-label="PIT timeline">
        <div class="timeline-line" />
        {recent.map((p) => (
          <span
            key={p.id}
            class={`timeline-dot dot-${CONSISTENCY_TONE[p.consistency] ?? "muted"}`}
            style={{ left: `${recent.length === 1 ? 50 : (100 * (Date.parse(p.time) - first)) / span}%` }}
            title={`${time(p.time)} · ${p.consistency}`}
          />
        ))}
      </div>
      <div class="timeline-legend muted small">
        <span>{time(recent[0]!.time)}</span>
        <span>
          <i class="dot-inline dot-ok" /> application <i class="dot-inline dot-info" /> filesystem{" "}
          <i class="dot-inline dot-warn" /> crash
        </span>
        <span>{time(recent.at(-1)!.time)}</span>
      </div>
      <table class="table compact">
        <thead>
          <tr>
            <th>Time</th>
            <th>Consistency</th>
            <th>Age</th>
            <th>PIT</th>
          </tr>
        </thead>
        <tbody>
          {recent
            .slice(-8)
            .reverse()
            .map((p) => (
              <tr key={p.id}>
                <td>{time(p.time)}</td>
                <td>
                  <Badge tone={CONSISTENCY_TONE[p.consistency] ?? "muted"}>{p.consistency}</Badge>
                </td>
                <td class="muted">{ago(p.time)}</td>
                <td>
                  <code class="small">{p.id}</code>
                </td>
              </tr>
            ))}
        </tbody>
      </table>
      {props.pits.length > 8 ? <p class="muted small">{props.pits.length} PITs in the catalog.</p> : null}
    </div>
  );
}

function ReadinessCard(props: { server: Server }) {
  const r = props.server.readiness;
  return (
    <Card title="Launch readiness">
      {r === null ? (
        <Empty title="Not reported yet">
          The agent checks whether the server would boot on its target platform.
        </Empty>
      ) : (
        <div>
          <p>
            {r.ready ? <Badge tone="ok">Ready</Badge> : <Badge tone="warn">Not ready</Badge>}{" "}
            <span class="muted">
              profile {r.profile} · checked {ago(r.checkedAt)}
            </span>
          </p>
          <p>{r.verdict}</p>
          {r.problems.length > 0 ? (
            <ul class="problems">
              {r.problems.map((p) => (
                <li key={p.code} class={`problem problem-${p.severity}`}>
                  <div>
                    <Badge tone={p.severity === "error" ? "bad" : "warn"}>{p.severity}</Badge>{" "}
                    <code>{p.code}</code>
                  </div>
                  <div>{p.message}</div>
                  <div class="remedy">
                    <strong>Remedy:</strong> {p.remedy}
                  </div>
                </li>
              ))}
            </ul>
          ) : null}
        </div>
      )}
    </Card>
  );
}
