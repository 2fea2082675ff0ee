// The allocator when it loses races, made to happen on purpose: a wrapper of the embedded store
// runs another host's operation just before a chosen write of ours goes through, so that write
// really loses. Also: what a request reads (it must not depend on the number of hosts), pool
// removal racing a block claim, and the upgrade of blocks stored by 0.1.
import test from 'ava';
import type { Datastore, TxnOp } from '../../datastore/datastore';
import { Keys } from '../../datastore/keys';
import { Allocator, hostOffset } from '../../ipam/allocator';
import { newBlock, serializeBlock, assignSpecific } from '../../ipam/block';
import { upgradeBlockLayout } from '../../ipam/ipam-store';
import { NotFoundError, PoolExhaustedError } from '../../lib/errors';
import { openTempStore } from '../harness/temp-store';

const keys = new Keys('/races');
const owner = (handle: string) => ({ handle, kind: 'container' as const });

type Write = { readonly kind: 'create' | 'update' | 'delete' | 'commit'; readonly keys: readonly string[] };

/** The real store, plus: `before` runs (once) ahead of the first write it matches; every read
 * is recorded. */
function interfering(real: Datastore, before: { match: (w: Write) => boolean; run: () => Promise<void> }) {
  let armed = true;
  const lists: string[] = [];
  const gets: string[] = [];
  const hook = async (w: Write): Promise<void> => {
    if (armed && before.match(w)) {
      armed = false;
      await before.run();
    }
  };
  const store: Datastore = {
    description: real.description,
    get: (k) => {
      gets.push(k);
      return real.get(k);
    },
    list: (p) => {
      lists.push(p);
      return real.list(p);
    },
    create: async (k, v) => (await hook({ kind: 'create', keys: [k] }), real.create(k, v)),
    update: async (k, v, r) => (await hook({ kind: 'update', keys: [k] }), real.update(k, v, r)),
    delete: async (k, r) => (await hook({ kind: 'delete', keys: [k] }), real.delete(k, r)),
    commit: async (ops: readonly TxnOp[]) => (await hook({ kind: 'commit', keys: ops.map((o) => o.key) }), real.commit(ops)),
    watch: (p, h, o) => real.watch(p, h, o),
    close: async () => undefined,
  };
  return { store, lists, gets, fired: () => !armed };
}

const assignAll = async (a: Allocator, n: number, handle: string): Promise<string[]> => {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push((await a.autoAssign({ family: 4, owner: owner(handle) })).ip);
  return out;
};

test('a lost block claim reads again and borrows instead of reporting the pool full', async (t) => {
  const real = await openTempStore(t, 'ipam-races');
  const b = new Allocator({ store: real, keys, node: 'node-b' });
  await b.addPool({ cidr: '10.0.0.0/29', blockSize: 30 }); // two blocks of four
  await assignAll(b, 4, 'hb'); // node-b fills 10.0.0.0/30
  // node-a is about to claim the last block, 10.0.0.4/30; node-b claims it first.
  const blockKey = keys.block('10.0.0.0/29', '10.0.0.4/30');
  const racing = interfering(real, {
    match: (w) => w.kind === 'commit' && w.keys.includes(blockKey),
    run: async () => {
      t.is((await b.autoAssign({ family: 4, owner: owner('hb') })).ip, '10.0.0.4');
    },
  });
  const a = new Allocator({ store: racing.store, keys, node: 'node-a' });
  const got = await a.autoAssign({ family: 4, owner: owner('ha') });
  t.true(racing.fired(), 'the claim really raced');
  t.deepEqual(got, { ip: '10.0.0.5', pool: '10.0.0.0/29', block: '10.0.0.4/30' }, 'borrowed from the block it lost');
  t.deepEqual(a.stats, { operations: 1, conflicts: 1 });
});

test('a lost compare-and-swap reads again and finds the address freed meanwhile', async (t) => {
  const real = await openTempStore(t, 'ipam-races');
  const a0 = new Allocator({ store: real, keys, node: 'node-a' });
  const b = new Allocator({ store: real, keys, node: 'node-b' });
  await a0.addPool({ cidr: '10.0.0.0/29', blockSize: 30 });
  await assignAll(a0, 3, 'ha'); // node-a: 10.0.0.0/30 with one address free
  await assignAll(b, 4, 'hb'); // node-b: 10.0.0.4/30 full
  const aBlock = keys.block('10.0.0.0/29', '10.0.0.0/30');
  // As node-a writes its last free address, node-b borrows that very address and then frees
  // one of its own: node-a's write loses, and the only free address is now in node-b's block.
  const racing = interfering(real, {
    match: (w) => w.keys.includes(aBlock),
    run: async () => {
      t.is((await b.autoAssign({ family: 4, owner: owner('hb') })).ip, '10.0.0.3');
      t.like(await b.release({ ip: '10.0.0.6', requester: { handle: 'hb' } }), { status: 'released' });
    },
  });
  const a = new Allocator({ store: racing.store, keys, node: 'node-a' });
  t.is((await a.autoAssign({ family: 4, owner: owner('ha') })).ip, '10.0.0.6');
  t.true(racing.fired());
  t.is(a.stats.conflicts, 1);
  // Now the pool really is full, and an attempt that lost nothing says so.
  await t.throwsAsync(a.autoAssign({ family: 4, owner: owner('ha') }), {
    instanceOf: PoolExhaustedError,
    message: 'no free IPv4 address in IP pool 10.0.0.0/29: every address is in use',
  });
});

