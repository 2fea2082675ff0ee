import test from 'ava';
import { assignNext, newBlock, ownerAt, parseBlock, release, serializeBlock, setEndpoint, type Owner } from '../../ipam/block';
import type { Endpoint } from '../../model/endpoint';
import { allocationKey, planReconcile, type PlanAllocation, type PlanInput } from '../../workload/reconcile-plan';

const NODE = 'node-a';
const NOW = Date.parse('2026-01-01T12:00:00Z');
const GRACE = 60_000;
const ago = (ms: number): string => new Date(NOW - ms).toISOString();
const OLD = ago(10 * 60_000);
const YOUNG = ago(5_000);
const isDocker = (h: string): boolean => h.startsWith('docker:');

function record(id: string, ip: string, createdAt = OLD, node = NODE): Endpoint {
  return {
    id,
    networkId: 'net1',
    node,
    hostInterface: `cali${id.slice(0, 11)}`,
    ipv4: [`${ip}/32`],
    ipv6: [],
    mac: '',
    profiles: [],
    labels: {},
    ready: true,
    profilesPending: false,
    gatewayIndex: 0,
    createdAt,
  };
}

function alloc(ip: string, owner: Partial<Owner> = {}): PlanAllocation {
  return { ip, owner: { node: NODE, handle: 'docker:CalicoPoolIPv4', kind: 'container', allocatedAt: OLD, ...owner } };
}

function input(over: Partial<PlanInput>): PlanInput {
  return {
    node: NODE,
    now: NOW,
    graceMs: GRACE,
    records: [],
    knownEndpoints: new Set(),
    links: [],
    hostIfPrefix: 'cali',
    allocations: [],
    ownsHandle: isDocker,
    firstSeen: new Map(),
    ...over,
  };
}

const EP1 = 'a'.repeat(64);
const EP2 = 'b'.repeat(64);
const EP3 = 'c'.repeat(64);

test('a record Docker still knows is kept with its veth and address', (t) => {
  const plan = planReconcile(input({
    records: [record(EP1, '10.0.0.1')],
    knownEndpoints: new Set([EP1]),
    links: [`cali${EP1.slice(0, 11)}`],
    allocations: [alloc('10.0.0.1', { endpointId: EP1 })],
  }));
  t.deepEqual(plan.staleEndpoints, []);
  t.deepEqual(plan.strayLinks, []);
  t.deepEqual(plan.releases, []);
});

test('a record Docker no longer knows is stale, and its address is released', (t) => {
  const plan = planReconcile(input({
    records: [record(EP1, '10.0.0.1'), record(EP2, '10.0.0.2')],
    knownEndpoints: new Set([EP2]),
    links: [`cali${EP1.slice(0, 11)}`, `cali${EP2.slice(0, 11)}`],
    allocations: [alloc('10.0.0.1', { endpointId: EP1 }), alloc('10.0.0.2', { endpointId: EP2 })],
  }));
  t.deepEqual(plan.staleEndpoints.map((s) => s.endpoint.id), [EP1]);
  // The stale record's veth goes with the record (endpoint removal), not as a stray.
  t.deepEqual(plan.strayLinks, []);
  t.deepEqual(plan.releases.map((r) => r.ip), ['10.0.0.1']);
  t.is(plan.releases[0]?.owner.endpointId, EP1);
});

test('a stale record whose allocation names no endpoint still frees its address', (t) => {
  const plan = planReconcile(input({ records: [record(EP1, '10.0.0.1')], allocations: [alloc('10.0.0.1')] }));
  t.deepEqual(plan.staleEndpoints.map((s) => s.endpoint.id), [EP1]);
  t.deepEqual(plan.releases.map((r) => r.ip), ['10.0.0.1']);
});

test('when Docker cannot be asked no record is stale, and their addresses stay', (t) => {
  const plan = planReconcile(input({
    records: [record(EP1, '10.0.0.1')],
    knownEndpoints: undefined,
    allocations: [alloc('10.0.0.1', { endpointId: EP1 })],
  }));
  t.deepEqual(plan.staleEndpoints, []);
  t.deepEqual(plan.releases, []);
});

test('a record younger than the grace period is not stale (CreateEndpoint answered, Docker not stored yet)', (t) => {
  const plan = planReconcile(input({ records: [record(EP1, '10.0.0.1', YOUNG)], allocations: [alloc('10.0.0.1', { allocatedAt: YOUNG })] }));
  t.deepEqual(plan.staleEndpoints, []);
  t.deepEqual(plan.releases, []);
});

test('records of another node are never stale', (t) => {
  const plan = planReconcile(input({ records: [record(EP1, '10.0.0.1', OLD, 'node-b')] }));
  t.deepEqual(plan.staleEndpoints, []);
});

test('veths of ours that no record names are strays', (t) => {
  const plan = planReconcile(input({
    records: [record(EP1, '10.0.0.1')],
    knownEndpoints: new Set([EP1]),
    links: [`cali${EP3.slice(0, 11)}`, `cali${EP1.slice(0, 11)}`, `cali${EP3.slice(0, 11)}`],
  }));
  t.deepEqual(plan.strayLinks, [`cali${EP3.slice(0, 11)}`]);
  t.deepEqual(plan.keptLinks, []);
});

