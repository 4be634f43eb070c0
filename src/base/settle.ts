/**
 * Like Promise.all, but rejects only once every promise has settled, with the
 * first rejection in order: nothing the caller started is still running when
 * it hears of a failure.
 */
export async function settleAll<T>(promises: readonly Promise<T>[]): Promise<T[]> {
  const results = await Promise.allSettled(promises);
  const failed = results.find((r) => r.status === "rejected");
  if (failed) throw failed.reason;
  return results.map((r) => (r as PromiseFulfilledResult<T>).value);
}
