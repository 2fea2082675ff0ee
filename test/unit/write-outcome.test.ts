// Settling a write whose answer was lost, against an in-memory multi-version history: each case
// is a history etcd can produce around one lost transaction.
import test from 'ava';
import {
  EtcdAuthenticationFailedError,
  EtcdPermissionDeniedError,
  GRPCCancelledError,
  GRPCDeadlineExceededError,
  GRPCGenericError,
  GRPCInvalidArgumentError,
  GRPCUnavailableError,
} from 'etcd3';
import type { TxnOp } from '../../datastore/datastore';
import { mayHaveBeenApplied } from '../../datastore/etcd-store';
import { conditionsHold, firstChange, resolveOutcome, type HistoryReader, type KeyState, type Snapshot } from '../../datastore/write-outcome';

/** Every store revision's full state, as etcd keeps it until compaction. */
class FakeHistory implements HistoryReader {
  private readonly revisions: Map<string, KeyState>[] = [new Map()];
  reads = 0;

  get revision(): string {
    return String(this.revisions.length - 1);
  }

  /** One transaction: puts (value) and deletes (undefined), all at the next revision. */
  write(changes: Record<string, string | undefined>): string {
    const next = new Map(this.revisions[this.revisions.length - 1]);
    const rev = String(this.revisions.length);
    for (const [key, value] of Object.entries(changes)) {
      if (value === undefined) next.delete(key);
      else next.set(key, { value, modRevision: rev, createRevision: next.get(key)?.createRevision ?? rev });
    }
    this.revisions.push(next);
    return rev;
  }

  /** What etcd would do with the transaction: write it if its conditions hold. */
  commit(ops: readonly TxnOp[]): string | undefined {
    // etcd's rule: an unconditional delete has no condition (conditionsHold is stricter).
    const conditional = ops.filter((o) => o.type !== 'delete' || o.revision !== undefined);
    if (!conditionsHold(conditional, this.stateMap(this.revision, conditional.map((o) => o.key)))) return undefined;
    const changes: Record<string, string | undefined> = {};
    for (const op of ops) {
      if (op.type === 'create' || op.type === 'update') changes[op.key] = op.value;
      if (op.type === 'delete') changes[op.key] = undefined;
    }
    return this.write(changes);
  }

  read(keys: readonly string[], revision?: string): Promise<Snapshot> {
    this.reads++;
    const at = revision ?? this.revision;
    return Promise.resolve({ revision: at, states: this.stateMap(at, keys) });
  }

  private stateMap(revision: string, keys: readonly string[]): Map<string, KeyState | undefined> {
    const state = this.revisions[Number(revision)];
    if (state === undefined) throw new Error(`revision ${revision} not kept`);
    return new Map(keys.map((k) => [k, state.get(k)]));
  }
}

/** A store with some unrelated history, and key /a at a known revision. */
function seeded(): { h: FakeHistory; aRev: string } {
  const h = new FakeHistory();
  h.write({ '/x': 'x1' });
  const aRev = h.write({ '/a': 'a1' });
  h.write({ '/y': 'y1' });
  return { h, aRev };
}

test('a compare-and-swap that never reached etcd: not applied, may be sent again', async (t) => {
  const { h, aRev } = seeded();
  const ops: TxnOp[] = [{ type: 'update', key: '/a', value: 'mine', revision: aRev }];
  t.deepEqual(await resolveOutcome(ops, h.revision, h), { kind: 'not-applied' });
});

test('a compare-and-swap that committed before its answer was lost: applied at its revision', async (t) => {
  const { h, aRev } = seeded();
  const ops: TxnOp[] = [{ type: 'update', key: '/a', value: 'mine', revision: aRev }];
  const sentAfter = h.revision;
  const rev = h.commit(ops);
  h.write({ '/z': 'later' });
  t.deepEqual(await resolveOutcome(ops, sentAfter, h), { kind: 'applied', revision: rev });
});

test('committed, then overwritten by another writer before the read-back: still applied (a retry would claim twice)', async (t) => {
  const { h, aRev } = seeded();
  const ops: TxnOp[] = [{ type: 'update', key: '/a', value: 'mine', revision: aRev }];
  const sentAfter = h.revision;
  const rev = h.commit(ops);
  h.write({ '/y': 'y2' });
  h.write({ '/a': 'theirs' });
  h.write({ '/a': 'theirs again' });
  t.deepEqual(await resolveOutcome(ops, sentAfter, h), { kind: 'applied', revision: rev });
});

test('another writer changed the key first: a conflict, never applied', async (t) => {
  const { h, aRev } = seeded();
  const ops: TxnOp[] = [{ type: 'update', key: '/a', value: 'mine', revision: aRev }];
  const sentAfter = h.revision;
  h.write({ '/a': 'theirs' });
  t.is(h.commit(ops), undefined, 'etcd would refuse ours now');
  t.deepEqual(await resolveOutcome(ops, sentAfter, h), { kind: 'conflict' });
});

test('another writer wrote a different value at the revision ours would have had: a conflict', async (t) => {
  const { h, aRev } = seeded();
  const ops: TxnOp[] = [{ type: 'update', key: '/a', value: 'mine', revision: aRev }];
  h.write({ '/a': 'theirs' });
  t.deepEqual(await resolveOutcome(ops, aRev, h), { kind: 'conflict' });
});

