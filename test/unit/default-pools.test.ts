import test from 'ava';
import { parseConfig } from '../../config/config';
import { defaultPools, ensureDefaultPools } from '../../daemon/default-pools';
import { makePool, type Pool, type PoolInput } from '../../ipam/pool';

test('default pools masquerade by default, as in Calico', (t) => {
  const pools = defaultPools(parseConfig({}, 'h'));
  t.deepEqual(pools.map((p) => [p.cidr, p.natOutgoing]), [['192.168.0.0/16', true], ['fd80:24e2:f998:72d6::/64', true]]);
});

test('CALICO_IPV4POOL_NAT_OUTGOING / CALICO_IPV6POOL_NAT_OUTGOING turn it off per family', (t) => {
  const v4off = defaultPools(parseConfig({ CALICO_IPV4POOL_NAT_OUTGOING: 'false' }, 'h'));
  t.deepEqual(v4off.map((p) => p.natOutgoing), [false, true]);
  const v6off = defaultPools(parseConfig({ CALICO_IPV6POOL_NAT_OUTGOING: 'FALSE', CALICO_IPV4POOL_VXLAN: 'Always' }, 'h'));
  t.deepEqual(v6off.map((p) => [p.natOutgoing, p.vxlanMode]), [[true, 'Always'], [false, 'Never']]);
});

/** The two calls ensureDefaultPools makes, over a list of pools. */
function fakeAllocator(existing: Pool[]): { listPools(): Promise<Pool[]>; addPool(input: PoolInput): Promise<{ pool: Pool; created: boolean }>; added: Pool[] } {
  const added: Pool[] = [];
  return {
    added,
    listPools: () => Promise.resolve([...existing, ...added]),
    addPool: (input) => {
      const pool = makePool(input);
      added.push(pool);
      return Promise.resolve({ pool, created: true });
    },
  };
}

test('existing pools keep their natOutgoing: only a family without any pool gets the default', async (t) => {
  const old = makePool({ cidr: '10.1.0.0/16', natOutgoing: false });
  const alloc = fakeAllocator([old]);
  await ensureDefaultPools(alloc, defaultPools(parseConfig({}, 'h')));
  t.deepEqual(alloc.added.map((p) => [p.cidr, p.natOutgoing]), [['fd80:24e2:f998:72d6::/64', true]], 'IPv6 created, IPv4 left alone');
  t.false((await alloc.listPools()).find((p) => p.cidr === '10.1.0.0/16')?.natOutgoing);
});
