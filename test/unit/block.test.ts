import test from 'ava';
import {
  assignNext,
  assignSpecific,
  type AssignSpecificResult,
  type Block,
  freeCount,
  ipAt,
  isEmpty,
  listAllocations,
  newBlock,
  type Owner,
  ownerAt,
  parseBlock,
  release,
  type ReleaseResult,
  sameOwner,
  serializeBlock,
  setEndpoint,
  usedCount,
  validateOwner,
} from '../../ipam/block';
import { CorruptDataError, InvalidRequestError } from '../../lib/errors';

const alice: Owner = { node: 'node-a', handle: 'pool1:alice', kind: 'container' };
const bob: Owner = { node: 'node-a', handle: 'pool1:bob', kind: 'container' };
const aliceElsewhere: Owner = { node: 'node-b', handle: 'pool1:alice', kind: 'container' };

/** Deep-frozen copy: any mutation of an input by the code under test throws. */
function frozen(block: Block): Block {
  for (const v of Object.values(block)) if (typeof v === 'object' && v !== null) Object.freeze(v);
  for (const a of block.attributes) Object.freeze(a);
  return Object.freeze(block);
}

/** Assigns `count` addresses in order, all to `owner`. */
function filled(cidr: string, count: number, owner: Owner = alice): Block {
  let block = frozen(newBlock(cidr, 'node-a'));
  for (let i = 0; i < count; i++) {
    const r = assignNext(block, owner);
    if (r === undefined) throw new Error('full');
    block = frozen(r.block);
  }
  return block;
}

const families = [
  { name: 'IPv4', cidr: '10.0.0.0/30', addrs: ['10.0.0.0', '10.0.0.1', '10.0.0.2', '10.0.0.3'] },
  { name: 'IPv6', cidr: 'fd00::40/126', addrs: ['fd00::40', 'fd00::41', 'fd00::42', 'fd00::43'] },
];

test('newBlock: everything free, in order', (t) => {
  for (const f of families) {
    const b = newBlock(f.cidr, 'node-a');
    t.deepEqual(b, { cidr: f.cidr, affinity: 'node-a', allocations: [null, null, null, null], unallocated: [0, 1, 2, 3], attributes: [] });
    t.true(isEmpty(b));
    t.is(freeCount(b), 4);
    t.is(usedCount(b), 0);
  }
  t.is(newBlock('FD00:0::40/126', null).cidr, 'fd00::40/126', 'normalized');
  t.is(newBlock('10.0.0.0/26', null).allocations.length, 64);
});

test('newBlock: invalid', (t) => {
  const cases: Array<[string, string | null, string]> = [
    ['10.0.0.1/30', 'n', 'invalid block CIDR "10.0.0.1/30": host bits are set; the network is 10.0.0.0/30'],
    ['10.0.0.0/19', 'n', 'block 10.0.0.0/19 has 8192 addresses; a block may have at most 4096'],
    ['10.0.0.0/30', '', 'block affinity must be a node name or null'],
  ];
  for (const [cidr, affinity, message] of cases) {
    t.throws(() => newBlock(cidr, affinity), { instanceOf: InvalidRequestError, message });
  }
});

test('assignNext: hands out in order until full, never mutating its input', (t) => {
  for (const f of families) {
    let block = frozen(newBlock(f.cidr, 'node-a'));
    const got: string[] = [];
    for (;;) {
      const r = assignNext(block, alice);
      if (r === undefined) break;
      t.is(ipAt(block, r.ordinal), r.ip);
      got.push(r.ip);
      block = frozen(r.block);
    }
    t.deepEqual(got, f.addrs, f.name);
    t.is(freeCount(block), 0);
    t.is(usedCount(block), 4);
    t.deepEqual(block.attributes, [alice], 'one attribute shared by one owner');
  }
});

