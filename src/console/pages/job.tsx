import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, api, enc } from "../api.js";
import { can } from "../app.js";
import { Badge, Card, Confirm, Empty, ErrorNote, Loading, Stat, stateTone } from "../components/ui.js";
import { ago, duration, jobType, time } from "../format.js";
import { about } from "../live.js";
import { usePoll } from "../poll.js";
import { href } from "../router.js";
import type { DrillReport, Job, LogLine, Session } from "../types.js";
import { useServerNames } from "./jobs.js";

const FINISHED = new Set(["succeeded", "failed", "terminated"]);

export function JobPage(props: { id: string; session: Session }) {
  const id = props.id;
  // Its log follows by long poll (log lines are not events); the job itself reloads when it finishes.
  const job = usePoll((signal) => api<{ job: Job }>(`/api/v1/jobs/${enc(id)}`, { signal }), 3000, [id], {
    match: about.job(id),
  });
  const { lines, state } = useFollowLog(id);
  const names = useServerNames();
  const [terminate, setTerminate] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<Error | undefined>(undefined);
  // The log's long poll sees the end first: read the job again for its result and times.
  const reload = job.reload;
  useEffect(() => {
    if (state !== undefined && FINISHED.has(state)) reload();
  }, [state, reload]);
  if (job.data === undefined) return job.error ? <ErrorNote error={job.error} /> : <Loading />;
  const j = job.data.job;
  const current = state ?? j.state;
  const finished = FINISHED.has(current);
  const launch = j.type === "drill" || j.type === "recovery";
  const stop = async () => {
    setBusy(true);
    try {
      await api(`/api/v1/jobs/${enc(id)}/terminate`, { method: "POST", body: {} });
      setTerminate(false);
      job.reload();
    } catch (err) {
      setError(err as Error);
    } finally {
      setBusy(false);
    }
  };
  return (
    <div class="page">
      <nav class="crumbs">
        <a href={href("jobs")}>Jobs</a> / <span>{j.id}</span>
      </nav>
      <div class="page-head">
        <div>
          <h1>
            {jobType(j.type)} <Badge tone={stateTone(current)}>{current}</Badge>
          </h1>
          <p class="muted">
            {j.serverIds.map((sid, i) => (
              <span key={sid}>
                {i > 0 ? ", " : ""}
                <a href={href("servers", sid)}>{names.get(sid) ?? sid}</a>
              </span>
            ))}{" "}
            · started {time(j.createdAt)} by {j.createdBy ?? "—"}
          </p>
        </div>
        {can(props.session, "operator") && (!finished || (j.type === "drill" && current === "succeeded")) ? (
          <div class="actions">
            <button type="button" class="btn btn-danger-outline" onClick={() => setTerminate(true)}>
              {finished ? "Remove drill outputs" : "Terminate"}
            </button>
          </div>
        ) : null}
      </div>
      <div class="stats">
        <Stat label="State" tone={stateTone(current) === "bad" ? "bad" : undefined}>
          <span id="job-state">{current}</span>
        </Stat>
        <Stat label="Started">{ago(j.createdAt)}</Stat>
        <Stat label="Took">
          {j.finishedAt ? duration((Date.parse(j.finishedAt) - Date.parse(j.createdAt)) / 1000) : "running…"}
        </Stat>
        <Stat label="Log lines">{lines.length}</Stat>
      </div>
      <Card title="Step log" actions={finished ? undefined : <span class="live">live</span>}>
        <LogView lines={lines} />
      </Card>
      {launch && finished ? <ReportCard jobId={id} /> : null}
      {j.state === "failed" && j.result ? (
        <Card title="Result">
          <pre class="raw">{JSON.stringify(j.result, null, 2)}</pre>
        </Card>
      ) : null}
      <Confirm
        open={terminate}
        title={finished ? "Remove this drill's outputs?" : "Terminate this job?"}
        confirmLabel={finished ? "Remove outputs" : "Terminate"}
        danger
        busy={busy}
        onCancel={() => setTerminate(false)}
        onConfirm={() => void stop()}
      >
        <p>
          {finished
            ? "The drill's images, reports and running copies are removed."
            : "The job stops at its next step; a drill also removes what it made."}
        </p>
        {error ? <ErrorNote error={error} /> : null}
      </Confirm>
    </div>
  );
}

