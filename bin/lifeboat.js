#!/usr/bin/env node
// The `lifeboat` command. The TypeScript sources are compiled to dist/ by
// `npm install` (the prepare script) or `npm run build`.
//
// CommonJS (bin/package.json), loaded with synchronous reads: libuv starts its
// thread pool at the first asynchronous file operation and reads
// UV_THREADPOOL_SIZE only then, and an ES module entry point is itself read
// through the pool, so setting the variable there comes too late. Repository
// writes fsync every object in the pool; with the default of 4 threads, reads
// of the disk being imported, and the replicator's reads of pages and packs,
// queue behind them.
"use strict";
process.env.UV_THREADPOOL_SIZE ??= "16";
// The S3 SDK warns once per process that its 2027 releases need Node 22; the
// pinned release runs on Node 20 and the runtime support is in the README.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
import("../dist/src/cli/main.js").then(
  async ({ main }) => {
    process.exitCode = await main(process.argv);
  },
  (err) => {
    process.exitCode = 1;
    throw err;
  },
);
