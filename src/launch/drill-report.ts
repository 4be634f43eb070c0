import path from "node:path";
import { writeFileAtomic } from "../base/index.js";
import type { Problem } from "./inspect/index.js";

/** One step of a launch, as the report lists it. */
export interface ReportStep {
  name: string;
  startedAt: string;
  seconds: number;
  ok: boolean;
  message: string;
}

export interface ReportCheck {
  name: string;
  ok: boolean;
  message: string;
}

/**
 * What one server's launch did, for auditors: the PIT and its age, its
 * consistency level, readiness, each step's duration, the measured recovery
 * time (job start to the target's success), and the checks that passed. The
 * JSON (`report.json`) is the contract; `report.html` is the same for people.
 */
export interface DrillReport {
  format: 1;
  jobId: string;
  jobType: string;
  server: { id: string; name: string };
  pit: { id: string; time: string; ageSeconds: number; consistency: string };
  target: string;
  profile: string;
  readiness: { ready: boolean; verdict: string; problems: Problem[] } | null;
  steps: ReportStep[];
  checks: ReportCheck[];
  /** Seconds from the job's start to the target's success; null when it did not succeed. */
  recoverySeconds: number | null;
  outcome: "succeeded" | "failed" | "terminated";
  error: { code: string; message: string } | null;
  outputs: { images: string[]; manifest: string | null };
  changes: string[];
  startedAt: string;
  finishedAt: string;
}

/** Writes report.json and report.html into `dir`; returns their paths. */
export async function writeDrillReport(dir: string, r: DrillReport): Promise<{ json: string; html: string }> {
  const json = path.join(dir, "report.json");
  const html = path.join(dir, "report.html");
  await writeFileAtomic(json, `${JSON.stringify(r, null, 2)}\n`, { mode: 0o600 });
  await writeFileAtomic(html, renderHtml(r), { mode: 0o600 });
  return { json, html };
}

const esc = (s: string) =>
  s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);

function age(seconds: number): string {
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172_800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86_400).toFixed(1)} days`;
}

function renderHtml(r: DrillReport): string {
  const row = (k: string, v: string) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`;
  const mark = (ok: boolean) => (ok ? `<span class="ok">passed</span>` : `<span class="bad">failed</span>`);
  const title = `${r.jobType === "recovery" ? "Recovery" : "Drill"} of ${r.server.name}: ${r.outcome}`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#1b1f24;padding:0 1rem}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;width:100%}th,td{text-align:left;padding:.3rem .6rem;border-bottom:1px solid #ddd;vertical-align:top}
th{width:14rem;font-weight:600}.ok{color:#116329;font-weight:600}.bad{color:#b3261e;font-weight:600}code{font-size:90%}
</style></head><body>
<h1>${esc(title)}</h1>
<table>
${row("Job", `${r.jobId} (${r.jobType})`)}
${row("Server", `${r.server.name} (${r.server.id})`)}
${row("Point in time", `${r.pit.time} — ${age(r.pit.ageSeconds)} old at launch (PIT ${r.pit.id})`)}
${row("Consistency", r.pit.consistency)}
${row("Target", `${r.target}, boot profile ${r.profile}`)}
${row("Readiness", r.readiness ? `${r.readiness.ready ? "ready" : "not ready"}: ${r.readiness.verdict}` : "not inspected")}
${row("Recovery time", r.recoverySeconds === null ? "—" : `${r.recoverySeconds.toFixed(1)} s`)}
${row("Started", r.startedAt)}
${row("Finished", r.finishedAt)}
${r.error ? row("Error", `[${r.error.code}] ${r.error.message}`) : ""}
</table>
<h2>Steps</h2>
<table><tr><th>Step</th><th>Seconds</th><th>Result</th><th>Detail</th></tr>
${r.steps.map((s) => `<tr><td>${esc(s.name)}</td><td>${s.seconds.toFixed(1)}</td><td>${mark(s.ok)}</td><td>${esc(s.message)}</td></tr>`).join("\n")}
</table>
<h2>Checks</h2>
<table><tr><th>Check</th><th>Result</th><th>Detail</th></tr>
${r.checks.map((c) => `<tr><td>${esc(c.name)}</td><td>${mark(c.ok)}</td><td>${esc(c.message)}</td></tr>`).join("\n")}
</table>
${
  r.readiness && r.readiness.problems.length > 0
    ? `<h2>Readiness problems</h2><ul>${r.readiness.problems.map((p) => `<li><strong>${esc(p.severity)}</strong> <code>${esc(p.code)}</code>: ${esc(p.message)}<br>Fix: ${esc(p.remedy)}</li>`).join("")}</ul>`
    : ""
}
${r.changes.length > 0 ? `<h2>Changes made in the launched copy</h2><ul>${r.changes.map((c) => `<li>${esc(c)}</li>`).join("")}</ul>` : ""}
<h2>Outputs</h2><ul>${[...r.outputs.images, ...(r.outputs.manifest ? [r.outputs.manifest] : [])].map((o) => `<li><code>${esc(o)}</code></li>`).join("")}</ul>
</body></html>
`;
}
