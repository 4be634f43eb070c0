/**
 * Lifeboat's version: what `lifeboat --version` prints and what an agent
 * names in its HELLO. It must equal package.json's (a test checks).
 */
export const LIFEBOAT_VERSION = "0.1.0";
