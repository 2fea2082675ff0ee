// The allocator against the real embedded store: every test gets its own store directory and
// key root, so tests run in parallel without sharing state.
import test, { type ExecutionContext } from 'ava';
import type { Datastore } from '../../datastore/datastore';
import { Keys } from '../../datastore/keys';
import { Allocator, type AllocatorOptions, type OwnerInput } from '../../ipam/allocator';
import { listAllocations, newBlock, serializeBlock, type Owner } from '../../ipam/block';
import { containsIp, parseCidr, parseIp } from '../../ipam/cidr';
import {
  ConflictError,
  ContentionError,
  CorruptDataError,
  InvalidRequestError,
  NotFoundError,
  PoolExhaustedError,
} from '../../lib/errors';
import { openTempStore } from '../harness/temp-store';

const keys = new Keys('/test');

function allocator(store: Datastore, node: string, extra: Partial<AllocatorOptions> = {}): Allocator {
  return new Allocator({ store, keys, node, ...extra });
}

const owner = (handle: string, extra: Partial<OwnerInput> = {}): OwnerInput => ({ handle, kind: 'container', ...extra });

async function assignMany(a: Allocator, n: number, family: 4 | 6 = 4, handle = 'h'): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push((await a.autoAssign({ family, owner: owner(handle) })).ip);
  return out;
}

async function blockSummary(a: Allocator): Promise<Array<[string, string | null, number]>> {
  return (await a.listBlocks()).map((b) => [b.block.cidr, b.block.affinity, b.used]);
}

test('sequential allocation from one node fills its block in order', async (t) => {
  const a = allocator(await openTempStore(t, 'ipam'), 'node-a');
  t.deepEqual(await a.addPool({ cidr: '10.0.0.0/24' }).then((r) => [r.pool.cidr, r.pool.blockSize, r.created]), ['10.0.0.0/24', 26, true]);
  const r = await a.autoAssign({ family: 4, owner: owner('h') });
  t.deepEqual(r, { ip: '10.0.0.0', pool: '10.0.0.0/24', block: '10.0.0.0/26' });
  t.deepEqual(await assignMany(a, 4), ['10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.4']);
  t.deepEqual(await blockSummary(a), [['10.0.0.0/26', 'node-a', 5]]);
});

test('blocks are claimed per node, lowest free block first', async (t) => {
  const store = await openTempStore(t, 'ipam');
  const a = allocator(store, 'node-a');
  const b = allocator(store, 'node-b');
  await a.addPool({ cidr: '10.0.0.0/24' });
  const first = await assignMany(a, 65);
  t.is(first[63], '10.0.0.63');
  t.is(first[64], '10.0.0.64', 'a full block makes the node claim the next one');
  // node-b does not take from node-a's half-empty block while free blocks remain.
  t.deepEqual(await assignMany(b, 2), ['10.0.0.128', '10.0.0.129']);
  t.deepEqual(await blockSummary(a), [
    ['10.0.0.0/26', 'node-a', 64],
    ['10.0.0.128/26', 'node-b', 2],
    ['10.0.0.64/26', 'node-a', 1],
  ]);
  // More from node-a keeps using its own block.
  t.deepEqual(await assignMany(a, 1), ['10.0.0.65']);
});

test('a node borrows from another node once no block is free', async (t) => {
  const store = await openTempStore(t, 'ipam');
  const a = allocator(store, 'node-a');
  const b = allocator(store, 'node-b');
  await a.addPool({ cidr: '10.0.0.0/28', blockSize: 30 });
  t.deepEqual(await assignMany(a, 6), ['10.0.0.0', '10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.4', '10.0.0.5']);
  t.deepEqual(await assignMany(b, 8, 4, 'hb'), [
    '10.0.0.8', '10.0.0.9', '10.0.0.10', '10.0.0.11',
    '10.0.0.12', '10.0.0.13', '10.0.0.14', '10.0.0.15',
  ]);
  const borrowed = await b.autoAssign({ family: 4, owner: owner('hb') });
  t.deepEqual(borrowed, { ip: '10.0.0.6', pool: '10.0.0.0/28', block: '10.0.0.4/30' });
  const found = await a.findAllocation('10.0.0.6');
  t.is(found?.affinity, 'node-a', 'the block stays node-a\'s');
  t.deepEqual(found?.owner, { node: 'node-b', handle: 'hb', kind: 'container' });
  t.is((await b.autoAssign({ family: 4, owner: owner('hb') })).ip, '10.0.0.7');
  await t.throwsAsync(b.autoAssign({ family: 4, owner: owner('hb') }), {
    instanceOf: PoolExhaustedError,
    message: 'no free IPv4 address in IP pool 10.0.0.0/28: every address is in use',
  });
  // Releasing a borrowed address does not give node-a's block away, even when it empties.
  for (const ip of ['10.0.0.4', '10.0.0.5']) await a.release({ ip, requester: { handle: 'h' } });
  t.like(await b.release({ ip: '10.0.0.6', requester: { handle: 'hb' } }), { status: 'released', blockReleased: false });
  t.like(await b.release({ ip: '10.0.0.7', requester: { handle: 'hb' } }), { status: 'released', blockReleased: false });
  t.true((await blockSummary(a)).some(([cidr, node, used]) => cidr === '10.0.0.4/30' && node === 'node-a' && used === 0));
});

