/**
 * The agent's small state files under D/state that it reads at start: the
 * disk generations it adopted and the wire session's resume token. A
 * missing or unsound file reads as nothing, never as an error: the agent
 * then starts afresh (a new session, generations from the control plane).
 */
import { promises as fs } from "node:fs";

/** Each disk's generation id (control/generations.ts: it changes at every recovery and failback). */
export type DiskGeneration = { index: number; generation: string };

/** D/state/generations.json: what the agent last adopted; none when it is missing or unsound. */
export async function readGenerations(file: string): Promise<DiskGeneration[]> {
  try {
    const v = JSON.parse(await fs.readFile(file, "utf8")) as unknown;
    return Array.isArray(v)
      ? v.filter(
          (g): g is DiskGeneration =>
            typeof (g as DiskGeneration).index === "number" &&
            typeof (g as DiskGeneration).generation === "string",
        )
      : [];
  } catch {
    return [];
  }
}

/** The resume token kept in D/state/session.json, if it is there and sound. */
export async function readSessionToken(file: string): Promise<string | undefined> {
  try {
    const v = (JSON.parse(await fs.readFile(file, "utf8")) as { resumeToken?: unknown }).resumeToken;
    return typeof v === "string" && /^[A-Za-z0-9_-]{16,64}$/.test(v) ? v : undefined;
  } catch {
    return undefined;
  }
}
