import { createHmac } from "node:crypto";

/**
 * Object names in the backend. Block-map pages are named by a keyed hash of
 * their id, packs by a random id, both spread over 256 directories; PITs,
 * locks and GC state have plain names (they reveal only how many there are).
 * A chunk is not an object of its own: it lies in a pack, and its keyed name
 * (`chunks/…`) is what its encryption authenticates and what messages show.
 */
export const CONFIG_NAME = "config";
export const PREFIX = {
  chunks: "chunks/",
  packs: "packs/",
  pages: "pages/",
  pits: "pits/",
  heads: "heads/",
  locks: "locks/",
  trash: "trash/",
  gcState: "gc/",
} as const;

/** Where GC moves an unreferenced pack or page before it is deleted for good. */
export const trashName = (name: string) => `${PREFIX.trash}${name}`;

export function keyedName(namingKey: Buffer, prefix: string, id: Uint8Array): string {
  const h = createHmac("sha256", namingKey).update(id).digest("hex");
  return `${prefix}${h.slice(0, 2)}/${h}`;
}

export const pitName = (pitId: string) => `${PREFIX.pits}${pitId}`;

export function packName(packId: Uint8Array): string {
  const h = Buffer.from(packId).toString("hex");
  return `${PREFIX.packs}${h.slice(0, 2)}/${h}`;
}
