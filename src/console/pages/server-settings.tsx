import { useState } from "preact/hooks";
import { api, enc } from "../api.js";
import { Badge, Card, ErrorNote, Loading } from "../components/ui.js";
import { usePoll } from "../poll.js";
import type { SettingsView } from "../types.js";

interface Field {
  name: string;
  label: string;
  kind: "int" | "text" | "select" | "bandwidth";
  options?: string[];
}

/** The fields the console edits; the rest are shown and changed with `lifeboat settings`. */
const FIELDS: Record<SettingsView["kind"], Field[]> = {
  replication: [
    { name: "pitIntervalMinutes", label: "PIT every (minutes)", kind: "int" },
    { name: "rpoMinutes", label: "RPO target (minutes)", kind: "int" },
    { name: "retention", label: "Retention", kind: "text" },
    {
      name: "consistency",
      label: "Consistency",
      kind: "select",
      options: ["application", "filesystem", "crash"],
    },
    { name: "bandwidthMbps", label: "Bandwidth (Mbit/s)", kind: "bandwidth" },
  ],
  launch: [
    { name: "target", label: "Target", kind: "select", options: ["image", "block", "qemu", "command"] },
    { name: "bootProfile", label: "Boot profile", kind: "text" },
    { name: "outputDir", label: "Output directory", kind: "text" },
    { name: "hostname", label: "Hostname of the copy", kind: "text" },
    { name: "bootTimeoutSeconds", label: "Boot timeout (s)", kind: "int" },
  ],
};

const show = (v: unknown): string =>
  v === null || v === undefined ? "—" : typeof v === "string" ? v : JSON.stringify(v);

export function SettingsCard(props: { serverId: string; kind: SettingsView["kind"]; editable: boolean }) {
  const url = `/api/v1/servers/${enc(props.serverId)}/settings/${props.kind}`;
  const view = usePoll((signal) => api<SettingsView>(url, { signal }), 0, [url]);
  const [editing, setEditing] = useState<Record<string, string> | null>(null);
  const [error, setError] = useState<Error | undefined>(undefined);
  const [busy, setBusy] = useState(false);
  const label = props.kind === "replication" ? "Replication settings" : "Launch settings";
  if (view.data === undefined)
    return <Card title={label}>{view.error ? <ErrorNote error={view.error} /> : <Loading />}</Card>;
  const v = view.data;
  const fields = FIELDS[props.kind];

  const save = async () => {
    if (editing === null) return;
    const patch: Record<string, unknown> = {};
    for (const f of fields) {
      const text = (editing[f.name] ?? "").trim();
      const before = Object.hasOwn(v.overrides, f.name) ? show(v.overrides[f.name]) : "";
      if (text === before || (text === "" && before === "—")) continue;
      if (text === "") patch[f.name] = null;
      else if (f.kind === "int") patch[f.name] = Number(text);
      else if (f.kind === "bandwidth") patch[f.name] = text === "unlimited" ? text : Number(text);
      else patch[f.name] = text;
    }
    setBusy(true);
    setError(undefined);
    try {
      if (Object.keys(patch).length > 0) await api(url, { method: "PUT", body: patch });
      setEditing(null);
      view.reload();
    } catch (err) {
      setError(err as Error);
    } finally {
      setBusy(false);
    }
  };

  const startEditing = () =>
    setEditing(
      Object.fromEntries(
        fields.map((f) => [f.name, Object.hasOwn(v.overrides, f.name) ? show(v.overrides[f.name]) : ""]),
      ),
    );

  return (
    <Card
      title={label}
      actions={
        props.editable && editing === null ? (
          <button type="button" class="btn btn-small" onClick={startEditing}>
            Edit
          </button>
        ) : undefined
      }
    >
      {editing === null ? (
        <dl class="kv">
          {Object.entries(v.settings)
            .filter(([, value]) => value !== null && !(Array.isArray(value) && value.length === 0))
            .flatMap(([k, value]) => [
              <dt key={`${k}-k`}>{k}</dt>,
              <dd key={`${k}-v`}>
                {show(value)} {v.sources[k] === "server" ? <Badge tone="info">this server</Badge> : null}
              </dd>,
            ])}
        </dl>
      ) : (
        <form
          class="form"
          onSubmit={(e) => {
            e.preventDefault();
            void save();
          }}
        >
          <p class="muted small">An empty field takes the value of the template.</p>
          {fields.map((f) => (
            <label class="field" key={f.name}>
              <span>{f.label}</span>
              {f.kind === "select" ? (
                <select
                  name={f.name}
                  value={editing[f.name] ?? ""}
                  onChange={(e) => setEditing({ ...editing, [f.name]: e.currentTarget.value })}
                >
                  <option value="">template ({show(v.settings[f.name])})</option>
                  {f.options!.map((o) => (
                    <option key={o} value={o}>
                      {o}
                    </option>
                  ))}
                </select>
              ) : (
                <input
                  name={f.name}
                  inputMode={f.kind === "int" ? "numeric" : undefined}
                  placeholder={`template: ${show(v.settings[f.name])}`}
                  value={editing[f.name] ?? ""}
                  onInput={(e) => setEditing({ ...editing, [f.name]: e.currentTarget.value })}
                />
              )}
            </label>
          ))}
          {error ? <ErrorNote error={error} /> : null}
          <div class="form-actions">
            <button type="button" class="btn" onClick={() => setEditing(null)} disabled={busy}>
              Cancel
            </button>
            <button type="submit" class="btn btn-primary" disabled={busy}>
              Save
            </button>
          </div>
        </form>
      )}
    </Card>
  );
}
