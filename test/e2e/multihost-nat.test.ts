// Outgoing NAT (issue 8), on the multi-host harness with its outside namespace: two hosts on
// subnet A, the router, and behind the router the "outside" (203.0.113.10, in no pool, reached
// only inside the test's namespaces). The router has no route to container addresses.
//   - the default pool, created by the daemon with its defaults, masquerades: the outside sees
//     host1's fabric address as the source of a container on host1;
//   - traffic to any pool is never masqueraded: another host's container, and a container on a
//     second pool, see the container's own address;
//   - a pool added without --nat-outgoing is not masqueraded: the outside cannot answer it until
//     the router is given a route back to that pool, and then sees the container's address.
// IPv4 only: the fabric has no IPv6 (IPv6: test/integration/policy-kernel.test.ts, "IPv6 natOutgoing").
import test from 'ava';
import type Docker from 'dockerode';
import { once } from 'node:events';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { addressOn, runContainer } from '../harness/containers.js';
import { CLUSTER_BASE_DIR, leftoversOf, startCluster, type Cluster, type Host } from '../harness/multihost.js';
import { calicoctl } from '../harness/plugin.js';
import { sourceReporter, sourceSeenBy, until } from '../harness/multihost-probes.js';

const DEFAULT_POOL = '198.19.0.0/20';
const PLAIN_POOL = '198.19.64.0/20';
const PORT = 7000;

function inPool(address: string, pool: string): boolean {
  const [net, len] = pool.split('/');
  const n = (a: string): number => a.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
  const size = 2 ** (32 - Number(len));
  return Math.floor(n(address) / size) === Math.floor(n(net ?? '') / size);
}

