import { useState } from "preact/hooks";
import { api, enc } from "../api.js";
import { can } from "../app.js";
import { Badge, Confirm, Empty, ErrorNote, Loading, StateBadge } from "../components/ui.js";
import { bytes, duration, time } from "../format.js";
import { about } from "../live.js";
import { usePoll } from "../poll.js";
import { href } from "../router.js";
import type { Session } from "../types.js";

interface Failback {
  id: string;
  jobId: string;
  state: string;
  source: { name: string };
  target: { name: string };
  pass: number;
  passKind: string | null;
  completedPass: number;
  lagSeconds: number | null;
  backlog: { chunks: number; bytes: number } | null;
  bytesSent: number;
  chunksSent: number;
  chunksCompared: number;
  cutoverPitId: string | null;
  verify: { chunks: number; mismatched: number } | null;
  error: { code: string; message: string } | null;
  createdAt: string;
}

const ACTIVE = new Set(["syncing", "cutover"]);

/** Failbacks: pass, lag and bytes sent of each, with cut-over and cancel for operators. */
export function FailbacksPage(props: { session: Session }) {
  // A failback's progress moves with the agent's reports, which are not events: 10 s while live.
  const r = usePoll((signal) => api<{ failbacks: Failback[] }>("/api/v1/failbacks", { signal }), 3000, [], {
    match: about.failbacks,
    everyMs: 10_000,
  });
  const [ask, setAsk] = useState<{ fb: Failback; verb: "cutover" | "cancel" } | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<Error | undefined>(undefined);
  const operate = can(props.session, "operator");
  const act = async () => {
    if (!ask) return;
    setBusy(true);
    setError(undefined);
    try {
      await api(`/api/v1/failbacks/${enc(ask.fb.id)}/${ask.verb}`, { method: "POST", body: {} });
      setAsk(null);
      r.reload();
    } catch (err) {
      setError(err as Error);
    } finally {
      setBusy(false);
    }
  };
  return (
    <div class="page">
      <div class="page-head">
        <div>
          <h1>Failbacks</h1>
          <p class="muted">
            Moving back from a recovered instance to the original server: only blocks that differ travel, and
            the cut-over is verified block for block.
          </p>
        </div>
      </div>
      {error ? <ErrorNote error={error} /> : null}
      <div class="card">
        {r.data === undefined ? (
          r.error ? (
            <ErrorNote error={r.error} />
          ) : (
            <Loading />
          )
        ) : r.data.failbacks.length === 0 ? (
          <Empty title="No failbacks">
            After a recovery, install the agent on the recovered instance with a token from{" "}
            <code>lifeboat token create --recovery-of JOB</code>, then{" "}
            <code>lifeboat failback start JOB</code>.
          </Empty>
        ) : (
          <div class="table-wrap">
            <table class="table">
              <thead>
                <tr>
                  <th>From → to</th>
                  <th>State</th>
                  <th>Pass</th>
                  <th class="num">Lag</th>
                  <th class="num">Sent</th>
                  <th>Started</th>
                  <th />
                </tr>
              </thead>
              <tbody>
                {r.data.failbacks.map((f) => (
                  <tr key={f.id}>
                    <td class="strong">
                      {f.source.name} → {f.target.name}
                      <div class="muted small">
                        <a href={href("jobs", f.jobId)}>
                          <code>{f.id}</code>
                        </a>
                      </div>
                    </td>
                    <td>
                      <StateBadge state={f.state} />
                      {f.error ? (
                        <div>
                          <Badge tone="bad" title={f.error.message}>
                            {f.error.code}
                          </Badge>
                        </div>
                      ) : null}
                    </td>
                    <td>
                      {f.pass > 0
                        ? `${f.pass} (${f.passKind ?? "-"}), ${f.completedPass} done`
                        : "waiting for the agent"}
                      {f.verify ? (
                        <div class="muted small">
                          verified {f.verify.chunks} chunks, {f.verify.mismatched} differed
                        </div>
                      ) : null}
                    </td>
                    <td class="num">
                      {duration(f.lagSeconds)}
                      {f.backlog ? <div class="muted small">backlog {bytes(f.backlog.bytes)}</div> : null}
                    </td>
                    <td class="num">
                      {bytes(f.bytesSent)}
                      <div class="muted small">
                        {f.chunksSent} of {f.chunksCompared} chunks
                      </div>
                    </td>
                    <td class="muted">{time(f.createdAt)}</td>
                    <td>
                      {operate && ACTIVE.has(f.state) ? (
                        <>
                          {f.state === "syncing" ? (
                            <button
                              type="button"
                              class="btn btn-primary"
                              onClick={() => setAsk({ fb: f, verb: "cutover" })}
                            >
                              Cut over
                            </button>
                          ) : null}{" "}
                          <button type="button" class="btn" onClick={() => setAsk({ fb: f, verb: "cancel" })}>
                            Cancel
                          </button>
                        </>
                      ) : null}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </div>
      <Confirm
        open={ask !== null}
        title={ask?.verb === "cutover" ? "Cut over" : "Cancel the failback"}
        confirmLabel={ask?.verb === "cutover" ? "Cut over" : "Cancel failback"}
        danger={ask?.verb === "cancel"}
        busy={busy}
        onConfirm={() => void act()}
        onCancel={() => setAsk(null)}
      >
        {ask?.verb === "cutover" ? (
          <p>
            {ask.fb.source.name} is frozen briefly for a filesystem-consistent PIT; {ask.fb.target.name} syncs
            to it and is verified block for block. Stop the workload on {ask.fb.source.name} first.
          </p>
        ) : (
          <p>
            {ask?.fb.target.name}'s disks stay partly synced and the server stays fenced until a failback
            completes.
          </p>
        )}
      </Confirm>
    </div>
  );
}
