import { X509Certificate, createHmac, randomBytes } from "node:crypto";
import { type Clock, LifeboatError } from "../base/index.js";
import type { Database, Webhook } from "./db/index.js";
import { latestEventSeq } from "./events.js";
import { newId } from "./secrets.js";

/**
 * Webhooks: URLs that get every event of the types they asked for, one POST
 * an event, signed with a secret the server made (shown once, at creation).
 * A new webhook starts at the newest event: it gets what happens from then
 * on. Delivery is webhook-delivery.ts.
 *
 * The signature (docs/metrics-and-events.md): header
 * `Lifeboat-Signature: t=<unix seconds>,v1=<hex>` where hex is
 * HMAC-SHA256, keyed with the secret's UTF-8 bytes, of `<t>.<raw body>`.
 */
export interface WebhookView {
  id: string;
  url: string;
  events: string[];
  /** Whether a CA (PEM) of its own is trusted instead of the system's. */
  customCa: boolean;
  createdAt: string;
  createdBy: string;
  /** The last event seq it delivered or skipped. */
  cursorSeq: number;
  /** Failed attempts at its next event (0 when the last attempt succeeded). */
  failures: number;
  nextAttemptAt: string;
  lastDeliveredAt: string | null;
  lastError: string | null;
}

export interface NewWebhook {
  url: string;
  /** Event types, or ["*"] (the default) for every type. */
  events?: string[];
  /** CA certificates (PEM) to trust for this URL instead of the system's. */
  caPem?: string;
  createdBy: string;
}

export const SIGNATURE_HEADER = "Lifeboat-Signature";

export function signBody(secret: string, unixSeconds: number, body: string): string {
  const mac = createHmac("sha256", Buffer.from(secret, "utf8"))
    .update(`${unixSeconds}.${body}`)
    .digest("hex");
  return `t=${unixSeconds},v1=${mac}`;
}

export async function createWebhook(
  database: Database,
  clock: Clock,
  input: NewWebhook,
): Promise<{ webhook: WebhookView; secret: string }> {
  const url = checkUrl(input.url);
  if (input.caPem !== undefined) checkCa(input.caPem);
  const secret = `whsec_${randomBytes(32).toString("base64url")}`;
  const now = clock.now();
  const row: Webhook = {
    id: newId("whk"),
    url,
    event_types_json: JSON.stringify(input.events?.length ? [...new Set(input.events)] : ["*"]),
    secret,
    ca_pem: input.caPem ?? null,
    created_at: now,
    created_by: input.createdBy,
    cursor_seq: await latestEventSeq(database),
    failures: 0,
    next_attempt_at: now,
    last_delivered_at: null,
    last_error: null,
  };
  await database.db.insertInto("webhooks").values(row).execute();
  return { webhook: webhookView(row), secret };
}

export async function listWebhooks(database: Database): Promise<WebhookView[]> {
  const rows = await database.db
    .selectFrom("webhooks")
    .selectAll()
    .orderBy("created_at")
    .orderBy("id")
    .execute();
  return rows.map(webhookView);
}

/** Removes a webhook; undefined when there is none with that id. */
export async function deleteWebhook(database: Database, id: string): Promise<WebhookView | undefined> {
  const row = await database.db.selectFrom("webhooks").selectAll().where("id", "=", id).executeTakeFirst();
  if (row === undefined) return undefined;
  await database.db.deleteFrom("webhooks").where("id", "=", id).execute();
  return webhookView(row);
}

export function webhookView(w: Webhook): WebhookView {
  const iso = (ms: number | null) => (ms === null ? null : new Date(Number(ms)).toISOString());
  return {
    id: w.id,
    url: w.url,
    events: JSON.parse(w.event_types_json) as string[],
    customCa: w.ca_pem !== null,
    createdAt: iso(w.created_at)!,
    createdBy: w.created_by,
    cursorSeq: Number(w.cursor_seq),
    failures: Number(w.failures),
    nextAttemptAt: iso(w.next_attempt_at)!,
    lastDeliveredAt: iso(w.last_delivered_at),
    lastError: w.last_error,
  };
}

/** The URL without its query and credentials: what logs and the audit log show. */
export function safeUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return "(invalid URL)";
  }
}

const LOOPBACK = new Set(["localhost", "127.0.0.1", "[::1]"]);

/** https:// anywhere; http:// only to this host's loopback (a local relay), where nothing crosses a network. */
function checkUrl(value: string): string {
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    throw invalidUrl(`${JSON.stringify(value)} is not a URL`);
  }
  if (u.protocol !== "https:" && !(u.protocol === "http:" && LOOPBACK.has(u.hostname)))
    throw invalidUrl(`${safeUrl(value)}: use https:// (http:// only to localhost)`);
  if (u.username || u.password) throw invalidUrl(`${safeUrl(value)}: credentials in the URL are not allowed`);
  return u.toString();
}

function invalidUrl(message: string): LifeboatError {
  return Object.assign(
    new LifeboatError("WEBHOOK_URL_INVALID", message, {
      hint: "give an https:// URL the control plane can reach (http:// only to localhost)",
    }),
    { statusCode: 400 },
  );
}

function checkCa(pem: string): void {
  try {
    new X509Certificate(pem);
  } catch (err) {
    throw Object.assign(
      new LifeboatError("WEBHOOK_CA_INVALID", "the webhook's CA is not a PEM certificate", {
        hint: "give the CA certificate that signed the receiver's certificate, in PEM",
        cause: err,
      }),
      { statusCode: 400 },
    );
  }
}