test('assignSpecific: assigned / already-owned / taken', (t) => {
  for (const f of families) {
    const [a0 = '', a1 = '', a2 = ''] = f.addrs;
    const block = filled(f.cidr, 1); // a0 held by alice
    const cases: Array<[string, Owner, AssignSpecificResult['status'], Owner | undefined]> = [
      [a1, bob, 'assigned', undefined],
      [a0, alice, 'already-owned', undefined],
      [a0, { ...alice, endpointId: 'ep1' }, 'already-owned', undefined], // endpoint is not identity
      [a0, bob, 'taken', alice],
      [a0, aliceElsewhere, 'taken', alice], // other node, same handle
      [a0, { ...alice, kind: 'gateway' }, 'taken', alice], // other kind
    ];
    for (const [ip, owner, status, holder] of cases) {
      const r = assignSpecific(block, ip, owner);
      t.is(r.status, status, `${f.name} ${ip} ${JSON.stringify(owner)}`);
      if (r.status === 'taken') t.deepEqual(r.owner, holder);
      if (r.status === 'already-owned') t.is(r.block, block, 'unchanged');
      if (r.status === 'assigned') {
        t.is(r.ip, ip);
        t.deepEqual(ownerAt(r.block, ip), owner);
        t.false(r.block.unallocated.includes(r.ordinal));
      }
    }
    // The specific address leaves the free list wherever it was; the rest keep their order.
    const r = assignSpecific(block, a2, bob);
    t.is(r.status, 'assigned');
    if (r.status === 'assigned') t.deepEqual(r.block.unallocated, [1, 3]);
  }
});

test('assignSpecific: non-canonical spelling is canonicalized', (t) => {
  const r = assignSpecific(newBlock('fd00::40/126', null), 'FD00:0::41', alice);
  t.is(r.status, 'assigned');
  if (r.status === 'assigned') t.is(r.ip, 'fd00::41');
});

test('outside the block is an error', (t) => {
  const block = newBlock('10.0.0.0/30', null);
  const cases: Array<[() => unknown, string]> = [
    [() => assignSpecific(block, '10.0.0.4', alice), 'address 10.0.0.4 is not inside block 10.0.0.0/30'],
    [() => release(block, 'fd00::1', alice), 'address fd00::1 is not inside block 10.0.0.0/30'],
    [() => setEndpoint(block, '10.0.1.0', 'ep'), 'address 10.0.1.0 is not inside block 10.0.0.0/30'],
  ];
  for (const [fn, message] of cases) t.throws(fn, { instanceOf: InvalidRequestError, message });
});

test('release: owner-aware, harmless when repeated', (t) => {
  for (const f of families) {
    const [a0 = '', a1 = ''] = f.addrs;
    const block = filled(f.cidr, 1);
    const cases: Array<[string, { node: string; handle: string }, ReleaseResult['status']]> = [
      [a0, { node: 'node-a', handle: 'pool1:alice' }, 'released'],
      [a0, { node: 'node-b', handle: 'pool1:alice' }, 'owned-by-other'],
      [a0, { node: 'node-a', handle: 'pool1:bob' }, 'owned-by-other'],
      [a1, { node: 'node-a', handle: 'pool1:alice' }, 'not-allocated'],
    ];
    for (const [ip, requester, status] of cases) {
      const r = release(block, ip, requester);
      t.is(r.status, status, `${f.name} ${ip} by ${requester.node}/${requester.handle}`);
      if (r.status === 'owned-by-other') t.deepEqual(r.owner, alice);
      if (r.status === 'released') {
        t.deepEqual(r.owner, alice);
        t.true(isEmpty(r.block));
        t.deepEqual(r.block.attributes, [], 'unreferenced attribute dropped');
        t.is(release(r.block, ip, requester).status, 'not-allocated', 'second release');
      }
    }
  }
});

test('release: freed ordinals go to the back of the free list', (t) => {
  for (const f of families) {
    const [a0 = '', a1 = '', a2 = '', a3 = ''] = f.addrs;
    let block = filled(f.cidr, 2); // a0, a1 used; free: a2, a3
    for (const ip of [a1, a0]) {
      const r = release(block, ip, alice);
      if (r.status !== 'released') throw new Error(r.status);
      block = frozen(r.block);
    }
    t.deepEqual(block.unallocated, [2, 3, 1, 0]);
    const order: string[] = [];
    for (let r = assignNext(block, bob); r !== undefined; r = assignNext(block, bob)) {
      order.push(r.ip);
      block = frozen(r.block);
    }
    t.deepEqual(order, [a2, a3, a1, a0], f.name);
  }
});

