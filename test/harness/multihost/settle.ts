// Parallel steps that create things: wait for all of them before reporting a failure, so that
// teardown never starts while a sibling step is still creating something it would then miss.

/** Like Promise.all, but settles every promise before rejecting with the first error. */
export async function allSettledOrThrow<T extends readonly unknown[]>(promises: { readonly [K in keyof T]: Promise<T[K]> }): Promise<T> {
  const settled = await Promise.allSettled(promises);
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed !== undefined) throw failed.reason;
  return settled.map((r) => (r as PromiseFulfilledResult<unknown>).value) as unknown as T;
}
