/**
 * replicator: the recovery site's receiving end. Agents' replication streams
 * (wire/) are applied to their servers' replicas in the repository (store/):
 * whole blocks and patches with group commit into each server's head, and
 * consistency points turned into PITs.
 */
export { ReplicaApplier, type ReplicaDisk } from "./applier.js";
export { type IncomingMessage, ReplicaStream, type ReplicaStreamOptions } from "./replica-stream.js";
export { Replicator, type ReplicatorOptions } from "./service.js";
