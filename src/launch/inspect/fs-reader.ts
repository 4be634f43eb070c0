/**
 * Reading files out of a filesystem inside an untrusted image. Paths are
 * absolute within that filesystem; symbolic links are followed only inside it
 * (an absolute link target is taken from the filesystem's root), at most
 * MAX_LINKS deep. Nothing is executed from the image and nothing is written.
 */
export interface FsReader {
  /**
   * The file's bytes; null when it does not exist or is not a regular file.
   * Throws LAUNCH_FILE_TOO_LARGE when it is bigger than `maxBytes`.
   */
  readFile(path: string, maxBytes: number): Promise<Buffer | null>;
  /** The entries of a directory (without . and ..), or null when it is not one. */
  list(path: string): Promise<DirEntry[] | null>;
  close(): Promise<void>;
}

export interface DirEntry {
  name: string;
  kind: "file" | "dir" | "symlink" | "other";
  size: number;
}

export const MAX_LINKS = 16;
/** The most directory entries we take from one listing. */
export const MAX_DIR_ENTRIES = 10000;

/** Joins a link target to the directory holding the link, inside the filesystem. */
export function resolveLink(linkPath: string, target: string): string {
  const base = target.startsWith("/") ? [] : linkPath.split("/").slice(0, -1);
  const parts = [...base, ...target.split("/")];
  const out: string[] = [];
  for (const p of parts) {
    if (p === "" || p === ".") continue;
    if (p === "..") out.pop();
    else out.push(p);
  }
  return `/${out.join("/")}`;
}

/** A path we hand to a tool: absolute, normalised, and made of harmless characters only. */
export function safePath(path: string): string | null {
  const norm = resolveLink("/", path);
  return /^[A-Za-z0-9/._+@,:~-]+$/.test(norm) ? norm : null;
}
