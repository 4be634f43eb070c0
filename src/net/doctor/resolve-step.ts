import { TIMEOUT_ERRNO } from "./timeout.js";
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { type Outcome, fail, ok, warn } from "./step.js";
import { isPrivateAddress } from "./addresses.js";

export interface Resolved {
  outcome: Outcome;
  /** Every address the host has (the host itself when it is an address). */
  addresses: string[];
}

/**
 * Step 1: the endpoint's host through the system's resolver (hosts file, then
 * DNS, as the agent resolves it). Warns when a name that should be private
 * resolves to a public address: addresses of both kinds (some clients would
 * leave the private link), or public only while a private CA is pinned.
 * Through a proxy, a name this host cannot resolve is only a warning: the
 * proxy resolves it.
 */
export async function resolveStep(
  host: string,
  opts: { privateCa: boolean; viaProxy: boolean; timeoutMs: number },
): Promise<Resolved> {
  let addresses: string[];
  if (isIP(host)) addresses = [host];
  else {
    try {
      const found = await withTimeout(lookup(host, { all: true, verbatim: true }), opts.timeoutMs);
      addresses = [...new Set(found.map((a) => a.address))];
    } catch (err) {
      const code = (err as { code?: string }).code ?? "";
      const what = `${host}: ${code || (err as Error).message}`;
      if (opts.viaProxy)
        return {
          addresses: [],
          outcome: warn(
            what,
            "DOCTOR_DNS_FAILED",
            "This host cannot resolve the name, but the proxy does it for the API; the data path may need the name too: add it to /etc/hosts if the agent connects directly.",
          ),
        };
      return {
        addresses: [],
        outcome: fail(
          what,
          "DOCTOR_DNS_FAILED",
          `The name does not resolve here: add "ADDRESS ${host}" to /etc/hosts (a locked-down host often has no DNS), or use the address in the endpoint if the server's certificate names it.`,
        ),
      };
    }
  }
  const priv = addresses.filter(isPrivateAddress);
  const pub = addresses.filter((a) => !isPrivateAddress(a));
  const value = addresses.map((a) => `${a} (${isPrivateAddress(a) ? "private" : "public"})`).join(", ");
  if (priv.length > 0 && pub.length > 0)
    return {
      addresses,
      outcome: warn(
        value,
        "DOCTOR_DNS_PUBLIC",
        `${host} resolves to private and public addresses: a client may leave the private link. Make the name resolve to the recovery site's private address only (split DNS, or /etc/hosts).`,
      ),
    };
  if (pub.length > 0 && opts.privateCa)
    return {
      addresses,
      outcome: warn(
        value,
        "DOCTOR_DNS_PUBLIC",
        `${host} resolves to public addresses only, while the server's CA is Lifeboat's private one: the recovery site is normally reached over a private link. Check the name (split DNS, /etc/hosts) unless the site is meant to be public.`,
      ),
    };
  return { addresses, outcome: ok(isIP(host) ? `${value}, an address: no lookup` : value) };
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(Object.assign(new Error(`no answer in ${ms} ms`), { code: TIMEOUT_ERRNO })),
        ms,
      );
    }),
  ]);
}
