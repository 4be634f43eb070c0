/**
 * Browser tests drive Debian's Chromium (`apt-get install chromium`, which
 * .ci/run does) with playwright-core: no browser is downloaded. Missing, the
 * tests skip with the reason, except under LIFEBOAT_TEST_STRICT=1 (CI), where
 * they fail. Screenshots go to test-artifacts/console/ (gitignored).
 */
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { type Browser, type Page, chromium } from "playwright-core";
import { strictCapabilities } from "../support/capabilities.js";

export const CHROMIUM = "/usr/bin/chromium";
export const ARTIFACTS = path.resolve(import.meta.dirname, "..", "..", "..", "test-artifacts", "console");

/** Why the browser tests cannot run here, or null; throws under LIFEBOAT_TEST_STRICT=1. */
export function chromiumMissing(): string | null {
  if (existsSync(CHROMIUM)) return null;
  const reason = `${CHROMIUM} is not installed (apt-get install chromium)`;
  if (strictCapabilities) throw new Error(`missing capability under LIFEBOAT_TEST_STRICT=1: ${reason}`);
  return reason;
}

export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless=new",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-default-apps",
      "--disable-extensions",
      "--disable-sync",
      "--no-first-run",
      "--metrics-recording-only",
      "--mute-audio",
    ],
  });
}

/** Saves a screenshot (the whole page unless `fullPage` is false) as test-artifacts/console/NAME.png. */
export async function shot(page: Page, name: string, fullPage = true): Promise<string> {
  await mkdir(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage });
  return file;
}
