// The routes manager without a kernel: datastore keys in, plan out to a fake applier.
import test from 'ava';
import type { Route, VxlanPlan } from '../../agent/route-plan';
import { RoutesManager } from '../../agent/routes-manager';
import type { KeyValue } from '../../datastore/datastore';
import { Keys } from '../../datastore/keys';
import { encodePool, makePool } from '../../ipam/pool';
import { logger } from '../../lib/log';

const keys = new Keys('/rm-test');
const kv = (key: string, value: string): KeyValue => ({ key, value, revision: '1' });
const node = (name: string, ipv4Address: string) =>
  kv(keys.node(name), JSON.stringify({ name, version: 'x', datastore: 'etcd', startedAt: '2024-01-01T00:00:00Z', ipv4Address }));

test('pool modes from the datastore drive VXLAN routes and the device; a removed pool stops them', async (t) => {
  const applied: Array<{ routes: readonly Route[]; vxlan: VxlanPlan | undefined }> = [];
  const m = new RoutesManager(keys, 'h1', { apply: async (routes, vxlan) => void applied.push({ routes, vxlan }), resync: () => undefined }, logger('rm-test'));
  const pool = (mode: 'Never' | 'CrossSubnet') => kv(keys.pool('10.0.0.0/16'), encodePool(makePool({ cidr: '10.0.0.0/16', vxlanMode: mode })));
  t.true(m.update(node('h1', '198.18.1.11/24').key, node('h1', '198.18.1.11/24')));
  t.true(m.update(node('h3', '198.18.2.13/24').key, node('h3', '198.18.2.13/24')));
  const block = kv(keys.block('10.0.0.0/16', '10.0.0.128/26'), JSON.stringify({ cidr: '10.0.0.128/26', affinity: 'h3' }));
  t.true(m.update(block.key, block));
  t.true(m.update(pool('CrossSubnet').key, pool('CrossSubnet')), 'pools concern the routes manager');

  await m.apply();
  t.deepEqual(applied.at(-1)?.routes, [{ kind: 'vxlan', dst: '10.0.0.128/26', via: '198.18.2.13', family: 4 }]);
  t.like(applied.at(-1)?.vxlan, { local: '198.18.1.11', peers: [{ node: 'h3', address: '198.18.2.13' }] });

  m.update(pool('Never').key, pool('Never'));
  await m.apply();
  t.deepEqual(applied.at(-1), { routes: [], vxlan: undefined });

  m.update(pool('CrossSubnet').key, pool('CrossSubnet'));
  m.update(pool('CrossSubnet').key, undefined);
  await m.apply();
  t.deepEqual(applied.at(-1), { routes: [], vxlan: undefined }, 'a deleted pool encapsulates nothing');

  // A corrupt pool is ignored (logged), not fatal: it replaces nothing, so nothing is replanned.
  t.false(m.update(pool('CrossSubnet').key, kv(pool('CrossSubnet').key, '{')));
  await m.apply();
  t.deepEqual(applied.at(-1), { routes: [], vxlan: undefined });
});

test('writes that leave what routes depend on as it was do not replan: allocations in a block, labels on an endpoint', (t) => {
  const m = new RoutesManager(keys, 'h1', { apply: async () => undefined, resync: () => undefined }, logger('rm-test'));
  const blockKey = keys.block('10.0.0.0/16', '10.0.0.128/26');
  const block = (allocations: (number | null)[], affinity = 'h3') => kv(blockKey, JSON.stringify({ cidr: '10.0.0.128/26', affinity, allocations }));
  t.true(m.update(blockKey, block([null, null])));
  t.false(m.update(blockKey, block([0, null])), 'an address allocated');
  t.false(m.update(blockKey, block([null, null])), 'an address released');
  t.true(m.update(blockKey, block([null, null], 'h4')), 'the block moved to another host');
  const epKey = keys.endpoint('h3', 'e1');
  const endpoint = (labels: Record<string, string>, ipv4 = ['10.0.0.130/32']) =>
    kv(epKey, JSON.stringify({ id: 'e1', networkId: 'n1', node: 'h3', hostInterface: 'cali0', ipv4, ipv6: [], profiles: ['n'], labels, ready: true, createdAt: '2026-12-01T00:00:00Z' }));
  t.true(m.update(epKey, endpoint({})));
  t.false(m.update(epKey, endpoint({ role: 'web' })), 'labels only');
  t.true(m.update(epKey, endpoint({ role: 'web' }, ['10.0.0.131/32'])), 'another address');
  t.true(m.update(epKey, undefined));
  t.false(m.update(epKey, undefined), 'deleting what is not there');
});
