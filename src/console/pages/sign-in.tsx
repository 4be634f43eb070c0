import { useState } from "preact/hooks";
import { ApiError, api } from "../api.js";
import type { Session } from "../types.js";

export function SignIn(props: { onSignedIn: (s: Session) => void }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState<string | undefined>(undefined);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      props.onSignedIn(
        await api<Session>("/api/v1/session", { method: "POST", body: { apiKey: key.trim() } }),
      );
    } catch (err) {
      setError(err instanceof ApiError ? `${err.message}. ${err.hint}` : String(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <div class="signin">
      <form class="signin-card" onSubmit={(e) => void submit(e)}>
        <div class="brand brand-large">
          <span class="brand-mark" aria-hidden="true" />
          Lifeboat
        </div>
        <p class="muted">
          Sign in with an API key. The key is sent once; the console keeps a session cookie.
        </p>
        <label class="field">
          <span>API key</span>
          <input
            name="apiKey"
            type="password"
            autocomplete="off"
            spellcheck={false}
            placeholder="key_…"
            value={key}
            onInput={(e) => setKey(e.currentTarget.value)}
            required
          />
        </label>
        {error !== undefined ? (
          <div class="note note-bad" role="alert">
            {error}
          </div>
        ) : null}
        <button type="submit" class="btn btn-primary btn-block" disabled={busy || key.trim() === ""}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
        <p class="muted small">
          The first admin key is in <code>admin-api.key</code> in the server's data directory.
        </p>
      </form>
    </div>
  );
}
