/**
 * copy: what a launch does inside a *launched copy* (the materialized disks
 * of a PIT, before a target boots them) so that a drill never connects as the
 * protected server nor talks to its production partners: the agent identity
 * is replaced by a *launched-copy marker*, the host is renamed and its
 * addresses mapped, and on request (*conversion*) the initramfs is
 * regenerated with the target profile's drivers. docs/launched-copy.md.
 */
export { prepareLaunchedCopy, type PrepareCopyOptions, type PreparedCopy } from "./prepare.js";
export type { Converted } from "./convert.js";
export { replaceAddresses, renameInHosts, type AddressMapping } from "./address-map.js";