test('a veth without a record whose endpoint Docker still knows is kept, not cut off', (t) => {
  const plan = planReconcile(input({ knownEndpoints: new Set([EP3]), links: [`cali${EP3.slice(0, 11)}`, `cali${EP2.slice(0, 11)}`] }));
  t.deepEqual(plan.strayLinks, [`cali${EP2.slice(0, 11)}`]);
  t.deepEqual(plan.keptLinks, [`cali${EP3.slice(0, 11)}`]);
});

test('an old allocation no record uses is released; a pending one within the grace period is not', (t) => {
  const plan = planReconcile(input({
    allocations: [alloc('10.0.0.7'), alloc('10.0.0.8', { allocatedAt: YOUNG }), alloc('10.0.0.9', { allocatedAt: ago(GRACE) })],
  }));
  t.deepEqual(plan.releases.map((r) => r.ip), ['10.0.0.7', '10.0.0.9']);
  t.deepEqual(plan.pending.map((a) => a.ip), ['10.0.0.8']);
  t.regex(plan.releases[0]?.reason ?? '', /no endpoint was ever recorded/);
});

test('allocations of other holders are never released', (t) => {
  const plan = planReconcile(input({
    allocations: [
      alloc('10.0.0.1', { node: 'node-b' }),
      alloc('10.0.0.2', { node: '@swarm', handle: 'swarm:CalicoGlobalPoolIPv4' }),
      alloc('10.0.0.3', { kind: 'reserved' }),
      alloc('10.0.0.4', { kind: 'gateway' }),
      alloc('10.0.0.5', { handle: 'calicoctl' }),
      alloc('10.0.0.6', { node: 'node-b', endpointId: EP1 }),
    ],
  }));
  t.deepEqual(plan.releases, []);
  t.deepEqual(plan.pending, []);
});

test('an allocation naming a live endpoint is kept even if the record lists another address', (t) => {
  const plan = planReconcile(input({
    records: [record(EP1, '10.0.0.1')],
    knownEndpoints: new Set([EP1]),
    allocations: [alloc('10.0.0.1', { endpointId: EP1 }), alloc('10.0.0.2', { endpointId: EP1 })],
  }));
  t.deepEqual(plan.releases, []);
});

test('an address used by a live record is kept whoever it names; IPv6 records count too', (t) => {
  const v6 = { ...record(EP1, '10.0.0.1'), ipv6: ['fd00::5/128'] };
  const plan = planReconcile(input({
    records: [v6],
    knownEndpoints: new Set([EP1]),
    allocations: [alloc('10.0.0.1'), alloc('fd00::5', { handle: 'docker:CalicoPoolIPv6' })],
  }));
  t.deepEqual(plan.releases, []);
});

test('an allocation from before allocatedAt existed is aged from when it was first seen', (t) => {
  const legacy: PlanAllocation = { ip: '10.0.0.7', owner: { node: NODE, handle: 'docker:CalicoPoolIPv4', kind: 'container' } };
  const fresh = planReconcile(input({ allocations: [legacy] }));
  t.deepEqual(fresh.releases, []);
  t.is(fresh.pending.length, 1);
  const later = planReconcile(input({ allocations: [legacy], firstSeen: new Map([[allocationKey(legacy), NOW - GRACE]]) }));
  t.deepEqual(later.releases.map((r) => r.ip), ['10.0.0.7']);
});

test('a conditional release frees only the allocation that was read', (t) => {
  const owner: Owner = { node: NODE, handle: 'docker:CalicoPoolIPv4', kind: 'container', allocatedAt: OLD };
  const taken = assignNext(newBlock('10.0.0.0/30', NODE), owner);
  if (taken === undefined) throw new Error('block full');
  const requester = { node: NODE, handle: owner.handle };
  // Released and handed out again to the same handle since the plan read it: left alone.
  t.is(release(taken.block, taken.ip, requester, { ...owner, allocatedAt: ago(1) }).status, 'owned-by-other');
  t.is(release(taken.block, taken.ip, requester, owner).status, 'released');
  // Without a condition (Docker's own ReleaseAddress) any allocation of the holder is freed.
  t.is(release(taken.block, taken.ip, requester).status, 'released');
});

test('an allocation records its time, endpoint and container, and old blocks without them still decode', (t) => {
  const owner: Owner = { node: NODE, handle: 'docker:CalicoPoolIPv4', kind: 'container', allocatedAt: OLD };
  const taken = assignNext(newBlock('10.0.0.0/30', NODE), owner);
  if (taken === undefined) throw new Error('block full');
  const named = setEndpoint(taken.block, taken.ip, EP1, 'f'.repeat(64));
  if (named === undefined) throw new Error('not allocated');
  const back = parseBlock(serializeBlock(named), 'test');
  t.deepEqual(ownerAt(back, taken.ip), { ...owner, handle: `docker:CalicoPoolIPv4#${EP1}`, endpointId: EP1, containerId: 'f'.repeat(64) });
  // Recording the endpoint again without the container keeps the container.
  t.is(setEndpoint(named, taken.ip, EP1), named);
  const legacy = JSON.stringify({ cidr: '10.0.0.0/30', affinity: NODE, allocations: [0, null, null, null], unallocated: [1, 2, 3], attributes: [{ node: NODE, handle: 'docker:CalicoPoolIPv4', kind: 'container' }] });
  t.deepEqual(ownerAt(parseBlock(legacy, 'legacy'), '10.0.0.0'), { node: NODE, handle: 'docker:CalicoPoolIPv4', kind: 'container' });
  t.throws(() => parseBlock(legacy.replace('"kind":"container"', '"kind":"container","allocatedAt":"yesterday"'), 'bad'), { message: /allocatedAt/ });
});