test('assignIp reserves exactly that address and claims its block', async (t) => {
  const store = await openTempStore(t, 'ipam');
  const a = allocator(store, 'node-a');
  const b = allocator(store, 'node-b');
  await a.addPool({ cidr: '10.0.0.0/24' });
  t.deepEqual(await a.assignIp({ ip: '10.0.0.77', owner: owner('h1') }), {
    ip: '10.0.0.77',
    pool: '10.0.0.0/24',
    block: '10.0.0.64/26',
    alreadyOwned: false,
  });
  t.deepEqual(await blockSummary(a), [['10.0.0.64/26', 'node-a', 1]]);
  // The claimed block is node-a's now; automatic assignment uses it first.
  t.is((await a.autoAssign({ family: 4, owner: owner('h2') })).ip, '10.0.0.64');
  // Into an existing block of another node.
  t.like(await b.assignIp({ ip: '10.0.0.100', owner: owner('h3') }), { ip: '10.0.0.100', alreadyOwned: false });
  t.deepEqual(await blockSummary(a), [['10.0.0.64/26', 'node-a', 3]]);

  const conflicts: Array<[Allocator, string, OwnerInput, string]> = [
    [b, '10.0.0.77', owner('h1'), 'held by container h1 on node node-a'], // same handle, other node
    [a, '10.0.0.77', owner('other'), 'held by container h1 on node node-a'],
    [a, '10.0.0.77', owner('h1', { kind: 'gateway' }), 'held by container h1 on node node-a'],
    [a, '10.0.0.100', owner('h3'), 'held by container h3 on node node-b'],
  ];
  for (const [who, ip, o, holder] of conflicts) {
    await t.throwsAsync(who.assignIp({ ip, owner: o }), {
      instanceOf: ConflictError,
      message: `address ${ip} is already in use (${holder})`,
    });
  }
  await t.throwsAsync(a.assignIp({ ip: '10.0.1.1', owner: owner('h') }), {
    instanceOf: InvalidRequestError,
    message: 'address 10.0.1.1 is not inside any IP pool (pools: 10.0.0.0/24); choose an address inside a pool',
  });
  await t.throwsAsync(a.assignIp({ ip: '10.0.0.300', owner: owner('h') }), { instanceOf: InvalidRequestError });
});

test('assignIp refuses to claim a block that overlaps a stored block of another size', async (t) => {
  const store = await openTempStore(t, 'ipam');
  const a = allocator(store, 'node-a');
  await a.addPool({ cidr: '10.0.0.0/24' });
  // A /28 (hand-written, or from an earlier block size) inside the /26 that 10.0.0.20 maps to.
  await store.create(keys.block('10.0.0.0/24', '10.0.0.0/28'), serializeBlock(newBlock('10.0.0.0/28', 'node-x')));
  await t.throwsAsync(a.assignIp({ ip: '10.0.0.20', owner: owner('h') }), {
    instanceOf: ConflictError,
    message:
      "cannot claim block 10.0.0.0/26 for address 10.0.0.20: it overlaps the existing block 10.0.0.0/28 (stored at /test/ipam/blocks/10.0.0.0-24/10.0.0.0-28), whose size differs from IP pool 10.0.0.0/24's block size /26",
  });
  t.deepEqual(await blockSummary(a), [['10.0.0.0/28', 'node-x', 0]]);
  // An address inside the stored block is still served from it.
  t.like(await a.assignIp({ ip: '10.0.0.5', owner: owner('h') }), { ip: '10.0.0.5', block: '10.0.0.0/28' });
  // Elsewhere in the pool, blocks are claimed as usual.
  t.like(await a.assignIp({ ip: '10.0.0.70', owner: owner('h') }), { ip: '10.0.0.70', block: '10.0.0.64/26' });
});

