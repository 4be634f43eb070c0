/**
 * The HTTP API reference (docs/api.md) as Markdown, generated from the
 * OpenAPI document the server serves at /api/v1/openapi.json, so that it
 * says what the routes validate. `npm run docs:api` writes it; a test fails
 * when it is out of date.
 */
interface Schema {
  type?: string | string[];
  properties?: Record<string, Schema>;
  required?: string[];
  items?: Schema;
  enum?: unknown[];
  description?: string;
}

interface Operation {
  summary?: string;
  description?: string;
  parameters?: { name: string; in: string; required?: boolean; schema?: Schema }[];
  requestBody?: { content?: Record<string, { schema?: Schema }> };
  responses?: Record<string, { description?: string; content?: Record<string, { schema?: Schema }> }>;
}

export interface OpenApiDocument {
  paths: Record<string, Record<string, Operation>>;
}

const METHODS = ["get", "post", "put", "patch", "delete"];

export function renderApiReference(doc: OpenApiDocument): string {
  const out: string[] = [
    "# HTTP API reference",
    "",
    "Generated from the OpenAPI document the server serves at `/api/v1/openapi.json`",
    "(`npm run docs:api`; a test fails when it is out of date). Operator routes take",
    "`Authorization: Bearer <API key>` (or the console's session cookie); agent and",
    "replicator routes need the client certificate issued at registration. Errors are",
    '`{"code", "message", "hint"}` with the codes of [errors.md](errors.md).',
    "",
  ];
  const paths = Object.keys(doc.paths).sort();
  const groups = new Map<string, string[]>();
  for (const p of paths) {
    const group = p.startsWith("/api/v1/") ? p.split("/")[3]! : "other";
    groups.set(group, [...(groups.get(group) ?? []), p]);
  }
  for (const [group, list] of groups) {
    out.push(`## ${group}`, "");
    for (const p of list) {
      for (const m of METHODS) {
        const op = doc.paths[p]![m];
        if (!op) continue;
        out.push(`### \`${m.toUpperCase()} ${p}\``, "");
        if (op.summary) out.push(op.summary, "");
        if (op.description) out.push(op.description, "");
        const params = op.parameters ?? [];
        if (params.length > 0) {
          out.push("| Parameter | In | Type | Required |", "| --- | --- | --- | --- |");
          for (const q of params)
            out.push(`| \`${q.name}\` | ${q.in} | ${typeOf(q.schema)} | ${q.required ? "yes" : ""} |`);
          out.push("");
        }
        const body = op.requestBody?.content?.["application/json"]?.schema;
        if (body?.properties && Object.keys(body.properties).length > 0) {
          out.push("Request body:", "", ...fieldTable(body), "");
        }
        const codes = Object.keys(op.responses ?? {}).sort();
        if (codes.length > 0) out.push(`Responses: ${codes.map((c) => `\`${c}\``).join(", ")}.`, "");
        const ok = op.responses?.["200"]?.content?.["application/json"]?.schema;
        if (ok?.properties && Object.keys(ok.properties).length > 0) {
          out.push("`200` body:", "", ...fieldTable(ok), "");
        }
      }
    }
  }
  return out.join("\n").trimEnd() + "\n";
}

function fieldTable(s: Schema): string[] {
  const required = new Set(s.required ?? []);
  const rows = ["| Field | Type | Required |", "| --- | --- | --- |"];
  for (const [name, f] of Object.entries(s.properties ?? {}))
    rows.push(`| \`${name}\` | ${typeOf(f)} | ${required.has(name) ? "yes" : ""} |`);
  return rows;
}

function typeOf(s: Schema | undefined): string {
  if (!s) return "";
  if (s.enum) return s.enum.map((v) => `\`${JSON.stringify(v)}\``).join(" \\| ");
  const t = Array.isArray(s.type) ? s.type.join(" \\| ") : (s.type ?? "any");
  return t === "array" && s.items ? `array of ${typeOf(s.items)}` : t;
}
