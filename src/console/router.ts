import { useEffect, useState } from "preact/hooks";

/**
 * Hash routes (`#/servers/web-1`): the server only ever serves `/`, so a
 * reload or a shared link never needs a server-side route.
 */
export function useRoute(): string[] {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const on = () => setHash(location.hash);
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return hash
    .replace(/^#\/?/, "")
    .split("/")
    .filter((p) => p !== "")
    .map((p) => decodeURIComponent(p));
}

export function href(...parts: string[]): string {
  return "#/" + parts.map((p) => encodeURIComponent(p)).join("/");
}

export function go(...parts: string[]): void {
  location.hash = href(...parts);
}
