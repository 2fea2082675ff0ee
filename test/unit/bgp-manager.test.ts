// The BGP manager without BIRD: datastore keys in, rendered configuration out to a fake applier.
import test from 'ava';
import { BgpManager } from '../../agent/bgp-manager';
import type { RoutesApplier } from '../../agent/routes-manager';
import { RoutesManager } from '../../agent/routes-manager';
import type { KeyValue } from '../../datastore/datastore';
import { Keys } from '../../datastore/keys';
import { encodePool, makePool } from '../../ipam/pool';
import { logger } from '../../lib/log';

const keys = new Keys('/bgp-test');
const kv = (key: string, value: unknown): KeyValue => ({ key, value: typeof value === 'string' ? value : JSON.stringify(value), revision: '1' });
const node = (name: string, ipv4Address: string): KeyValue => kv(keys.node(name), { name, version: 'x', datastore: 'etcd', startedAt: '2024-01-01T00:00:00Z', ipv4Address });
const timers = { keepaliveSeconds: 2, holdSeconds: 6, connectRetrySeconds: 1 };

function fake(): { applied: string[]; withdrawn: number; bird: { apply(c: string): Promise<void>; withdraw(): Promise<void>; resync(): void } } {
  const state = { applied: [] as string[], withdrawn: 0 };
  return {
    ...state,
    get applied() {
      return state.applied;
    },
    get withdrawn() {
      return state.withdrawn;
    },
    bird: {
      apply: async (c) => void state.applied.push(c),
      withdraw: async () => void state.withdrawn++,
      resync: () => undefined,
    },
  };
}

test('nodes, blocks, peers and settings become one configuration; a hostile peer is left out', async (t) => {
  const f = fake();
  const m = new BgpManager(keys, 'h1', f.bird, logger('bgp-test'), { timers });
  for (const x of [node('h1', '198.18.1.11/24'), node('h2', '198.18.1.12/24')]) t.true(m.update(x.key, x));
  const block = kv(keys.block('10.0.0.0/16', '10.0.0.0/26'), { cidr: '10.0.0.0/26', affinity: 'h1' });
  t.true(m.update(block.key, block));
  const evil = kv(keys.bgpGlobalPeer('x'), { address: '1.2.3.4; }\nprotocol', asNumber: 65000 });
  t.true(m.update(evil.key, evil));
  const good = kv(keys.bgpGlobalPeer('198.18.1.1'), { address: '198.18.1.1', asNumber: 65000 });
  t.true(m.update(good.key, good));
  const own = kv(keys.bgpNode('h1'), { asNumber: 64600 });
  t.true(m.update(own.key, own));
  const otherHostsPeer = kv(keys.bgpNodePeer('h2', '198.18.1.2'), { address: '198.18.1.2', asNumber: 65001 });
  t.false(m.update(otherHostsPeer.key, otherHostsPeer), "another host's peer does not concern this one");
  await m.apply();
  const conf = f.applied.at(-1) ?? '';
  t.regex(conf, /local 198\.18\.1\.11 as 64600;/);
  t.regex(conf, /route 10\.0\.0\.0\/26 blackhole;/);
  t.regex(conf, /protocol bgp mesh_198_18_1_12 /);
  t.regex(conf, /protocol bgp global_198_18_1_1 /);
  t.notRegex(conf, /1\.2\.3\.4|198\.18\.1\.2 /);
});

test('its own node record gone (removed for good): BIRD is withdrawn, not reconfigured', async (t) => {
  const f = fake();
  const m = new BgpManager(keys, 'h1', f.bird, logger('bgp-test'), { timers });
  const me = node('h1', '198.18.1.11/24');
  m.update(me.key, me);
  await m.apply();
  t.is(f.applied.length, 1);
  m.update(me.key, undefined);
  await m.apply();
  t.is(f.applied.length, 1);
  t.is(f.withdrawn, 1);
});

test('bird backend: the routes manager keeps only local blackholes, no VXLAN', async (t) => {
  const applied: Parameters<RoutesApplier['apply']>[] = [];
  const m = new RoutesManager(keys, 'h1', { apply: async (...a) => void applied.push(a), resync: () => undefined }, logger('bgp-test'), 'bird');
  for (const x of [node('h1', '198.18.1.11/24'), node('h2', '198.18.2.12/24')]) m.update(x.key, x);
  const pool = kv(keys.pool('10.0.0.0/16'), encodePool(makePool({ cidr: '10.0.0.0/16', vxlanMode: 'Always' })));
  m.update(pool.key, pool);
  for (const [cidr, affinity] of [['10.0.0.0/26', 'h1'], ['10.0.0.64/26', 'h2']] as const) {
    const b = kv(keys.block('10.0.0.0/16', cidr), { cidr, affinity });
    m.update(b.key, b);
  }
  await m.apply();
  t.deepEqual(applied.at(-1), [[{ kind: 'blackhole', dst: '10.0.0.0/26', family: 4 }], undefined]);
});