test("a request reads this host's blocks, never the cluster's", async (t) => {
  const real = await openTempStore(t, 'ipam-races');
  const setup = new Allocator({ store: real, keys, node: 'setup' });
  await setup.addPool({ cidr: '10.0.0.0/16' });
  for (let i = 0; i < 20; i++) await new Allocator({ store: real, keys, node: `other-${i}` }).autoAssign({ family: 4, owner: owner('x') });
  await new Allocator({ store: real, keys, node: 'node-a' }).autoAssign({ family: 4, owner: owner('h') }); // claims node-a's block

  // A new process for node-a (a restarted daemon) reads the pools and its own index, then its block.
  const watched = interfering(real, { match: () => false, run: async () => undefined });
  const a = new Allocator({ store: watched.store, keys, node: 'node-a' });
  const { ip, block } = await a.autoAssign({ family: 4, owner: owner('h') });
  t.deepEqual([...new Set(watched.lists)].sort(), [keys.hostAffinityPrefix('node-a'), keys.poolsPrefix()].sort());
  t.deepEqual(watched.gets, [keys.block('10.0.0.0/16', block)]);

  // From then on it allocates and releases on what it knows, with one conditional write each.
  watched.lists.length = 0;
  watched.gets.length = 0;
  const next = await a.autoAssign({ family: 4, owner: owner('h') });
  t.like(await a.release({ ip, requester: { handle: 'h' } }), { status: 'released' });
  t.like(await a.release({ ip: next.ip, requester: { handle: 'h' } }), { status: 'released' });
  t.deepEqual([watched.lists, watched.gets], [[], []]);
  // Negative answers are never given from what it knows: it reads.
  t.deepEqual(await a.release({ ip, requester: { handle: 'h' } }), { status: 'not-allocated' });
  t.true(watched.gets.length > 0);
});

test('hosts that must borrow start at different blocks', (t) => {
  const starts = new Set(Array.from({ length: 8 }, (_, i) => hostOffset(`host-${i}`, 4)));
  t.true(starts.size >= 3, `8 hosts start at ${[...starts].join(', ')} of 4 blocks`);
  t.is(hostOffset('host-1', 4), hostOffset('host-1', 4), 'stable per host');
  t.is(hostOffset('anything', 1), 0);
});

test('a block claim racing a pool removal loses; no block is left without its pool', async (t) => {
  const real = await openTempStore(t, 'ipam-races');
  const admin = new Allocator({ store: real, keys, node: 'admin' });
  await admin.addPool({ cidr: '10.0.0.0/24' });
  const racing = interfering(real, {
    match: (w) => w.kind === 'commit',
    run: () => admin.removePool('10.0.0.0/24'),
  });
  const a = new Allocator({ store: racing.store, keys, node: 'node-a' });
  await t.throwsAsync(a.autoAssign({ family: 4, owner: owner('h') }), {
    instanceOf: PoolExhaustedError,
    message: 'no IPv4 IP pool is configured; add one',
  });
  t.true(racing.fired());
  t.deepEqual((await real.list(keys.blocksPrefix())).items, [], 'no orphan block');
  t.deepEqual((await real.list(keys.affinitiesPrefix())).items, []);
});

test('a refused pool removal leaves the pool enabled', async (t) => {
  const real = await openTempStore(t, 'ipam-races');
  const admin = new Allocator({ store: real, keys, node: 'admin' });
  const a = new Allocator({ store: real, keys, node: 'node-a' });
  await admin.addPool({ cidr: '10.0.0.0/24' });
  await a.autoAssign({ family: 4, owner: owner('h') });
  await t.throwsAsync(admin.removePool('10.0.0.0/24'), { message: /still has 1 address in use/ });
  t.false((await admin.getPool('10.0.0.0/24'))?.disabled);
  await t.throwsAsync(admin.removePool('10.9.0.0/24'), { instanceOf: NotFoundError });
});

