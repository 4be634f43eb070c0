#!/usr/bin/env node
// The `lifeboat` command. The TypeScript sources are compiled to dist/ by
// `npm install` (the prepare script) or `npm run build`.
//
// Repository writes fsync every object in libuv's thread pool; with the
// default of 4 threads, reads of the disk being imported queue behind them.
process.env.UV_THREADPOOL_SIZE ??= "16";
// The S3 SDK warns once per process that its 2027 releases need Node 22; the
// pinned release runs on Node 20 and the runtime support is in the README.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
const { main } = await import("../dist/src/cli/main.js");

process.exitCode = await main(process.argv);