test('outgoing NAT: default pool masquerades to the outside, never to a pool; a pool without natOutgoing does not', async (t) => {
  t.timeout(170_000);
  let cluster: Cluster | undefined;
  t.teardown(async () => {
    await cluster?.stop();
  });
  cluster = await startCluster({ hosts: 2, subnets: ['a', 'a'], ipv4Pool: DEFAULT_POOL, outside: true });
  const c = cluster;
  const [h1, h2] = c.hosts as [Host, Host];
  const outside = c.outside;
  if (outside === undefined) throw new Error('the cluster has no outside namespace');
  const ctl = async (args: string[]): Promise<string> => {
    const r = await calicoctl({ env: c.ctlEnv }, args);
    if (r.code !== 0) throw new Error(`calicoctl ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };

  // The outside listens and answers each connection with the source address it saw. It is left
  // running on purpose: stop() must end it (checked at the end).
  const listener = outside.spawn(sourceReporter(PORT, true));
  const listenerEnded = once(listener, 'exit').then(() => true);
  t.teardown(() => {
    listener.kill('SIGKILL');
  });
  await until('the outside listening', async () => ((await outside.exec(['busybox', 'netstat', '-tln'])).stdout.includes(`:${PORT} `) ? true : undefined), 10_000);

  // A network without --subnet (as compose creates) on both hosts, on the only pool so far: the
  // one the daemons created from CALICO_IPV4POOL_CIDR, with outgoing NAT on by default.
  await Promise.all(c.hosts.map((h) => h.run(['docker', 'network', 'create', '-d', 'calico', '--ipam-driver', 'calico-ipam', 'natnet'])));
  const start = async (h: Host, network: string, cmd?: string[]): Promise<{ container: Docker.Container; address: string }> => {
    const container = await runContainer(h.docker, { image: c.image, network, ...(cmd !== undefined && { cmd }) });
    return { container, address: (await addressOn(container, network)).ipv4 };
  };
  const [c1, r2] = await Promise.all([start(h1, 'natnet'), start(h2, 'natnet', sourceReporter(PORT))]);
  t.true(inPool(c1.address, DEFAULT_POOL), c1.address);

  // A second pool, added by an operator without --nat-outgoing, and a network on it on host1.
  await ctl(['pool', 'add', PLAIN_POOL]);
  const pools = JSON.parse(await ctl(['pool', 'list', '-o', 'json'])) as { cidr: string; natOutgoing: boolean }[];
  t.deepEqual(pools.map((p) => [p.cidr, p.natOutgoing]).sort(), [[DEFAULT_POOL, true], [PLAIN_POOL, false]]);
  await h1.run(['docker', 'network', 'create', '-d', 'calico', '--ipam-driver', 'calico-ipam', '--subnet', PLAIN_POOL, 'plain']);
  const [rp, cp] = await Promise.all([start(h1, 'plain', sourceReporter(PORT)), start(h1, 'plain')]);
  t.true(inPool(cp.address, PLAIN_POOL), cp.address);
  // The plain network's profile admits natnet's members too (by default it admits only its own).
  const profile = join(c.dir, 'plain-profile.yaml');
  await writeFile(profile, [
    'apiVersion: projectcalico.org/v3',
    'kind: Profile',
    'metadata:',
    '  name: plain',
    'spec:',
    '  ingress:',
    '  - action: Allow',
    '    source:',
    '      selector: has(plain) || has(natnet)',
    '  egress:',
    '  - action: Allow',
    '  labelsToApply:',
    '    plain: ""',
    '',
  ].join('\n'));
  await ctl(['apply', '-f', profile]);

  // host1 masquerades exactly the natOutgoing pool, to destinations outside every pool.
  const masq = await until('host1 NAT sets', async () => {
    const r = await h1.exec(['ipset', 'list', 'cali-4-masq']);
    return r.code === 0 ? r.stdout : undefined;
  }, 10_000);
  t.regex(masq, new RegExp(`^${DEFAULT_POOL}$`, 'm'));
  t.notRegex(masq, /198\.19\.64\./);
  const allPools = (await h1.run(['ipset', 'list', 'cali-4-pools'])).stdout;
  for (const p of [DEFAULT_POOL, PLAIN_POOL]) t.regex(allPools, new RegExp(`^${p}$`, 'm'), p);

  // To the outside: from host1's address (the router could not have answered the container's).
  const out1 = await sourceSeenBy(c1.container, outside.address, PORT);
  t.is(out1.peer, h1.address, `the outside saw: ${out1.output}`);

  // To another host's container and to a container on another pool: the container's own address.
  const to2 = await sourceSeenBy(c1.container, r2.address, PORT);
  t.is(to2.peer, c1.address, `host2's container saw: ${to2.output}`);
  const toPlain = await sourceSeenBy(c1.container, rp.address, PORT);
  t.is(toPlain.peer, c1.address, `the container on ${PLAIN_POOL} saw: ${toPlain.output}`);

  // The pool without natOutgoing keeps its source address: the outside's answer goes to the
  // router, which has no route to the pool, so nothing comes back...
  const lost = await sourceSeenBy(cp.container, outside.address, PORT, 2_000);
  t.is(lost.peer, undefined, `no answer without a route back: ${lost.output}`);
  // ...until the router learns the pool is behind host1 (as an operator announcing a routed pool
  // would arrange), and then the outside sees the container's own address.
  await c.router.run(['ip', 'route', 'add', PLAIN_POOL, 'via', h1.address]);
  const routed = await sourceSeenBy(cp.container, outside.address, PORT);
  t.is(routed.peer, cp.address, `the outside saw: ${routed.output}`);
  // host1's default-pool container is still masqueraded with that route in place.
  t.is((await sourceSeenBy(c1.container, outside.address, PORT)).peer, h1.address);

  // stop() removes everything, the outside namespace and the listener left in it included.
  const id = c.id;
  await c.stop();
  t.deepEqual(c.remnants(), []);
  t.deepEqual(leftoversOf(CLUSTER_BASE_DIR, id), []);
  t.true(await Promise.race([listenerEnded, sleep(5_000).then(() => false)]), 'the outside listener was ended by stop()');
});