test('blocks stored by 0.1 move under their pool once, with their host index', async (t) => {
  const real = await openTempStore(t, 'ipam-races');
  const admin = new Allocator({ store: real, keys, node: 'admin' });
  await admin.addPool({ cidr: '10.0.0.0/24' });
  // 0.1 wrote blocks flat under ipam/blocks/, without an affinity index.
  const held = assignSpecific(newBlock('10.0.0.64/26', 'node-a'), '10.0.0.70', { node: 'node-a', handle: 'h', kind: 'container' });
  if (held.status !== 'assigned') return t.fail('setup');
  await real.create(`${keys.blocksPrefix()}10.0.0.64-26`, serializeBlock(held.block));
  await real.create(`${keys.blocksPrefix()}10.9.0.0-26`, serializeBlock(newBlock('10.9.0.0/26', 'node-a')));
  const warnings: string[] = [];
  t.is(await upgradeBlockLayout(real, keys, (m) => warnings.push(m)), 1);
  t.is(await upgradeBlockLayout(real, keys), 0, 'done once');
  t.true(warnings.some((w) => w.includes('10.9.0.0-26') && w.includes('no IP pool')));

  const a = new Allocator({ store: real, keys, node: 'node-a' });
  t.like(await a.findAllocation('10.0.0.70'), { block: '10.0.0.64/26', affinity: 'node-a', pool: '10.0.0.0/24' });
  // node-a keeps allocating from its block, which it now finds through its index.
  t.deepEqual(await a.autoAssign({ family: 4, owner: owner('h') }), { ip: '10.0.0.64', pool: '10.0.0.0/24', block: '10.0.0.64/26' });
  t.like(await a.release({ ip: '10.0.0.70', requester: { handle: 'h' } }), { status: 'released' });
  return undefined;
});

test('what a host knows never outlives a change made elsewhere', async (t) => {
  const real = await openTempStore(t, 'ipam-races');
  const admin = new Allocator({ store: real, keys, node: 'admin' });
  const a = new Allocator({ store: real, keys, node: 'node-a' });
  const a2 = new Allocator({ store: real, keys, node: 'node-a' }); // a second process with the same name
  await admin.addPool({ cidr: '10.0.0.0/24' });
  t.is((await a.autoAssign({ family: 4, owner: owner('h') })).ip, '10.0.0.0');
  // The other process moves node-a's block on; a's next write loses and it reads again.
  t.is((await a2.autoAssign({ family: 4, owner: owner('h') })).ip, '10.0.0.1');
  t.is((await a.autoAssign({ family: 4, owner: owner('h') })).ip, '10.0.0.2');
  t.like(await a2.release({ ip: '10.0.0.2', requester: { handle: 'h' } }), { status: 'released' });
  t.like(await a.release({ ip: '10.0.0.1', requester: { handle: 'h' } }), { status: 'released' });
  // A pool disabled by another host stops allocation at once.
  await admin.setPoolDisabled('10.0.0.0/24', true);
  await t.throwsAsync(a.autoAssign({ family: 4, owner: owner('h') }), {
    instanceOf: PoolExhaustedError,
    message: 'no enabled IPv4 IP pool: 10.0.0.0/24 is disabled',
  });
  await admin.setPoolDisabled('10.0.0.0/24', false);
  t.is((await a.autoAssign({ family: 4, owner: owner('h') })).ip, '10.0.0.3');
});

test('releasing a host that is gone frees its addresses everywhere and its blocks', async (t) => {
  const real = await openTempStore(t, 'ipam-races');
  const a = new Allocator({ store: real, keys, node: 'node-a' });
  const b = new Allocator({ store: real, keys, node: 'node-b' });
  await a.addPool({ cidr: '10.0.0.0/28', blockSize: 30 });
  await assignAll(a, 8, 'ha'); // node-a: 10.0.0.0/30 and 10.0.0.4/30, full
  await assignAll(b, 8, 'hb'); // node-b: 10.0.0.8/30 and 10.0.0.12/30, full
  t.like(await b.release({ ip: '10.0.0.13', requester: { handle: 'hb' } }), { status: 'released' });
  t.is((await a.autoAssign({ family: 4, owner: owner('ha') })).ip, '10.0.0.13', 'node-a borrows from node-b');
  t.like(await a.release({ ip: '10.0.0.1', requester: { handle: 'ha' } }), { status: 'released' });
  t.is((await b.autoAssign({ family: 4, owner: owner('hb') })).ip, '10.0.0.1', 'node-b borrows from node-a');

  t.deepEqual(await b.releaseHost('node-a'), { blocksReleased: 2, addressesReleased: 8 });
  const blocks = (await b.listBlocks()).map((x) => [x.block.cidr, x.block.affinity, x.used]);
  t.deepEqual(blocks, [
    ['10.0.0.0/30', null, 1], // node-b's borrowed address keeps the block, now no host's
    ['10.0.0.12/30', 'node-b', 3],
    ['10.0.0.8/30', 'node-b', 4],
  ]);
  t.deepEqual(await real.list(keys.hostAffinityPrefix('node-a')).then((l) => l.items), [], 'no index entry left');
  // Its freed addresses and block serve the others again.
  t.is((await b.autoAssign({ family: 4, owner: owner('hb') })).ip, '10.0.0.13');
  t.like(await b.autoAssign({ family: 4, owner: owner('hb') }), { block: '10.0.0.4/30' });
});
