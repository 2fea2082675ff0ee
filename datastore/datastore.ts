// The one datastore interface every backend implements (embedded file store, etcd v3, and the
// daemon's store socket used by calicoctl). Keys are '/'-separated strings; values are UTF-8
// strings (JSON documents at the layers above). Revisions are decimal strings, as etcd reports
// them (int64 does not fit a JS number); compare them with compareRevisions().
//
// Conflicts are normal outcomes, not exceptions: create() of an existing key and update()/delete()
// with a stale revision return undefined/false. Backend failures throw DatastoreUnavailableError.

export interface KeyValue {
  readonly key: string;
  readonly value: string;
  /** Revision of the last write to this key (etcd mod_revision). */
  readonly revision: string;
}

export type WatchEvent =
  | { readonly type: 'put'; readonly key: string; readonly value: string; readonly revision: string }
  | { readonly type: 'delete'; readonly key: string; readonly revision: string };

export interface WatchOptions {
  /** Deliver every event after this store revision (exclusive). Omitted: only future events. */
  readonly afterRevision?: string;
}

export interface Watch {
  /** Stop watching. Idempotent. */
  close(): Promise<void>;
}

export interface WatchHandlers {
  onEvent(event: WatchEvent): void;
  /** The watch broke (connection lost, history compacted) and will deliver nothing more. The
   * caller must resync from list() and start a new watch. */
  onError(err: Error): void;
}

/** One step of an atomic commit(). Every condition must hold for anything to be written. */
export type TxnOp =
  /** Write key; it must be absent. */
  | { readonly type: 'create'; readonly key: string; readonly value: string }
  /** Write key; it must exist at `revision`. */
  | { readonly type: 'update'; readonly key: string; readonly value: string; readonly revision: string }
  /** Delete key: with `revision`, it must exist at that revision; without, no condition (an
   * absent key is fine). */
  | { readonly type: 'delete'; readonly key: string; readonly revision?: string }
  /** Write nothing; key must still exist at `revision` (e.g. the pool a new block belongs to). */
  | { readonly type: 'check'; readonly key: string; readonly revision: string };

/** Most operations one commit() may hold (etcd refuses more than 128 by default). */
export const MAX_TXN_OPS = 64;

export interface ListResult {
  readonly items: KeyValue[];
  /** Store revision the listing is consistent with; pass to watch() to miss nothing. */
  readonly revision: string;
}

export interface Datastore {
  /** Names the store in messages: `etcd at http://...`, `embedded store in /var/lib/...`. */
  readonly description: string;
  get(key: string): Promise<KeyValue | undefined>;
  /** All keys starting with prefix, sorted by key. */
  list(prefix: string): Promise<ListResult>;
  /** Create key if absent. Returns the new entry, or undefined if the key already exists. */
  create(key: string, value: string): Promise<KeyValue | undefined>;
  /** Compare-and-swap: write only if the key's revision is still `revision`. Returns the new entry,
   * or undefined on conflict (key changed or deleted meanwhile). */
  update(key: string, value: string, revision: string): Promise<KeyValue | undefined>;
  /** Delete key. With `revision`, only if unchanged since then. Returns false if the key was absent
   * or the revision did not match. */
  delete(key: string, revision?: string): Promise<boolean>;
  /** Atomic multi-key write: every op's condition holds and all writes happen at one store
   * revision (returned; every written key gets it), or nothing is written and the result is
   * undefined. Keys must be distinct; 1 to MAX_TXN_OPS ops. Watchers see the writes as events
   * of that one revision. */
  commit(ops: readonly TxnOp[]): Promise<string | undefined>;
  watch(prefix: string, handlers: WatchHandlers, options?: WatchOptions): Promise<Watch>;
  close(): Promise<void>;
}

export function compareRevisions(a: string, b: string): number {
  const x = BigInt(a);
  const y = BigInt(b);
  return x < y ? -1 : x > y ? 1 : 0;
}