test('addPool withdraws its pool after losing an overlap race, even if the pool changed meanwhile', async (t) => {
  const real = await openTempStore(t, 'ipam');
  let deletes = 0;
  const racing: Datastore = {
    description: real.description,
    get: (k) => real.get(k),
    list: (p) => real.list(p),
    // Another host adds an overlapping pool just before ours is written.
    create: async (k, v) => {
      if (k === keys.pool('10.0.0.0/24')) await real.create(keys.pool('10.0.0.0/16'), JSON.stringify({ cidr: '10.0.0.0/16', blockSize: 26, disabled: false, natOutgoing: false }));
      return real.create(k, v);
    },
    update: (k, v, r) => real.update(k, v, r),
    commit: (ops) => real.commit(ops),
    // Our withdrawal loses once: someone touched our pool after we wrote it.
    delete: async (k, r) => {
      if (k === keys.pool('10.0.0.0/24') && deletes++ === 0) {
        const kv = await real.get(k);
        if (kv !== undefined) await real.update(k, kv.value, kv.revision);
        return false;
      }
      return real.delete(k, r);
    },
    watch: (p, h, o) => real.watch(p, h, o),
    close: () => real.close(),
  };
  const a = allocator(racing, 'node-a');
  await t.throwsAsync(a.addPool({ cidr: '10.0.0.0/24' }), {
    instanceOf: ConflictError,
    message: 'IP pool 10.0.0.0/24 overlaps existing IP pool 10.0.0.0/16; choose a CIDR outside it or remove 10.0.0.0/16 first',
  });
  t.is(deletes, 2);
  t.deepEqual((await a.listPools()).map((p) => p.cidr), ['10.0.0.0/16']);
});

test('assignIp is idempotent for the same owner, even in a disabled pool', async (t) => {
  const a = allocator(await openTempStore(t, 'ipam'), 'node-a');
  await a.addPool({ cidr: 'fd00::/64' });
  const first = await a.assignIp({ ip: 'FD00:0::1:5', owner: owner('gw', { kind: 'gateway' }) });
  t.deepEqual(first, { ip: 'fd00::1:5', pool: 'fd00::/64', block: 'fd00::1:0/122', alreadyOwned: false });
  const again = await a.assignIp({ ip: 'fd00::1:5', owner: owner('gw', { kind: 'gateway', endpointId: 'x' }) });
  t.deepEqual(again, { ...first, alreadyOwned: true });

  await a.setPoolDisabled('fd00::/64', true);
  t.like(await a.assignIp({ ip: 'fd00::1:5', owner: owner('gw', { kind: 'gateway' }) }), { alreadyOwned: true });
  const message = 'address fd00::1:6 is in IP pool fd00::/64, which is disabled: no new addresses are assigned from it';
  await t.throwsAsync(a.assignIp({ ip: 'fd00::1:6', owner: owner('gw') }), { instanceOf: ConflictError, message });
  await t.throwsAsync(a.assignIp({ ip: 'fd00::2:1', owner: owner('gw') }), {
    instanceOf: ConflictError,
    message: 'address fd00::2:1 is in IP pool fd00::/64, which is disabled: no new addresses are assigned from it',
  });
});

