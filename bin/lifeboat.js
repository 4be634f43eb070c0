#!/usr/bin/env node
// The `lifeboat` command. The TypeScript sources are compiled to dist/ by
// `npm install` (the prepare script) or `npm run build`.
import { main } from "../dist/src/cli/main.js";

process.exitCode = await main(process.argv);