/** Follows a job's log with the API's long poll until the job finishes. */
function useFollowLog(id: string): { lines: LogLine[]; state: string | undefined } {
  const [lines, setLines] = useState<LogLine[]>([]);
  const [state, setState] = useState<string | undefined>(undefined);
  useEffect(() => {
    setLines([]);
    setState(undefined);
    const ctl = new AbortController();
    let after = 0;
    const loop = async () => {
      while (!ctl.signal.aborted) {
        try {
          const r = await api<{ state: string; log: LogLine[] }>(
            `/api/v1/jobs/${enc(id)}/log?after=${after}&waitSeconds=20`,
            { signal: ctl.signal },
          );
          if (r.log.length > 0) {
            after = r.log.at(-1)!.seq;
            setLines((old) => [...old, ...r.log]);
          }
          setState(r.state);
          if (FINISHED.has(r.state) && r.log.length === 0) return;
        } catch (err) {
          if (ctl.signal.aborted) return;
          if (err instanceof ApiError && err.status < 500) return;
          await new Promise((r) => setTimeout(r, 2000));
        }
      }
    };
    void loop();
    return () => ctl.abort();
  }, [id]);
  return { lines, state };
}

function LogView(props: { lines: LogLine[] }) {
  const box = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const el = box.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [props.lines.length]);
  if (props.lines.length === 0)
    return <Empty title="No log lines yet">The job writes its steps here as it runs.</Empty>;
  return (
    <div class="log" ref={box} id="job-log">
      {props.lines.map((l) => (
        <div key={l.seq} class={`log-line log-${l.level}`}>
          <span class="log-time">{new Date(l.at).toLocaleTimeString()}</span>
          <span class="log-level">{l.level}</span>
          <span class="log-msg">{l.message}</span>
        </div>
      ))}
    </div>
  );
}

function ReportCard(props: { jobId: string }) {
  const r = usePoll(
    (signal) => api<{ reports: DrillReport[] }>(`/api/v1/jobs/${enc(props.jobId)}/report`, { signal }),
    0,
    [props.jobId],
  );
  if (r.data === undefined)
    return (
      <Card title="Drill report">
        {r.error ? (
          r.error instanceof ApiError && r.error.status === 404 ? (
            <Empty title="No report">{r.error.message}</Empty>
          ) : (
            <ErrorNote error={r.error} />
          )
        ) : (
          <Loading />
        )}
      </Card>
    );
  return (
    <>
      {r.data.reports.map((rep) => (
        <Report key={rep.server.id} r={rep} />
      ))}
    </>
  );
}

function Report(props: { r: DrillReport }) {
  const r = props.r;
  const tone = r.outcome === "succeeded" ? "ok" : r.outcome === "failed" ? "bad" : "muted";
  return (
    <Card
      title={`${r.jobType === "recovery" ? "Recovery" : "Drill"} report — ${r.server.name}`}
      class="report"
    >
      <div class="stats">
        <Stat label="Outcome" tone={tone === "bad" ? "bad" : tone === "ok" ? "ok" : undefined}>
          <span id="report-outcome">{r.outcome}</span>
        </Stat>
        <Stat label="Recovery time">{r.recoverySeconds === null ? "—" : duration(r.recoverySeconds)}</Stat>
        <Stat label="PIT age at launch">{duration(r.pit.ageSeconds)}</Stat>
        <Stat label="Consistency">{r.pit.consistency}</Stat>
      </div>
      <dl class="kv">
        <dt>Point in time</dt>
        <dd>
          {time(r.pit.time)} <code class="small">{r.pit.id}</code>
        </dd>
        <dt>Target</dt>
        <dd>
          {r.target}, boot profile {r.profile}
        </dd>
        <dt>Readiness</dt>
        <dd>
          {r.readiness
            ? `${r.readiness.ready ? "ready" : "not ready"}: ${r.readiness.verdict}`
            : "not inspected"}
        </dd>
        {r.error ? (
          <>
            <dt>Error</dt>
            <dd class="text-bad">
              <code>{r.error.code}</code> {r.error.message}
            </dd>
          </>
        ) : null}
      </dl>
      <h3>Steps</h3>
      <table class="table compact">
        <thead>
          <tr>
            <th>Step</th>
            <th class="num">Seconds</th>
            <th>Result</th>
            <th>Detail</th>
          </tr>
        </thead>
        <tbody>
          {r.steps.map((s, i) => (
            <tr key={i}>
              <td>{s.name}</td>
              <td class="num">{s.seconds.toFixed(1)}</td>
              <td>{s.ok ? <Badge tone="ok">passed</Badge> : <Badge tone="bad">failed</Badge>}</td>
              <td class="muted">{s.message}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {r.checks.length > 0 ? (
        <>
          <h3>Checks</h3>
          <table class="table compact">
            <tbody>
              {r.checks.map((c, i) => (
                <tr key={i}>
                  <td>{c.name}</td>
                  <td>{c.ok ? <Badge tone="ok">passed</Badge> : <Badge tone="bad">failed</Badge>}</td>
                  <td class="muted">{c.message}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      ) : null}
      {r.outputs.images.length > 0 ? (
        <>
          <h3>Outputs</h3>
          <ul class="plain">
            {[...r.outputs.images, ...(r.outputs.manifest ? [r.outputs.manifest] : [])].map((o) => (
              <li key={o}>
                <code>{o}</code>
              </li>
            ))}
          </ul>
        </>
      ) : null}
    </Card>
  );
}
