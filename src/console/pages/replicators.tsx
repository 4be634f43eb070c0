import { api } from "../api.js";
import { Badge, Empty, ErrorNote, Loading, StateBadge } from "../components/ui.js";
import { ago, time } from "../format.js";
import { about } from "../live.js";
import { usePoll } from "../poll.js";
import type { Replicator } from "../types.js";

export function ReplicatorsPage() {
  const r = usePoll(
    (signal) => api<{ replicators: Replicator[] }>("/api/v1/replicators", { signal }),
    5000,
    [],
    // Last-seen times and assignments move with heartbeats, which are not events: 15 s while live.
    { match: about.replicators, everyMs: 15_000 },
  );
  return (
    <div class="page">
      <div class="page-head">
        <div>
          <h1>Replicators</h1>
          <p class="muted">
            Separate replicators receive agents' data and make PITs. Without one, the control plane's own
            replicator does.
          </p>
        </div>
      </div>
      <div class="card">
        {r.data === undefined ? (
          r.error ? (
            <ErrorNote error={r.error} />
          ) : (
            <Loading />
          )
        ) : r.data.replicators.length === 0 ? (
          <Empty title="No separate replicators">
            Every server replicates to the replicator embedded in the control plane. Add one with an install
            token of role replicator and <code>lifeboat replicator install</code>.
          </Empty>
        ) : (
          <div class="table-wrap">
            <table class="table">
              <thead>
                <tr>
                  <th>Name</th>
                  <th>State</th>
                  <th>Address</th>
                  <th class="num">Servers</th>
                  <th>Last heartbeat</th>
                  <th>Registered</th>
                </tr>
              </thead>
              <tbody>
                {r.data.replicators.map((x) => (
                  <tr key={x.id}>
                    <td class="strong">
                      {x.name}
                      <div class="muted small">
                        <code>{x.id}</code>
                      </div>
                    </td>
                    <td>
                      {x.decommissionedAt ? (
                        <Badge tone="muted">decommissioned</Badge>
                      ) : (
                        <>
                          <StateBadge state={x.state} />{" "}
                          {!x.online ? <Badge tone="bad">offline</Badge> : null}
                        </>
                      )}
                    </td>
                    <td>
                      <code>{x.address}</code>
                    </td>
                    <td class="num">{x.assignedServers.length}</td>
                    <td>{ago(x.lastSeenAt)}</td>
                    <td class="muted">{time(x.registeredAt)}</td>
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