test('release is owner-aware and harmless when repeated', async (t) => {
  const store = await openTempStore(t, 'ipam');
  const a = allocator(store, 'node-a');
  const b = allocator(store, 'node-b');
  await a.addPool({ cidr: '10.0.0.0/24' });
  const { ip } = await a.autoAssign({ family: 4, owner: owner('h') });
  await a.autoAssign({ family: 4, owner: owner('keep') }); // keeps the block from being returned

  const held: Owner = { node: 'node-a', handle: 'h', kind: 'container' };
  t.deepEqual(await b.release({ ip, requester: { handle: 'h' } }), { status: 'owned-by-other', owner: held }, 'other node');
  t.deepEqual(await a.release({ ip, requester: { handle: 'x' } }), { status: 'owned-by-other', owner: held }, 'other handle');
  t.deepEqual((await a.findAllocation(ip))?.owner, held, 'still allocated');

  t.deepEqual(await b.release({ ip, requester: { node: 'node-a', handle: 'h' } }), {
    status: 'released',
    owner: held,
    blockReleased: false,
  }, 'any process may release on behalf of the holder');
  t.deepEqual(await a.release({ ip, requester: { handle: 'h' } }), { status: 'not-allocated' }, 'second release');
  t.deepEqual(await a.release({ ip: '10.9.9.9', requester: { handle: 'h' } }), { status: 'not-allocated' }, 'no block');
  t.deepEqual(await a.release({ ip: 'fd00::1', requester: { handle: 'h' } }), { status: 'not-allocated' }, 'no pool');
  t.is(await a.findAllocation(ip), undefined);
  await t.throwsAsync(a.release({ ip: 'bogus', requester: { handle: 'h' } }), { instanceOf: InvalidRequestError });
});

test('a freed address goes to the back of the line', async (t) => {
  const a = allocator(await openTempStore(t, 'ipam'), 'node-a');
  await a.addPool({ cidr: '10.0.0.0/24' });
  t.deepEqual(await assignMany(a, 3), ['10.0.0.0', '10.0.0.1', '10.0.0.2']);
  await a.release({ ip: '10.0.0.1', requester: { handle: 'h' } });
  t.deepEqual(await assignMany(a, 2), ['10.0.0.3', '10.0.0.4']);
});

test('a block emptied on its own node returns to the pool', async (t) => {
  const store = await openTempStore(t, 'ipam');
  const a = allocator(store, 'node-a');
  const b = allocator(store, 'node-b');
  await a.addPool({ cidr: '10.0.0.0/28', blockSize: 30 });
  await assignMany(a, 5); // blocks 10.0.0.0/30 (full) and 10.0.0.4/30 (one)
  await a.release({ ip: '10.0.0.0', requester: { handle: 'h' } }); // room in the first block again
  t.deepEqual(await a.release({ ip: '10.0.0.4', requester: { handle: 'h' } }), {
    status: 'released',
    owner: { node: 'node-a', handle: 'h', kind: 'container' },
    blockReleased: true,
  });
  t.deepEqual(await blockSummary(a), [['10.0.0.0/30', 'node-a', 3]]);
  // The returned block is the lowest free one again, and another node can claim it.
  t.is((await b.autoAssign({ family: 4, owner: owner('hb') })).ip, '10.0.0.4');
  t.deepEqual(await blockSummary(a), [
    ['10.0.0.0/30', 'node-a', 3],
    ['10.0.0.4/30', 'node-b', 1],
  ]);
});

test('a node keeps its last block of a pool, so a freed address is not reused at once', async (t) => {
  const a = allocator(await openTempStore(t, 'ipam'), 'node-a');
  await a.addPool({ cidr: '10.0.0.0/28', blockSize: 30 });
  t.deepEqual(await assignMany(a, 1), ['10.0.0.0']);
  t.like(await a.release({ ip: '10.0.0.0', requester: { handle: 'h' } }), { status: 'released', blockReleased: false });
  t.deepEqual(await blockSummary(a), [['10.0.0.0/30', 'node-a', 0]]);
  t.deepEqual(await assignMany(a, 1), ['10.0.0.1']);
});

