import { useState } from "preact/hooks";
import { api } from "../api.js";
import { Badge, Empty, ErrorNote, Loading, stateTone } from "../components/ui.js";
import { ago, duration, jobType, time, title } from "../format.js";
import { about } from "../live.js";
import { usePoll } from "../poll.js";
import { href } from "../router.js";
import type { Job, ServerRow } from "../types.js";

const STATES = ["all", "pending", "running", "succeeded", "failed", "terminated"];

export function JobsPage() {
  const [state, setState] = useState("all");
  const jobs = usePoll(
    (signal) => api<{ jobs: Job[] }>(`/api/v1/jobs${state === "all" ? "" : `?state=${state}`}`, { signal }),
    4000,
    [state],
    // A job's start and steps are not events, its end is: 15 s while live for the first.
    { match: about.jobs, everyMs: 15_000 },
  );
  const names = useServerNames();
  return (
    <div class="page">
      <div class="page-head">
        <div>
          <h1>Jobs</h1>
          <p class="muted">Drills, recoveries, plans and PITs requested by operators, newest first.</p>
        </div>
      </div>
      <div class="card">
        <div class="toolbar">
          <select value={state} onChange={(e) => setState(e.currentTarget.value)}>
            {STATES.map((s) => (
              <option key={s} value={s}>
                {s === "all" ? "All states" : title(s)}
              </option>
            ))}
          </select>
        </div>
        {jobs.data === undefined ? (
          jobs.error ? (
            <ErrorNote error={jobs.error} />
          ) : (
            <Loading />
          )
        ) : jobs.data.jobs.length === 0 ? (
          <Empty title="No jobs">
            Start a drill from a server's page; it shows up here with its live log.
          </Empty>
        ) : (
          <div class="table-wrap">
            <table class="table" id="jobs-table">
              <thead>
                <tr>
                  <th>Job</th>
                  <th>Type</th>
                  <th>State</th>
                  <th>Servers</th>
                  <th>Started</th>
                  <th class="num">Took</th>
                  <th>By</th>
                </tr>
              </thead>
              <tbody>
                {jobs.data.jobs.map((j) => (
                  <tr key={j.id}>
                    <td>
                      <a class="strong" href={href("jobs", j.id)}>
                        <code>{j.id}</code>
                      </a>
                    </td>
                    <td>{jobType(j.type)}</td>
                    <td>
                      <Badge tone={stateTone(j.state)}>{j.state}</Badge>
                    </td>
                    <td>{j.serverIds.map((id) => names.get(id) ?? id).join(", ") || "—"}</td>
                    <td title={time(j.createdAt)}>{ago(j.createdAt)}</td>
                    <td class="num">
                      {j.finishedAt
                        ? duration((Date.parse(j.finishedAt) - Date.parse(j.createdAt)) / 1000)
                        : "—"}
                    </td>
                    <td class="muted">{j.createdBy ?? "—"}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </div>
    </div>
  );
}

/** Server ids to names, for tables that list ids. */
export function useServerNames(): Map<string, string> {
  const r = usePoll(
    (signal) => api<{ servers: ServerRow[] }>("/api/v1/console/servers", { signal }),
    60_000,
    [],
    { match: (e) => e.type === "server.decommissioned", everyMs: 60_000 },
  );
  return new Map((r.data?.servers ?? []).map((s) => [s.id, s.name]));
}