test('create: committed (and changed since) is applied; absent is not applied; created by another is a conflict', async (t) => {
  const { h } = seeded();
  const mine: TxnOp[] = [{ type: 'create', key: '/new', value: 'mine' }];
  const sentAfter = h.revision;
  t.deepEqual(await resolveOutcome(mine, sentAfter, h), { kind: 'not-applied' });
  const rev = h.commit(mine);
  h.write({ '/new': 'updated by someone' });
  t.deepEqual(await resolveOutcome(mine, sentAfter, h), { kind: 'applied', revision: rev });

  const other: TxnOp[] = [{ type: 'create', key: '/other', value: 'mine' }];
  const before = h.revision;
  h.write({ '/other': 'theirs' });
  t.deepEqual(await resolveOutcome(other, before, h), { kind: 'conflict' });
});

test('create of a key that existed before the write was sent: a conflict even if its value matches later', async (t) => {
  const { h } = seeded();
  h.write({ '/k': 'old' });
  const sentAfter = h.revision;
  h.write({ '/k': 'mine' });
  t.deepEqual(await resolveOutcome([{ type: 'create', key: '/k', value: 'mine' }], sentAfter, h), { kind: 'conflict' });
});

test('a multi-key commit is applied only if every key holds what it wrote at one revision', async (t) => {
  const { h, aRev } = seeded();
  const ops: TxnOp[] = [
    { type: 'check', key: '/x', revision: '1' },
    { type: 'update', key: '/a', value: 'a-mine', revision: aRev },
    { type: 'create', key: '/b', value: 'b-mine' },
    { type: 'delete', key: '/y' },
  ];
  const sentAfter = h.revision;
  const rev = h.commit(ops);
  t.truthy(rev);
  h.write({ '/b': 'b-theirs' });
  t.deepEqual(await resolveOutcome(ops, sentAfter, h), { kind: 'applied', revision: rev });
});

test('a multi-key commit whose check key changed first is a conflict', async (t) => {
  const { h, aRev } = seeded();
  const ops: TxnOp[] = [
    { type: 'check', key: '/x', revision: '1' },
    { type: 'update', key: '/a', value: 'a-mine', revision: aRev },
  ];
  const sentAfter = h.revision;
  h.write({ '/x': 'pool changed' });
  t.is(h.commit(ops), undefined);
  t.deepEqual(await resolveOutcome(ops, sentAfter, h), { kind: 'conflict' });
});

test('conditional delete: committed is applied, untouched is not applied', async (t) => {
  const { h, aRev } = seeded();
  const ops: TxnOp[] = [{ type: 'delete', key: '/a', revision: aRev }];
  t.deepEqual(await resolveOutcome(ops, h.revision, h), { kind: 'not-applied' });
  const rev = h.commit(ops);
  h.write({ '/a': 'recreated' });
  t.deepEqual(await resolveOutcome(ops, aRev, h), { kind: 'applied', revision: rev });
});

test('only unconditional deletes: sent again (deleting twice changes nothing more)', async (t) => {
  const { h } = seeded();
  const ops: TxnOp[] = [{ type: 'delete', key: '/x' }];
  const sentAfter = h.revision;
  h.commit(ops);
  t.deepEqual(await resolveOutcome(ops, sentAfter, h), { kind: 'not-applied' });
});

test('firstChange bisects: a long history costs a logarithmic number of reads', async (t) => {
  const h = new FakeHistory();
  const start = h.write({ '/k': 'v0' });
  for (let i = 0; i < 1000; i++) h.write({ [`/noise/${i}`]: 'n' });
  const changed = h.write({ '/k': 'v1' });
  for (let i = 0; i < 1000; i++) h.write({ [`/noise2/${i}`]: 'n' });
  const now = await h.read(['/k']);
  h.reads = 0;
  t.is(await firstChange('/k', start, now, h), changed);
  t.true(h.reads <= 13, `${h.reads} reads`);
  t.is(await firstChange('/noise/5', now.revision, now, h), undefined, 'no change after now');
});

test('which failed writes are read back: everything but a refusal or a call that never went out', (t) => {
  const cases: [Error, boolean][] = [
    [new GRPCUnavailableError('14 UNAVAILABLE: Connection dropped'), true],
    [new GRPCDeadlineExceededError('4 DEADLINE_EXCEEDED: Deadline exceeded'), true],
    [new GRPCCancelledError('1 CANCELLED'), true],
    [new GRPCGenericError('something new'), true],
    [new Error('etcdserver: leader changed'), true],
    [new EtcdPermissionDeniedError('etcdserver: permission denied'), false],
    [new EtcdAuthenticationFailedError('etcdserver: authentication failed, invalid user ID or password'), false],
    [new GRPCInvalidArgumentError('3 INVALID_ARGUMENT: etcdserver: too many operations in txn request'), false],
    // cockatiel's BrokenCircuitError: every member held back, nothing was sent.
    [new Error('Execution prevented because the circuit breaker is open'), false],
  ];
  for (const [err, expected] of cases) t.is(mayHaveBeenApplied(err), expected, err.message);
});