test('pool management: overlap, idempotent add, disable, removal refused while in use', async (t) => {
  const store = await openTempStore(t, 'ipam');
  const a = allocator(store, 'node-a');
  const b = allocator(store, 'node-b');
  t.true((await a.addPool({ cidr: '10.0.0.0/24', natOutgoing: true })).created);
  const again = await b.addPool({ cidr: '10.0.0.0/24' });
  t.false(again.created);
  t.true(again.pool.natOutgoing, 'the stored pool is returned');
  for (const cidr of ['10.0.0.0/16', '10.0.0.128/25']) {
    await t.throwsAsync(a.addPool({ cidr }), {
      instanceOf: ConflictError,
      message: `IP pool ${cidr} overlaps existing IP pool 10.0.0.0/24; choose a CIDR outside it or remove 10.0.0.0/24 first`,
    });
  }
  await a.addPool({ cidr: 'fd00::/64' });
  t.deepEqual((await a.listPools()).map((p) => p.cidr), ['10.0.0.0/24', 'fd00::/64']);
  t.is((await a.getPool('FD00::/64'))?.blockSize, 122);
  t.is(await a.getPool('10.1.0.0/24'), undefined);

  await a.setPoolDisabled('10.0.0.0/24', true);
  await t.throwsAsync(a.autoAssign({ family: 4, owner: owner('h') }), {
    instanceOf: PoolExhaustedError,
    message: 'no enabled IPv4 IP pool: 10.0.0.0/24 is disabled',
  });
  await a.setPoolDisabled('10.0.0.0/24', false);

  const { ip } = await a.autoAssign({ family: 4, owner: owner('h') });
  await b.autoAssign({ family: 4, owner: owner('hb') });
  // An empty block of node-b, released by node-a's process on node-b's behalf, is not deleted.
  await a.release({ ip: '10.0.0.64', requester: { node: 'node-b', handle: 'hb' } });
  t.deepEqual(await blockSummary(a), [['10.0.0.0/26', 'node-a', 1], ['10.0.0.64/26', 'node-b', 0]]);

  await t.throwsAsync(a.removePool('10.0.0.0/24'), {
    instanceOf: ConflictError,
    message: 'IP pool 10.0.0.0/24 still has 1 address in use (blocks 10.0.0.0/26); remove the containers and networks using it first',
  });
  t.is((await a.listPools()).length, 2);
  await a.release({ ip, requester: { handle: 'h' } });
  await a.removePool('10.0.0.0/24');
  t.deepEqual((await a.listPools()).map((p) => p.cidr), ['fd00::/64']);
  t.deepEqual(await a.listBlocks(), [], 'empty blocks of every node went with the pool');
  await t.throwsAsync(a.removePool('10.0.0.0/24'), { instanceOf: NotFoundError, message: 'IP pool 10.0.0.0/24 does not exist' });
  await t.throwsAsync(a.setPoolDisabled('10.0.0.0/24', true), { instanceOf: NotFoundError });
  await t.throwsAsync(a.addPool({ cidr: '10.0.0.1/24' }), { instanceOf: InvalidRequestError });
});

test('autoAssign: pool selection and its errors', async (t) => {
  const a = allocator(await openTempStore(t, 'ipam'), 'node-a');
  await t.throwsAsync(a.autoAssign({ family: 4, owner: owner('h') }), {
    instanceOf: PoolExhaustedError,
    message: 'no IPv4 IP pool is configured; add one',
  });
  await a.addPool({ cidr: '10.0.0.0/24' });
  await a.addPool({ cidr: '10.1.0.0/24' });
  await a.addPool({ cidr: 'fd00::/64' });
  t.is((await a.autoAssign({ family: 4, pools: ['10.1.0.0/24'], owner: owner('h') })).ip, '10.1.0.0');
  // A node's existing blocks come first, whatever pool they are in; then new blocks, pool by pool.
  t.is((await a.autoAssign({ family: 4, owner: owner('h') })).ip, '10.1.0.1', 'affine block first');
  t.is((await a.autoAssign({ family: 4, pools: [], owner: owner('h') })).ip, '10.1.0.2', 'empty list: all pools');
  t.deepEqual(await a.autoAssign({ family: 6, owner: owner('h') }), { ip: 'fd00::', pool: 'fd00::/64', block: 'fd00::/122' });
  await t.throwsAsync(a.autoAssign({ family: 4, pools: ['10.2.0.0/24'], owner: owner('h') }), {
    instanceOf: NotFoundError,
    message: 'IP pool 10.2.0.0/24 does not exist',
  });
  await t.throwsAsync(a.autoAssign({ family: 4, pools: ['fd00::/64'], owner: owner('h') }), {
    instanceOf: InvalidRequestError,
    message: 'IP pool fd00::/64 is IPv6, but an IPv4 address was requested',
  });
  await a.setPoolDisabled('10.1.0.0/24', true);
  await t.throwsAsync(a.autoAssign({ family: 4, pools: ['10.1.0.0/24'], owner: owner('h') }), {
    instanceOf: PoolExhaustedError,
    message: 'no IPv4 address can be assigned: IP pool 10.1.0.0/24 is disabled',
  });
  await t.throwsAsync(a.autoAssign({ family: 4, owner: { handle: '', kind: 'container' } }), {
    instanceOf: InvalidRequestError,
    message: 'invalid address owner: handle must be a non-empty string',
  });
});

