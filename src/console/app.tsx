import { useEffect, useState } from "preact/hooks";
import { ApiError, SIGNED_OUT_EVENT, api } from "./api.js";
import { Badge, Loading } from "./components/ui.js";
import { type LiveState, useLiveState, useLiveStream } from "./live.js";
import { EventsPage } from "./pages/events.js";
import { JobPage } from "./pages/job.js";
import { JobsPage } from "./pages/jobs.js";
import { FailbacksPage } from "./pages/failbacks.js";
import { ReplicatorsPage } from "./pages/replicators.js";
import { ServerPage } from "./pages/server.js";
import { ServersPage } from "./pages/servers.js";
import { SignIn } from "./pages/sign-in.js";
import { TokensPage } from "./pages/tokens.js";
import { href, useRoute } from "./router.js";
import type { Role, Session } from "./types.js";

/** admin > operator > viewer, as the API ranks them. */
export function can(session: Session, least: Role): boolean {
  const rank: Record<Role, number> = { viewer: 0, operator: 1, admin: 2 };
  return rank[session.role] >= rank[least];
}

export function App() {
  const [session, setSession] = useState<Session | null | undefined>(undefined);
  useEffect(() => {
    api<Session>("/api/v1/session")
      .then(setSession)
      .catch((err: unknown) => {
        if (err instanceof ApiError && err.status === 401) setSession(null);
        else setSession(null);
      });
    const out = () => setSession(null);
    window.addEventListener(SIGNED_OUT_EVENT, out);
    return () => window.removeEventListener(SIGNED_OUT_EVENT, out);
  }, []);
  if (session === undefined) return <Loading />;
  if (session === null) return <SignIn onSignedIn={setSession} />;
  return <Shell session={session} onSignedOut={() => setSession(null)} />;
}

const NAV: { path: string; label: string; least?: Role }[] = [
  { path: "servers", label: "Servers" },
  { path: "jobs", label: "Jobs" },
  { path: "replicators", label: "Replicators" },
  { path: "failbacks", label: "Failbacks" },
  { path: "tokens", label: "Tokens", least: "admin" },
  { path: "events", label: "Events & audit" },
];

const LIVE_TEXT: Record<LiveState, { label: string; title: string }> = {
  live: { label: "Live", title: "Updates arrive as they happen (event stream connected)" },
  connecting: { label: "Connecting", title: "Opening the event stream" },
  down: { label: "Polling", title: "The event stream is down: pages refresh every few seconds" },
};

/** Whether the event stream is up: pages update as things happen, or poll while it is down. */
function LiveIndicator() {
  const state = useLiveState();
  const t = LIVE_TEXT[state];
  return (
    <span id="live" class={`stream stream-${state}`} data-live={state} title={t.title}>
      <span class="stream-dot" aria-hidden="true" />
      {t.label}
    </span>
  );
}

function Shell(props: { session: Session; onSignedOut: () => void }) {
  const route = useRoute();
  const [page = "servers", id] = route;
  useLiveStream();
  const s = props.session;
  const signOut = async () => {
    try {
      await api("/api/v1/session", { method: "DELETE" });
    } finally {
      props.onSignedOut();
    }
  };
  return (
    <div class="shell">
      <header class="topbar">
        <a class="brand" href={href("servers")}>
          <span class="brand-mark" aria-hidden="true" />
          Lifeboat
        </a>
        <nav class="nav">
          {NAV.filter((n) => n.least === undefined || can(s, n.least)).map((n) => (
            <a key={n.path} href={href(n.path)} class={page === n.path ? "active" : ""}>
              {n.label}
            </a>
          ))}
        </nav>
        <div class="who">
          <LiveIndicator />
          <span class="who-name" title={`API key ${s.keyId}`}>
            {s.name}
          </span>
          <Badge tone={s.role === "viewer" ? "muted" : "info"}>{s.role}</Badge>
          <button type="button" class="btn btn-ghost" onClick={() => void signOut()}>
            Sign out
          </button>
        </div>
      </header>
      <main class="main">
        {page === "servers" && id === undefined ? <ServersPage /> : null}
        {page === "servers" && id !== undefined ? <ServerPage id={id} session={s} /> : null}
        {page === "jobs" && id === undefined ? <JobsPage /> : null}
        {page === "jobs" && id !== undefined ? <JobPage id={id} session={s} /> : null}
        {page === "replicators" ? <ReplicatorsPage /> : null}
        {page === "failbacks" ? <FailbacksPage session={s} /> : null}
        {page === "tokens" ? <TokensPage session={s} /> : null}
        {page === "events" ? <EventsPage /> : null}
      </main>
    </div>
  );
}
