// The one bounded compare-and-swap loop. Every read-modify-write of shared data (IPAM blocks,
// node records, profiles, endpoint labels) runs through casLoop: an attempt reads, decides and
// writes conditionally; a lost condition returns RETRY and the attempt runs again on fresh reads.
// After a few straight losses the next attempt waits a random moment, so writers that keep
// colliding spread out instead of colliding again in lockstep; past the budget the caller gets the
// typed ContentionError instead of a loop that never ends.
import { ContentionError } from '../lib/errors';
import type { Datastore, KeyValue } from './datastore';

/** Returned by an attempt whose conditional write lost (or that read a state it cannot trust). */
export const RETRY = Symbol('retry');
export type Attempt<T> = T | typeof RETRY;

/** Conflicts tolerated per operation by default: each one means another writer made progress. */
export const DEFAULT_MAX_CONFLICTS = 100;
const BACKOFF_AFTER = 3;
const MAX_BACKOFF_MS = 50;

export interface CasOptions {
  /** Conflicts tolerated before ContentionError (attempts = maxConflicts + 1). */
  readonly maxConflicts?: number;
  /** Told of every lost attempt (retry statistics). */
  readonly onConflict?: () => void;
}

export async function casLoop<T>(what: string, attempt: () => Promise<Attempt<T>>, options: CasOptions = {}): Promise<T> {
  const maxConflicts = options.maxConflicts ?? DEFAULT_MAX_CONFLICTS;
  for (let conflicts = 0; ; conflicts++) {
    const result = await attempt();
    if (result !== RETRY) return result;
    options.onConflict?.();
    if (conflicts >= maxConflicts) {
      throw new ContentionError(
        `${what}: gave up after ${conflicts + 1} attempts, other writers kept changing the same data; try again`,
      );
    }
    if (conflicts + 1 >= BACKOFF_AFTER) await sleep(Math.random() * Math.min(MAX_BACKOFF_MS, 2 ** conflicts));
  }
}

export type ModifyOutcome = 'created' | 'updated' | 'unchanged';

/** Read-modify-write of one key. `change` gets the current entry (undefined when absent) and
 * returns the value to store, or undefined to leave the key as it is. */
export function modifyKey(
  store: Datastore,
  key: string,
  what: string,
  change: (current: KeyValue | undefined) => string | undefined,
  options?: CasOptions,
): Promise<ModifyOutcome> {
  return casLoop(
    what,
    async (): Promise<Attempt<ModifyOutcome>> => {
      const current = await store.get(key);
      const value = change(current);
      if (value === undefined || value === current?.value) return 'unchanged';
      if (current === undefined) return (await store.create(key, value)) === undefined ? RETRY : 'created';
      return (await store.update(key, value, current.revision)) === undefined ? RETRY : 'updated';
    },
    options,
  );
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
