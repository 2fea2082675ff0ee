// Settles a conditional write whose answer was lost (a member died or hung mid-request, the
// connection broke): did it commit or not? Retrying it blindly is wrong both ways: if it did
// commit, a retried create or compare-and-swap reports a false conflict and the caller's
// read-modify-write loop applies its change a second time (an IPAM block or address claimed
// twice); if it did not, giving up fails a request that another member could have served.
//
// The answer is read from the store's history, never guessed:
// - If every condition of the write still holds now, it has not committed. It may still commit
//   late (a proposal in flight), so the caller may send it again only with the same conditions:
//   at most one of the two can then commit, and a lost re-send is settled here again.
// - Otherwise find the first change of one key the write writes (the witness) after the last
//   revision at which the write could not yet have committed: the key's expected revision for a
//   compare-and-swap, or the newest revision the client saw before sending for a create. Had the
//   write committed, it made that change (its conditions forbid any change in between), so the
//   write committed if and only if at that revision every key it writes holds exactly what it
//   wrote. A different writer's byte-identical write at that revision is indistinguishable, and
//   harmless in the store; callers whose values must be told apart carry their own identity in
//   them (IPAM owner records carry node, handle and allocation time). A key a create made and
//   another writer deleted again before the read-back looks never created (the window is one
//   request; the create is then sent again).
//
// Pure over a HistoryReader, so the decision is unit-tested against an in-memory history.
import { compareRevisions, type TxnOp } from './datastore';

/** A key's state at some revision; undefined: absent. */
export interface KeyState {
  readonly value: string;
  readonly modRevision: string;
  readonly createRevision: string;
}

export interface Snapshot {
  /** The store revision the states were read at. */
  readonly revision: string;
  /** By key. */
  readonly states: ReadonlyMap<string, KeyState | undefined>;
}

export interface HistoryReader {
  /** The keys' states at `revision`, or now when omitted; all at one store revision. */
  read(keys: readonly string[], revision?: string): Promise<Snapshot>;
}

export type WriteOutcome =
  /** The write committed at `revision`. */
  | { readonly kind: 'applied'; readonly revision: string }
  /** Not committed, every condition still holds: it may be sent again with the same conditions. */
  | { readonly kind: 'not-applied' }
  /** Not committed and it never will: a condition no longer holds (the normal "lost the race"). */
  | { readonly kind: 'conflict' };

/** `sentAfter`: a store revision seen before the write was first sent (a lower bound of the
 * revision it would commit at). */
export async function resolveOutcome(ops: readonly TxnOp[], sentAfter: string, reader: HistoryReader): Promise<WriteOutcome> {
  const keys = ops.map((op) => op.key);
  const now = await reader.read(keys);
  if (conditionsHold(ops, now.states)) return { kind: 'not-applied' };
  const w = witness(ops, sentAfter);
  // Only unconditional deletes: nothing to witness by, and deleting again changes nothing that
  // the first attempt would not have.
  if (w === undefined) return { kind: 'not-applied' };
  const changed = await firstChange(w.key, w.after, now, reader);
  if (changed === undefined) return { kind: 'conflict' };
  const atChange = await reader.read(keys, changed);
  return wroteExactly(ops, atChange.states, changed) ? { kind: 'applied', revision: changed } : { kind: 'conflict' };
}

/** Would the write's conditions pass against these states? An unconditional delete of a key that
 * is gone is not counted as passing: the first attempt may be what removed it. */
export function conditionsHold(ops: readonly TxnOp[], states: ReadonlyMap<string, KeyState | undefined>): boolean {
  return ops.every((op) => {
    const s = states.get(op.key);
    switch (op.type) {
      case 'create':
        return s === undefined;
      case 'update':
      case 'check':
        return s !== undefined && s.modRevision === op.revision;
      case 'delete':
        return s !== undefined && (op.revision === undefined || s.modRevision === op.revision);
    }
    return false;
  });
}

/** The key whose first change after `after` would be the write's own, had it committed. A
 * written key conditioned on its revision is the tightest; a create's bound is `sentAfter`. */
export function witness(ops: readonly TxnOp[], sentAfter: string): { key: string; after: string } | undefined {
  const update = ops.find((op) => op.type === 'update');
  if (update?.type === 'update') return { key: update.key, after: update.revision };
  const create = ops.find((op) => op.type === 'create');
  if (create !== undefined) return { key: create.key, after: sentAfter };
  const del = ops.find((op) => op.type === 'delete' && op.revision !== undefined);
  if (del?.type === 'delete' && del.revision !== undefined) return { key: del.key, after: del.revision };
  return undefined;
}

/** At `revision`, does every key the write writes hold what it wrote, written at that revision? */
export function wroteExactly(ops: readonly TxnOp[], states: ReadonlyMap<string, KeyState | undefined>, revision: string): boolean {
  return ops.every((op) => {
    const s = states.get(op.key);
    switch (op.type) {
      case 'create':
        // A create makes the key anew: one that existed before was never ours.
        return s !== undefined && s.createRevision === revision && s.value === op.value;
      case 'update':
        return s !== undefined && s.modRevision === revision && s.value === op.value;
      case 'delete':
        return s === undefined;
      case 'check':
        return true;
    }
    return false;
  });
}

/** The first revision in (after, now.revision] at which `key` differs from its state at `after`,
 * by bisection over reads at past revisions; undefined if it did not change. */
export async function firstChange(key: string, after: string, now: Snapshot, reader: HistoryReader): Promise<string | undefined> {
  const at = async (revision: bigint): Promise<KeyState | undefined> =>
    (await reader.read([key], revision.toString())).states.get(key);
  const lo0 = BigInt(after);
  const hi0 = BigInt(now.revision);
  if (compareRevisions(after, now.revision) >= 0) return undefined;
  const base = lo0 === 0n ? undefined : await at(lo0);
  const same = (s: KeyState | undefined): boolean => s?.modRevision === base?.modRevision;
  if (same(now.states.get(key))) return undefined;
  // Invariant: unchanged at lo, changed at hi.
  let lo = lo0;
  let hi = hi0;
  while (hi - lo > 1n) {
    const mid = lo + (hi - lo) / 2n;
    if (same(await at(mid))) lo = mid;
    else hi = mid;
  }
  return hi.toString();
}
