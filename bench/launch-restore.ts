/**
 * One timed Lifeboat restore for the launch benchmark (bench/launch.ts), in
 * a process of its own so that GNU time sees its peak RSS alone:
 *
 *   node dist/bench/launch-restore.js --how export|materialize --repo R --key-file K
 *        --server S --out DIR [--lib DIST]
 *
 * `export` runs exportDisk for every disk of the server's latest PIT at once,
 * sharing one worker pool (DIR/disk-<i>.img); `materialize` runs the launch
 * job's materializePit (images, their SHA-256 and the manifest in DIR).
 * `--lib` takes the store from another build's dist/ (an older commit, for a
 * before/after figure; export only). Prints one JSON line: seconds spent in
 * the call, seconds spent loading modules, the image files.
 */
import path from "node:path";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    how: { type: "string" },
    repo: { type: "string" },
    "key-file": { type: "string" },
    server: { type: "string" },
    out: { type: "string" },
    lib: { type: "string" },
  },
});
const how = values.how;
if ((how !== "export" && how !== "materialize") || !values.repo || !values.server || !values.out)
  throw new Error(
    "usage: launch-restore.js --how export|materialize --repo R --key-file K --server S --out DIR",
  );
const dist = values.lib ? path.resolve(values.lib) : path.resolve(import.meta.dirname, "..");

type Store = typeof import("../src/store/index.js");

const loadStart = performance.now();
const store = (await import(path.join(dist, "src/store/index.js"))) as Store;
const launch = how === "materialize" ? await import("../src/launch/index.js") : undefined;
const loadSeconds = (performance.now() - loadStart) / 1000;

const repo = await store.openRepository(values.repo, { keyFile: values["key-file"] });
const pit = await store.resolvePit(repo, "latest", values.server);
const start = performance.now();
let files: string[];
if (launch) {
  const { disks } = await launch.materializePit(repo, pit, values.out, "bench");
  files = disks.map((d) => d.path);
} else {
  files = pit.disks.map((d) => path.join(values.out as string, `disk-${d.index}.img`));
  // Older builds have no pool option: there, each export starts its own.
  const pool =
    "WorkerPool" in store ? new store.WorkerPool(repo.keys, repo.config.compression.level) : undefined;
  try {
    await Promise.all(pit.disks.map((d, i) => store.exportDisk(repo, pit, d.index, files[i]!, { pool })));
  } finally {
    await pool?.close();
  }
}
const seconds = (performance.now() - start) / 1000;
await repo.close();
console.log(JSON.stringify({ how, seconds, loadSeconds, files }));