test('IPv6 pool: allocation, exact assignment, release', async (t) => {
  const store = await openTempStore(t, 'ipam');
  const a = allocator(store, 'node-a');
  const b = allocator(store, 'node-b');
  await a.addPool({ cidr: 'fd00:1::/120' });
  t.deepEqual(await assignMany(a, 3, 6), ['fd00:1::', 'fd00:1::1', 'fd00:1::2']);
  t.deepEqual(await assignMany(b, 1, 6, 'hb'), ['fd00:1::40']);
  t.like(await a.assignIp({ ip: 'fd00:1::ff', owner: owner('x') }), { block: 'fd00:1::c0/122' });
  t.deepEqual(await blockSummary(a), [
    ['fd00:1::/122', 'node-a', 3],
    ['fd00:1::40/122', 'node-b', 1],
    ['fd00:1::c0/122', 'node-a', 1],
  ]);
  t.like(await a.release({ ip: 'fd00:1:0::ff', requester: { handle: 'x' } }), { status: 'released', blockReleased: true });
  t.like(await a.findAllocation('FD00:1::1'), { ip: 'fd00:1::1', block: 'fd00:1::/122', pool: 'fd00:1::/120' });
});

test('setEndpoint and findAllocation', async (t) => {
  const a = allocator(await openTempStore(t, 'ipam'), 'node-a');
  await a.addPool({ cidr: '10.0.0.0/24' });
  const { ip } = await a.autoAssign({ family: 4, owner: owner('h') });
  t.deepEqual(await a.setEndpoint(ip, 'ep-1'), { node: 'node-a', handle: 'h#ep-1', kind: 'container', endpointId: 'ep-1' });
  t.deepEqual(await a.findAllocation(ip), {
    ip,
    block: '10.0.0.0/26',
    affinity: 'node-a',
    pool: '10.0.0.0/24',
    owner: { node: 'node-a', handle: 'h#ep-1', kind: 'container', endpointId: 'ep-1' },
  });
  t.like(await a.release({ ip, requester: { handle: 'h' } }), { status: 'released' }, 'the endpoint does not change the holder');
  await t.throwsAsync(a.setEndpoint(ip, 'ep-1'), { instanceOf: NotFoundError, message: `address ${ip} is not allocated` });
});

test('a corrupt block is skipped and never overwritten', async (t) => {
  const store = await openTempStore(t, 'ipam');
  const warnings: string[] = [];
  const a = allocator(store, 'node-a', { warn: (m) => warnings.push(m) });
  await a.addPool({ cidr: '10.0.0.0/24' });
  await store.create(keys.block('10.0.0.0/24', '10.0.0.0/26'), '{"cidr":"10.0.0.0/26","allocations":"garbage"}');
  t.deepEqual(await a.autoAssign({ family: 4, owner: owner('h') }), { ip: '10.0.0.64', pool: '10.0.0.0/24', block: '10.0.0.64/26' });
  t.is((await store.get(keys.block('10.0.0.0/24', '10.0.0.0/26')))?.value, '{"cidr":"10.0.0.0/26","allocations":"garbage"}');
  const corrupt = await a.listCorruptBlocks();
  t.is(corrupt.length, 1);
  t.is(corrupt[0]?.key, keys.block('10.0.0.0/24', '10.0.0.0/26'));
  t.regex(corrupt[0]?.error ?? '', /^corrupt allocation block at \/test\/ipam\/blocks\/10\.0\.0\.0-24\/10\.0\.0\.0-26: affinity must be/);
  await t.throwsAsync(a.release({ ip: '10.0.0.5', requester: { handle: 'h' } }), { instanceOf: CorruptDataError });
  await t.throwsAsync(a.assignIp({ ip: '10.0.0.5', owner: owner('h') }), { instanceOf: CorruptDataError });
  await t.throwsAsync(a.removePool('10.0.0.0/24'), { instanceOf: CorruptDataError });

  // A corrupt pool is skipped by listings, with a warning.
  await store.create(keys.pool('10.9.0.0/16'), 'nope');
  t.deepEqual((await a.listPools()).map((p) => p.cidr), ['10.0.0.0/24']);
  t.true(warnings.some((w) => w.startsWith('skipping IP pool: corrupt IP pool at /test/ipam/pools/10.9.0.0-16')));
});