test('attributes are shared and compacted', (t) => {
  let block = filled('10.0.0.0/30', 2, alice);
  const r = assignNext(block, bob);
  if (r === undefined) throw new Error('full');
  block = r.block;
  t.deepEqual(block.attributes, [alice, bob]);
  t.deepEqual(block.allocations, [0, 0, 1, null]);
  for (const ip of ['10.0.0.0', '10.0.0.1']) {
    const rel = release(block, ip, alice);
    if (rel.status !== 'released') throw new Error(rel.status);
    block = rel.block;
  }
  t.deepEqual(block.attributes, [bob]);
  t.deepEqual(block.allocations, [null, null, 0, null]);
});

test('setEndpoint records the endpoint on one allocation', (t) => {
  const block = filled('10.0.0.0/30', 2, alice);
  const updated = setEndpoint(block, '10.0.0.1', 'ep1');
  if (updated === undefined) throw new Error('not allocated');
  // The handle names the endpoint too: `<the requester's handle>#<endpoint>`.
  t.deepEqual(ownerAt(updated, '10.0.0.1'), { ...alice, handle: 'pool1:alice#ep1', endpointId: 'ep1' });
  t.deepEqual(ownerAt(updated, '10.0.0.0'), alice);
  t.is(setEndpoint(updated, '10.0.0.1', 'ep1'), updated, 'unchanged when already set');
  t.is(setEndpoint(block, '10.0.0.3', 'ep1'), undefined, 'free address');
  // Re-pointing drops the old attribute.
  const again = setEndpoint(updated, '10.0.0.1', 'ep2');
  t.deepEqual(again?.attributes, [alice, { ...alice, handle: 'pool1:alice#ep2', endpointId: 'ep2' }]);
  // The endpoint does not change who may release: the requester's handle (Docker's ReleaseAddress
  // names only the pool) or the full one; nobody else.
  t.is(release(updated, '10.0.0.1', { node: 'node-a', handle: 'pool1:alice' }).status, 'released');
  t.is(release(updated, '10.0.0.1', { node: 'node-a', handle: 'pool1:alice#ep1' }).status, 'released');
  t.is(release(updated, '10.0.0.1', { node: 'node-a', handle: 'pool1:alice#ep2' }).status, 'owned-by-other');
  t.is(release(updated, '10.0.0.1', { node: 'node-a', handle: 'pool1:al' }).status, 'owned-by-other');
  // And the same holder asking again for the address (a swarm manager restoring its state) is
  // still a replay, not a conflict.
  t.is(assignSpecific(updated, '10.0.0.1', alice).status, 'already-owned');
  t.throws(() => setEndpoint(block, '10.0.0.0', ''), { instanceOf: InvalidRequestError });
});

test('listAllocations', (t) => {
  let block = filled('fd00::40/126', 1, alice);
  const r = assignSpecific(block, 'fd00::43', bob);
  if (r.status !== 'assigned') throw new Error(r.status);
  block = r.block;
  t.deepEqual(listAllocations(block), [
    { ip: 'fd00::40', ordinal: 0, owner: alice },
    { ip: 'fd00::43', ordinal: 3, owner: bob },
  ]);
  t.deepEqual(listAllocations(newBlock('10.0.0.0/30', null)), []);
});

test('sameOwner ignores endpointId only', (t) => {
  const cases: Array<[Owner, Owner, boolean]> = [
    [alice, { ...alice }, true],
    [alice, { ...alice, endpointId: 'x' }, true],
    [alice, bob, false],
    [alice, aliceElsewhere, false],
    [alice, { ...alice, kind: 'reserved' }, false],
  ];
  for (const [a, b, expected] of cases) t.is(sameOwner(a, b), expected);
});

