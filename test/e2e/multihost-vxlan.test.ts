// VXLAN between hosts, per pool (calicoctl pool add --vxlan-mode): three hosts of the multi-host
// harness, host1 and host2 on subnet A, host3 on subnet B behind a router, one etcd. One network
// per pool on every host (docker network create --subnet <pool>):
//   CrossSubnet: host1 reaches host3 over VXLAN, host2 by a plain route;
//   Always: host1 reaches host2 over VXLAN too;
//   Never: host3 stays unreachable from host1.
// The VNI and port come from the plugins' environment; veths lose VXLAN's 50 bytes of MTU.
import test from 'ava';
import type Docker from 'dockerode';
import { addressOn, exec, runContainer } from '../harness/containers.js';
import { startCluster, type Cluster, type Host } from '../harness/multihost.js';
import { calicoctl } from '../harness/plugin.js';
import { type KernelRoute, ourRoutes, pingUntil, until } from '../harness/multihost-probes.js';

const POOLS = { cross: '198.19.0.0/20', always: '198.19.16.0/20', never: '198.19.32.0/20' } as const;
type Net = keyof typeof POOLS;

/** The /26 block (the pools' default block size) holding an address. */
function block26(address: string): string {
  const o = address.split('.').map(Number);
  return `${o[0]}.${o[1]}.${o[2]}.${(o[3] ?? 0) & 0xc0}/26`;
}

test('VXLAN per pool: CrossSubnet across the router, Always everywhere, Never not at all', async (t) => {
  t.timeout(170_000);
  let cluster: Cluster | undefined;
  t.teardown(async () => {
    await cluster?.stop();
  });
  cluster = await startCluster({ hosts: 3, ipv4Pool: 'none', pluginEnv: { CALICO_VXLAN_VNI: '4097', CALICO_VXLAN_PORT: '4790' } });
  const c = cluster;
  const [h1, h2, h3] = c.hosts as [Host, Host, Host];

  for (const [args, mode] of [[[POOLS.cross, '--vxlan-mode', 'CrossSubnet'], 'CrossSubnet'], [[POOLS.always, '--vxlan-mode', 'Always'], 'Always'], [[POOLS.never], 'Never']] as const) {
    const r = await calicoctl({ env: c.ctlEnv }, ['pool', 'add', ...args]);
    t.is(r.code, 0, r.stderr);
    if (mode !== 'Never') t.regex(r.stdout, new RegExp(`VXLAN ${mode}`));
  }
  const listed = JSON.parse((await calicoctl({ env: c.ctlEnv }, ['pool', 'list', '-o', 'json'])).stdout) as { cidr: string; vxlanMode: string }[];
  t.deepEqual(listed.map((p) => [p.cidr, p.vxlanMode]).sort(), [[POOLS.cross, 'CrossSubnet'], [POOLS.always, 'Always'], [POOLS.never, 'Never']].sort());

  await Promise.all(c.hosts.flatMap((h) => (Object.keys(POOLS) as Net[]).map((n) => h.run(['docker', 'network', 'create', '-d', 'calico', '--ipam-driver', 'calico-ipam', '--subnet', POOLS[n], n]))));
  const start = async (h: Host, n: Net): Promise<{ container: Docker.Container; address: string }> => {
    const container = await runContainer(h.docker, { image: c.image, network: n });
    return { container, address: (await addressOn(container, n)).ipv4 ?? '' };
  };
  const [x1, x2, x3, al1, al2, nv1, nv3] = await Promise.all([
    start(h1, 'cross'), start(h2, 'cross'), start(h3, 'cross'),
    start(h1, 'always'), start(h2, 'always'),
    start(h1, 'never'), start(h3, 'never'),
  ]);

  // host1's VXLAN device, as configured, with entries for both other hosts.
  const dev = JSON.parse((await h1.run(['ip', '-j', '-d', 'link', 'show', 'vxlan.calico'])).stdout) as [{ mtu: number; linkinfo: { info_data: { id: number; port: number; local: string; learning: boolean } } }];
  t.like(dev[0], { mtu: 1450, linkinfo: { info_data: { id: 4097, port: 4790, local: h1.address, learning: false } } });
  const neigh = (await h1.run(['ip', '-4', 'neigh', 'show', 'dev', 'vxlan.calico'])).stdout;
  for (const h of [h2, h3]) t.regex(neigh, new RegExp(`^${h.address.replace(/\./g, '\\.')} lladdr \\S+ PERMANENT`, 'm'), h.name);
  t.regex((await h1.run(['bridge', 'fdb', 'show', 'dev', 'vxlan.calico'])).stdout, new RegExp(`dst ${h3.address.replace(/\./g, '\\.')} self permanent`));

  // Routes on host1: CrossSubnet plain to host2, VXLAN to host3; Always VXLAN to host2; Never: nothing to host3.
  const routes = await until('host1 routes', async () => {
    const rs = await ourRoutes(h1);
    return [x2, x3, al2].every((x) => rs.some((r) => r.dst === block26(x.address))) ? rs : undefined;
  }, 15_000);
  const route = (x: { address: string }): KernelRoute | undefined => routes.find((r) => r.dst === block26(x.address));
  t.like(route(x2), { gateway: h2.address, dev: 'eth0' }, 'CrossSubnet, same subnet: plain route');
  t.like(route(x3), { gateway: h3.address, dev: 'vxlan.calico', flags: ['onlink'] }, 'CrossSubnet, across the router: VXLAN');
  t.like(route(al2), { gateway: h2.address, dev: 'vxlan.calico', flags: ['onlink'] }, 'Always: VXLAN on the same subnet too');
  t.is(route(nv3), undefined, 'Never: no route to host3');

  // Traffic: over those routes, both ways.
  for (const [from, to, what] of [[x1, x3, 'cross 1→3'], [x3, x1, 'cross 3→1'], [x1, x2, 'cross 1→2'], [al1, al2, 'always 1→2'], [al2, al1, 'always 2→1']] as const) {
    const p = await pingUntil(from.container, to.address);
    t.is(p.code, 0, `${what}: ${p.output}`);
  }
  t.not((await pingUntil(nv1.container, nv3.address, 2_000)).code, 0, 'Never: host3 unreachable');
  const txBefore = (await h1.run(['cat', '/sys/class/net/vxlan.calico/statistics/tx_packets'])).stdout.trim();
  t.is((await pingUntil(x1.container, x3.address)).code, 0);
  t.true(Number((await h1.run(['cat', '/sys/class/net/vxlan.calico/statistics/tx_packets'])).stdout.trim()) > Number(txBefore), 'through the VXLAN device');

  // Veths leave room for VXLAN's 50 bytes; a packet of the full veth MTU crosses.
  t.is((await exec(x1.container, ['cat', '/sys/class/net/eth0/mtu'])).output.trim(), '1450');
  const big = await exec(x1.container, ['ping', '-c', '1', '-W', '2', '-s', '1422', x3.address]);
  t.is(big.code, 0, big.output);
});
