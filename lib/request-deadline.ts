// The time by which the plugin request being served must be answered, carried through everything
// it awaits (AsyncLocalStorage, as Go carries a context). A request that waits for a turn in a
// queue and then for the datastore is bounded as a whole: with a per-operation bound only, N
// address requests queued behind a hung etcd would fail one bound apart, the last after N bounds.
//
// Only the datastore client and the allocator's queue read it. A deadline outlives its request
// only in work the request started and did not await (a timer, an event stream): once the request
// is answered its deadline no longer applies, and such work should be started outsideRequest().
import { AsyncLocalStorage } from 'node:async_hooks';

export interface RequestDeadline {
  /** Epoch milliseconds. */
  readonly at: number;
  /** The whole request's allowance (for messages). */
  readonly budgetMs: number;
}

interface Scope extends RequestDeadline {
  answered: boolean;
}

const current = new AsyncLocalStorage<Scope>();

/** Runs a request's handler with a deadline `budgetMs` from now. */
export async function withRequestDeadline<T>(budgetMs: number, handle: () => Promise<T>): Promise<T> {
  const scope: Scope = { at: Date.now() + budgetMs, budgetMs, answered: false };
  try {
    return await current.run(scope, handle);
  } finally {
    scope.answered = true;
  }
}

/** The deadline of the request being served, if any (and not yet answered). */
export function requestDeadline(): RequestDeadline | undefined {
  const scope = current.getStore();
  return scope === undefined || scope.answered ? undefined : scope;
}

/** Runs `start` outside any request: for background work a request starts and does not await. */
export function outsideRequest<T>(start: () => T): T {
  return current.exit(start);
}
