// Validation for a workload on several networks: its namespace path (Docker's SandboxKey, which
// reaches `nsenter --net=`) and the gateways of its interface number.
import test from 'ava';
import { assertNetnsPath } from '../../dataplane/names';
import { CONTAINER_GATEWAY_V4, HOST_LINK_LOCAL_V6, MAX_WORKLOAD_INTERFACES, workloadGateways } from '../../dataplane/veth';
import { InvalidRequestError } from '../../lib/errors';

test('assertNetnsPath accepts absolute paths of plain characters', (t) => {
  for (const good of [
    '/var/run/docker/netns/1f2e3d4c5b6a',
    '/run/netns/x',
    '/var/run/docker/netns/default',
    '/run/netns/cni-1234-abcd_ef.0',
    '/proc/1234/ns/net',
    '/run/docker/netns/a:b',
  ]) {
    t.is(assertNetnsPath(good), good, good);
  }
});

test('assertNetnsPath refuses relative paths, dot segments, separators of any tool, and oddities', (t) => {
  for (const bad of [
    '',
    '/',
    'run/netns/x',
    './run/netns/x',
    'x',
    '/run/netns/..',
    '/run/netns/../../etc/passwd',
    '/run/./netns/x',
    '/run/netns/.',
    '/run/netns/x y',
    '/run/netns/x\ny',
    '/run/netns/x\n',
    '\n/run/netns/x',
    '/run/netns/x;true',
    '/run/netns/x$(true)',
    '/run/netns/x`true`',
    '/run/netns/x|true',
    '/run/netns/x&',
    '/run/netns/x\t',
    '/run/netns/x\0',
    '/run/netns//x',
    '/run/netns/x/',
    '/run/netns/*',
    '/run/netns/~x',
    '--net=/run/netns/x',
    '/run/netns/ü',
    `/${'a'.repeat(256)}`,
    `/run/${'a/'.repeat(20)}x`,
  ]) {
    t.throws(() => assertNetnsPath(bad), { instanceOf: InvalidRequestError, message: /invalid network namespace path/ }, JSON.stringify(bad));
  }
  for (const notString of [undefined, null, 42, ['/run/netns/x'], { path: '/run/netns/x' }]) {
    t.throws(() => assertNetnsPath(notString as unknown as string), { instanceOf: InvalidRequestError }, JSON.stringify(notString));
  }
});

test('workloadGateways: index 0 keeps Calico\'s gateways; index N gets 169.254.1.N+1 and fe80::ecee:eeff:fe00:<N hex>', (t) => {
  t.deepEqual(workloadGateways(0), { v4: CONTAINER_GATEWAY_V4, v6: HOST_LINK_LOCAL_V6 });
  t.deepEqual(workloadGateways(1), { v4: '169.254.1.2', v6: 'fe80::ecee:eeff:fe00:1' });
  t.deepEqual(workloadGateways(15), { v4: '169.254.1.16', v6: 'fe80::ecee:eeff:fe00:f' });
  t.deepEqual(workloadGateways(MAX_WORKLOAD_INTERFACES - 1), { v4: '169.254.1.200', v6: 'fe80::ecee:eeff:fe00:c7' });
  // All distinct from each other and from index 0's.
  const all = Array.from({ length: MAX_WORKLOAD_INTERFACES }, (_, i) => workloadGateways(i));
  t.is(new Set(all.map((g) => g.v4)).size, MAX_WORKLOAD_INTERFACES);
  t.is(new Set(all.map((g) => g.v6)).size, MAX_WORKLOAD_INTERFACES);
});

test('workloadGateways refuses indexes out of range or not integers', (t) => {
  for (const bad of [-1, MAX_WORKLOAD_INTERFACES, MAX_WORKLOAD_INTERFACES + 1, 255, 1.5, Number.NaN, Number.POSITIVE_INFINITY, -0.5]) {
    t.throws(() => workloadGateways(bad), { instanceOf: InvalidRequestError, message: /out of range/ }, String(bad));
  }
  t.throws(() => workloadGateways('1' as unknown as number), { instanceOf: InvalidRequestError });
});