test('a compare-and-swap that keeps losing ends in ContentionError', async (t) => {
  const real = await openTempStore(t, 'ipam');
  let updates = 0;
  // Every update of a key conflicts, as if another host always wrote first.
  const losing: Datastore = {
    description: real.description,
    get: (k) => real.get(k),
    list: (p) => real.list(p),
    create: (k, v) => real.create(k, v),
    update: async () => {
      updates++;
      return undefined;
    },
    delete: (k, r) => real.delete(k, r),
    commit: async (ops) => {
      if (!ops.some((op) => op.type === 'update')) return real.commit(ops);
      updates++;
      return undefined;
    },
    watch: (p, h, o) => real.watch(p, h, o),
    close: () => real.close(),
  };
  const a = allocator(losing, 'node-a', { maxRetries: 3 });
  await a.addPool({ cidr: '10.0.0.0/24' });
  await a.autoAssign({ family: 4, owner: owner('h') }); // claims a block: a create, not an update
  await t.throwsAsync(a.autoAssign({ family: 4, owner: owner('h') }), {
    instanceOf: ContentionError,
    message: 'assign an IPv4 address: gave up after 4 attempts, other writers kept changing the same data; try again',
  });
  t.is(updates, 4);
});

// Several processes' worth of allocators on one store, all at once. Two share a node name, so
// they fight over the same affine blocks. Correctness comes only from compare-and-swap here:
// each Allocator serializes its own calls, but not across instances.
async function hammer(t: ExecutionContext, pool: { cidr: string; blockSize: number }, perAllocator: number) {
  const store = await openTempStore(t, 'ipam');
  // Each lost compare-and-swap means another call's write won, so a call loses at most
  // (total calls - 1) times: this bound keeps the test deterministic.
  const maxRetries = 4 * perAllocator;
  const nodes = ['node-a', 'node-b', 'node-c', 'node-a'];
  const allocators = nodes.map((n) => allocator(store, n, { maxRetries }));
  await allocators[0]?.addPool(pool);
  const calls = allocators.flatMap((a, i) =>
    Array.from({ length: perAllocator }, (_, j) =>
      a.autoAssign({ family: 4, owner: owner(`w${i}-${j}`) }).then(
        (r) => ({ ok: true as const, ip: r.ip, handle: `w${i}-${j}`, node: a.node }),
        (err: unknown) => ({ ok: false as const, err }),
      ),
    ),
  );
  const results = await Promise.all(calls);
  const ok = results.flatMap((r) => (r.ok ? [r] : []));
  const failed = results.flatMap((r) => (r.ok ? [] : [r.err]));
  const ips = ok.map((r) => r.ip);
  t.is(new Set(ips).size, ips.length, 'no address handed out twice');
  const cidr = parseCidr(pool.cidr);
  t.true(ips.every((ip) => containsIp(cidr, parseIp(ip))));
  // Every success is recorded in exactly one block, with its owner.
  const stored = new Map<string, Owner>();
  for (const b of await allocators[1]!.listBlocks()) for (const x of listAllocations(b.block)) stored.set(x.ip, x.owner);
  t.is(stored.size, ok.length, 'every allocation accounted for');
  for (const r of ok) t.like(stored.get(r.ip), { node: r.node, handle: r.handle }, r.ip);
  return { ok, failed };
}

test('concurrent autoAssign from four allocators: no duplicates', async (t) => {
  const { ok, failed } = await hammer(t, { cidr: '10.0.0.0/24', blockSize: 28 }, 40);
  t.deepEqual(failed, []);
  t.is(ok.length, 160);
});

test('concurrent autoAssign past exhaustion: every address once, the rest refused', async (t) => {
  const { ok, failed } = await hammer(t, { cidr: '10.0.0.0/26', blockSize: 29 }, 20);
  t.is(ok.length, 64);
  t.is(failed.length, 16);
  for (const err of failed) t.true(err instanceof PoolExhaustedError, String(err));
});
