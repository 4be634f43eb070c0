import { versionUnsupported } from "./errors.js";

/** Protocol versions this release speaks. A release adds the next and keeps the previous, so adjacent releases meet. */
export const PROTOCOL_VERSIONS: readonly number[] = [1];

/** The highest version both sides speak; WIRE_VERSION_UNSUPPORTED when there is none. */
export function chooseVersion(ours: readonly number[], theirs: readonly number[]): number {
  const common = theirs.filter((v) => ours.includes(v));
  if (common.length === 0) throw versionUnsupported(ours, theirs);
  return Math.max(...common);
}
