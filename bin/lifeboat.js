#!/usr/bin/env node
// The `lifeboat` command. The TypeScript sources are compiled to dist/ by
// `npm install` (the prepare script) or `npm run build`.
//
// Repository writes fsync every object in libuv's thread pool; with the
// default of 4 threads, reads of the disk being imported queue behind them.
process.env.UV_THREADPOOL_SIZE ??= "16";
const { main } = await import("../dist/src/cli/main.js");

process.exitCode = await main(process.argv);