test('validateOwner', (t) => {
  t.deepEqual(validateOwner({ ...alice, extra: 1 } as Owner), alice, 'extra fields dropped');
  const cases: Array<[unknown, string]> = [
    [{ node: '', handle: 'h', kind: 'container' }, 'invalid address owner: node must be a non-empty string'],
    [{ node: 'n', handle: 5, kind: 'container' }, 'invalid address owner: handle must be a non-empty string'],
    [{ node: 'n', handle: 'h', kind: 'vm' }, 'invalid address owner: kind must be one of container, gateway, reserved'],
    [{ node: 'n', handle: 'h', kind: 'gateway', endpointId: '' }, 'invalid address owner: endpointId must be a non-empty string when present'],
  ];
  for (const [owner, message] of cases) {
    t.throws(() => validateOwner(owner as Owner), { instanceOf: InvalidRequestError, message });
  }
});

test('serializeBlock / parseBlock round trip', (t) => {
  for (const f of families) {
    const r = setEndpoint(filled(f.cidr, 3), f.addrs[1] ?? '', 'ep');
    if (r === undefined) throw new Error('not allocated');
    const rel = release(r, f.addrs[0] ?? '', alice);
    if (rel.status !== 'released') throw new Error(rel.status);
    t.deepEqual(parseBlock(serializeBlock(rel.block), '/k', f.cidr), rel.block, f.name);
  }
  t.is(
    serializeBlock(filled('10.0.0.0/30', 1)),
    '{"cidr":"10.0.0.0/30","affinity":"node-a","allocations":[0,null,null,null],"unallocated":[1,2,3],"attributes":[{"node":"node-a","handle":"pool1:alice","kind":"container"}]}',
  );
});

test('parseBlock: corrupt data is a CorruptDataError naming the key, not a crash', (t) => {
  const ok = { cidr: '10.0.0.0/30', affinity: 'n', allocations: [0, null, null, null], unallocated: [1, 2, 3], attributes: [alice] };
  const cases: Array<[string, string]> = [
    ['{', 'not valid JSON'],
    ['null', 'not a JSON object'],
    [JSON.stringify({ ...ok, cidr: '10.0.0.1/30' }), 'cidr must be a canonical CIDR string, got "10.0.0.1/30"'],
    [JSON.stringify({ ...ok, cidr: 'FD00::/126' }), 'cidr must be a canonical CIDR string, got "FD00::/126"'],
    [JSON.stringify({ ...ok, cidr: '10.0.0.4/30' }), "cidr 10.0.0.4/30 does not match the key's 10.0.0.0/30"],
    [JSON.stringify({ ...ok, affinity: 5 }), 'affinity must be a node name or null'],
    [JSON.stringify({ ...ok, attributes: {} }), 'attributes must be an array'],
    [JSON.stringify({ ...ok, attributes: [{ node: 'n', kind: 'container' }] }), 'attributes[0]: handle must be a non-empty string'],
    [JSON.stringify({ ...ok, allocations: [0, null, null] }), 'allocations must be an array of 4 entries (one per address)'],
    [JSON.stringify({ ...ok, allocations: [1, null, null, null] }), 'allocations[0] must be null or an index into attributes'],
    [JSON.stringify({ ...ok, allocations: ['0', null, null, null] }), 'allocations[0] must be null or an index into attributes'],
    [JSON.stringify({ ...ok, unallocated: [0, 1, 2, 3] }), 'unallocated entry 0 is not a free ordinal, or is repeated'],
    [JSON.stringify({ ...ok, unallocated: [1, 1, 2, 3] }), 'unallocated entry 1 is not a free ordinal, or is repeated'],
    [JSON.stringify({ ...ok, unallocated: [1, 2] }), 'unallocated does not list every free ordinal'],
    [JSON.stringify({ ...ok, unallocated: 'all' }), 'unallocated must be an array'],
  ];
  for (const [text, problem] of cases) {
    t.throws(
      () => parseBlock(text, '/calico/ipam/blocks/10.0.0.0-30', '10.0.0.0/30'),
      { instanceOf: CorruptDataError, message: (m: string) => m.startsWith(`corrupt allocation block at /calico/ipam/blocks/10.0.0.0-30: ${problem}`) },
      text,
    );
  }
  t.deepEqual(parseBlock(JSON.stringify(ok), '/k', '10.0.0.0/30'), ok);
  t.deepEqual(parseBlock(JSON.stringify({ ...ok, affinity: null }), '/k').affinity, null);
});
