import test from 'ava';
import { PolicyState } from '../../agent/policy-model';
import { Keys } from '../../datastore/keys';
import type { Logger } from '../../lib/log';
import { encodeProfile } from '../../model/profile';
import { defaultProfile } from '../../policy/profile-resource';

const keys = new Keys('/t');
const errors: string[] = [];
const log: Logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: (f, ...a) => errors.push([f, ...a].join(' ')) };

/** Whether this node's endpoint is in the model and ready. */
function isLocalReady(m: PolicyState, endpointId: string): boolean {
  return m.input().localEndpoints.some((e) => e.id === endpointId && e.ready);
}

function endpoint(node: string, id: string, extra: Record<string, unknown> = {}): { key: string; value: string; revision: string } {
  const value = JSON.stringify({ id, networkId: 'n'.repeat(12), node, hostInterface: `cali${id.slice(0, 11)}`, ipv4: [`198.18.0.${id.length}/32`], ipv6: [], profiles: ['net1'], createdAt: 'x', ...extra });
  return { key: keys.endpoint(node, id), value, revision: '1' };
}

test('local endpoints are this node’s; every endpoint feeds selector membership with effective labels', (t) => {
  const m = new PolicyState(keys, 'a', log);
  const profile = { ...defaultProfile('net1', 'a'), labelsToApply: { net1: '', tier: 'x' } };
  t.true(m.update(keys.profile('net1'), { key: keys.profile('net1'), value: encodeProfile(profile), revision: '1' }));
  const local = endpoint('a', 'aaaaaaaaaaaa', { labels: { tier: 'web' }, ready: false });
  const remote = endpoint('b', 'bbbbbbbbbbbbbb');
  t.true(m.update(local.key, local));
  t.true(m.update(remote.key, remote));
  const input = m.input();
  t.deepEqual(input.localEndpoints, [{ id: 'aaaaaaaaaaaa', hostIf: 'caliaaaaaaaaaaa', ipv4: ['198.18.0.12/32'], ipv6: [], profiles: ['net1'], ready: false }]);
  t.deepEqual(input.remoteAndLocalEndpoints.map((e) => e.labels), [{ net1: '', tier: 'web' }, { net1: '', tier: 'x' }]);
  t.deepEqual([...input.profiles.keys()], ['net1']);
  t.false(isLocalReady(m, 'aaaaaaaaaaaa'));
});

test('keys policy does not depend on are ignored; deletes remove', (t) => {
  const m = new PolicyState(keys, 'a', log);
  t.false(m.update(keys.block('198.18.0.0/24', '198.18.0.0/26'), { key: keys.block('198.18.0.0/24', '198.18.0.0/26'), value: '{}', revision: '1' }));
  t.false(m.update(keys.network('n'), { key: keys.network('n'), value: '{}', revision: '1' }));
  const ep = endpoint('a', 'cccccccccccc');
  m.update(ep.key, ep);
  t.true(isLocalReady(m, 'cccccccccccc'));
  t.true(m.update(ep.key, undefined));
  t.deepEqual(m.input().localEndpoints, []);
});

test('pools feed NAT: natOutgoing pools and all pools', (t) => {
  const m = new PolicyState(keys, 'a', log);
  const pool = (cidr: string, natOutgoing: boolean) => ({ key: keys.pool(cidr), value: JSON.stringify({ cidr, blockSize: 26, disabled: false, natOutgoing }), revision: '1' });
  m.update(keys.pool('198.18.0.0/24'), pool('198.18.0.0/24', true));
  m.update(keys.pool('198.19.0.0/24'), pool('198.19.0.0/24', false));
  t.deepEqual(m.input().natOutgoingPools, ['198.18.0.0/24']);
  t.deepEqual(m.input().allPools, ['198.18.0.0/24', '198.19.0.0/24']);
});

test('a malformed record is logged and treated as absent', (t) => {
  const m = new PolicyState(keys, 'a', log);
  const good = endpoint('a', 'dddddddddddd');
  m.update(good.key, good);
  m.update(good.key, { ...good, value: '{"id": 5}' });
  t.deepEqual(m.input().localEndpoints, []);
  t.true(errors.some((e) => e.includes(good.key)));
  m.update(keys.profile('bad'), { key: keys.profile('bad'), value: 'not json', revision: '2' });
  t.is(m.input().profiles.size, 0);
});

test('an endpoint change policy does not read (the namespace Join records) is not a policy change', (t) => {
  const m = new PolicyState(keys, 'a', log);
  const ep = endpoint('a', 'dddddddddddd');
  t.true(m.update(ep.key, ep));
  const joined = endpoint('a', 'dddddddddddd', { sandbox: '/var/run/docker/netns/1f2e3d4c5b6a', gatewayIndex: 1 });
  t.false(m.update(joined.key, joined), 'Join must not wait for an apply it caused for nothing');
  const labelled = endpoint('a', 'dddddddddddd', { sandbox: '/var/run/docker/netns/1f2e3d4c5b6a', gatewayIndex: 1, labels: { role: 'db' } });
  t.true(m.update(labelled.key, labelled), 'labels are policy');
});
