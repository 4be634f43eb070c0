import { useState } from "preact/hooks";
import { api, enc } from "../api.js";
import { can } from "../app.js";
import { Badge, Card, Confirm, Empty, ErrorNote, Loading } from "../components/ui.js";
import { ago, time } from "../format.js";
import { usePoll } from "../poll.js";
import type { Session, Token } from "../types.js";

export function TokensPage(props: { session: Session }) {
  const admin = can(props.session, "admin");
  const list = usePoll((signal) => api<{ tokens: Token[] }>("/api/v1/tokens", { signal }), 0, []);
  const [form, setForm] = useState({ role: "agent", uses: "1", ttlHours: "24", serverName: "" });
  const [made, setMade] = useState<Token | null>(null);
  const [error, setError] = useState<Error | undefined>(undefined);
  const [revoke, setRevoke] = useState<Token | null>(null);
  const [busy, setBusy] = useState(false);
  const [copied, setCopied] = useState(false);

  const create = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      const t = await api<Token>("/api/v1/tokens", {
        method: "POST",
        body: {
          role: form.role,
          uses: Number(form.uses),
          ttlSeconds: Math.round(Number(form.ttlHours) * 3600),
          ...(form.serverName.trim() ? { serverName: form.serverName.trim() } : {}),
        },
      });
      setMade(t);
      setCopied(false);
      list.reload();
    } catch (err) {
      setError(err as Error);
    } finally {
      setBusy(false);
    }
  };
  const doRevoke = async () => {
    if (!revoke) return;
    setBusy(true);
    try {
      await api(`/api/v1/tokens/${enc(revoke.id)}`, { method: "DELETE" });
      setRevoke(null);
      list.reload();
    } catch (err) {
      setError(err as Error);
    } finally {
      setBusy(false);
    }
  };
  const copy = async () => {
    if (made?.token) {
      await navigator.clipboard.writeText(made.token).catch(() => undefined);
      setCopied(true);
    }
  };

  if (!admin) return <Empty title="Tokens are for admins">Ask an admin for an install token.</Empty>;
  return (
    <div class="page">
      <div class="page-head">
        <div>
          <h1>Install tokens</h1>
          <p class="muted">Agents and replicators register once with a short-lived token.</p>
        </div>
      </div>
      <Card title="New token">
        <form class="form form-inline" onSubmit={(e) => void create(e)}>
          <label class="field">
            <span>Role</span>
            <select value={form.role} onChange={(e) => setForm({ ...form, role: e.currentTarget.value })}>
              <option value="agent">agent</option>
              <option value="replicator">replicator</option>
            </select>
          </label>
          <label class="field">
            <span>Uses</span>
            <input
              type="number"
              min="1"
              max="10000"
              value={form.uses}
              onInput={(e) => setForm({ ...form, uses: e.currentTarget.value })}
            />
          </label>
          <label class="field">
            <span>Valid for (hours)</span>
            <input
              type="number"
              min="1"
              value={form.ttlHours}
              onInput={(e) => setForm({ ...form, ttlHours: e.currentTarget.value })}
            />
          </label>
          <label class="field">
            <span>Server name (optional)</span>
            <input
              value={form.serverName}
              onInput={(e) => setForm({ ...form, serverName: e.currentTarget.value })}
            />
          </label>
          <button type="submit" class="btn btn-primary" disabled={busy}>
            Create token
          </button>
        </form>
        {error ? <ErrorNote error={error} /> : null}
        {made?.token ? (
          <div class="secret" role="status">
            <div>
              <strong>Token {made.id} created.</strong> Copy it now: it is shown only once.
            </div>
            <div class="secret-row">
              <code id="token-secret">{made.token}</code>
              <button type="button" class="btn btn-small" onClick={() => void copy()}>
                {copied ? "Copied" : "Copy"}
              </button>
            </div>
            <div class="muted small">
              On the server: <code>lifeboat agent install --token …</code>
            </div>
          </div>
        ) : null}
      </Card>
      <Card title="Tokens">
        {list.data === undefined ? (
          list.error ? (
            <ErrorNote error={list.error} />
          ) : (
            <Loading />
          )
        ) : list.data.tokens.length === 0 ? (
          <Empty title="No tokens">Create one above to register an agent or a replicator.</Empty>
        ) : (
          <table class="table">
            <thead>
              <tr>
                <th>Token</th>
                <th>Role</th>
                <th>Uses</th>
                <th>Server name</th>
                <th>Expires</th>
                <th>State</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {list.data.tokens.map((t) => {
                const expired = Date.parse(t.expiresAt) < Date.now();
                const used = t.usesCount >= t.usesAllowed;
                const live = !t.revokedAt && !expired && !used;
                return (
                  <tr key={t.id}>
                    <td>
                      <code>{t.id}</code>
                      <div class="muted small">
                        {t.createdBy} · {ago(t.createdAt)}
                      </div>
                    </td>
                    <td>{t.role}</td>
                    <td>
                      {t.usesCount} / {t.usesAllowed}
                    </td>
                    <td>{t.serverName ?? <span class="muted">agent's hostname</span>}</td>
                    <td title={time(t.expiresAt)}>{time(t.expiresAt)}</td>
                    <td>
                      {t.revokedAt ? (
                        <Badge tone="muted">revoked</Badge>
                      ) : expired ? (
                        <Badge tone="muted">expired</Badge>
                      ) : used ? (
                        <Badge tone="muted">used up</Badge>
                      ) : (
                        <Badge tone="ok">active</Badge>
                      )}
                    </td>
                    <td class="num">
                      {live ? (
                        <button
                          type="button"
                          class="btn btn-small btn-danger-outline"
                          onClick={() => setRevoke(t)}
                        >
                          Revoke
                        </button>
                      ) : null}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        )}
      </Card>
      <Confirm
        open={revoke !== null}
        title={`Revoke token ${revoke?.id ?? ""}?`}
        confirmLabel="Revoke"
        danger
        busy={busy}
        onCancel={() => setRevoke(null)}
        onConfirm={() => void doRevoke()}
      >
        <p>Nothing can register with it afterwards. Agents that already registered keep working.</p>
      </Confirm>
    </div>
  );
}
