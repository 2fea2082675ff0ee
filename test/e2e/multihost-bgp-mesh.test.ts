// BGP mode between hosts of one subnet, no router involved: the node-to-node mesh (the default),
// then a route reflector with the mesh off, then a host with its own AS and a node-specific peer
// (a BIRD in the router namespace standing for an upstream router), and a hostile peer record
// written straight into etcd, refused before it reaches BIRD.
import test from 'ava';
import { Etcd3 } from 'etcd3';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { addressOn, runContainer } from '../harness/containers.js';
import { startCluster, type Cluster, type Host } from '../harness/multihost.js';
import { calicoctl } from '../harness/plugin.js';
import { pingUntil, until } from '../harness/multihost-probes.js';
import { HOST_BIRD, TEST_BGP_ENV, birdRoutes, startRouterBird } from '../harness/bgp.js';

const CTL = join(__dirname, '../../bin/calicoctl.js');

function block26(address: string): string {
  const o = address.split('.').map(Number);
  return `${o[0]}.${o[1]}.${o[2]}.${(o[3] ?? 0) & 0xc0}/26`;
}

interface Session {
  peerAddress: string;
  peerType: string;
  state: string;
  info: string;
}

async function status(h: Host): Promise<Session[]> {
  const r = await h.exec([process.execPath, CTL, 'node', 'status', '-o', 'json'], { env: { ...(h.plugin?.env ?? {}) } });
  return r.code === 0 ? (JSON.parse(r.stdout) as Session[]) : [];
}

/** Waits until the host's sessions are exactly `expected` ([address, type]), all Established. */
async function established(h: Host, expected: [string, string][]): Promise<Session[]> {
  const want = JSON.stringify([...expected].sort());
  return until(`${h.name}: sessions ${want} Established`, async () => {
    const s = await status(h);
    const got = JSON.stringify(s.map((x) => [x.peerAddress, x.peerType]).sort());
    return got === want && s.every((x) => x.info === 'Established') ? s : undefined;
  }, 30_000);
}

function renderedConfig(h: Host): string {
  return readFileSync(join(h.runDir, HOST_BIRD.config.slice('/run/'.length)), 'utf8');
}

test('one subnet: full mesh, then a route reflector with the mesh off, then an AS override and a node-specific peer; hostile peer data refused', async (t) => {
  t.timeout(240_000);
  let cluster: Cluster | undefined;
  let admin: Etcd3 | undefined;
  t.teardown(async () => {
    admin?.close();
    await cluster?.stop();
  });
  cluster = await startCluster({ hosts: 3, subnets: ['a', 'a', 'a'], ipv4Pool: '198.19.0.0/20', pluginEnv: TEST_BGP_ENV });
  const c = cluster;
  const [h1, h2, h3] = c.hosts as [Host, Host, Host];
  const ctl = async (args: string[]): Promise<string> => {
    const r = await calicoctl({ env: c.ctlEnv }, args);
    if (r.code !== 0) throw new Error(`calicoctl ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };

  // Full mesh: every host peers with both others; host1 reaches host3's block via host3 itself.
  await Promise.all(c.hosts.map((h) => h.run(['docker', 'network', 'create', '-d', 'calico', '--ipam-driver', 'calico-ipam', 'net1'])));
  const [c1, c3] = await Promise.all([h1, h3].map((h) => runContainer(h.docker, { image: c.image, network: 'net1' }))) as [Awaited<ReturnType<typeof runContainer>>, Awaited<ReturnType<typeof runContainer>>];
  const a1 = (await addressOn(c1, 'net1')).ipv4 ?? '';
  const a3 = (await addressOn(c3, 'net1')).ipv4 ?? '';
  await established(h1, [[h2.address, 'node-to-node mesh'], [h3.address, 'node-to-node mesh']]);
  t.like(await until('host1 route to host3 block', async () => (await birdRoutes(h1)).find((r) => r.dst === block26(a3)), 20_000), { gateway: h3.address });
  t.is((await pingUntil(c1, a3, 15_000)).code, 0, 'mesh: 1→3');

  // Route reflector: host2 reflects, the mesh goes; host1 and host3 keep each other's routes
  // (next hop unchanged: still the other host) through host2 alone.
  await ctl(['node', 'set', h2.name, '--route-reflector', '1.0.0.1']);
  await ctl(['bgp', 'config', 'set', '--mesh', 'off']);
  await established(h1, [[h2.address, 'route reflector']]);
  await established(h2, [[h1.address, 'route reflector'], [h3.address, 'route reflector']]);
  t.regex(renderedConfig(h2), /neighbor 198\.18\.1\.11 as 64512;\n {2}direct;\n {2}rr client;\n {2}rr cluster id 1\.0\.0\.1;/);
  t.notRegex(renderedConfig(h1), /mesh_/);
  await ctl(['pool', 'add', '198.19.64.0/20']);
  await h3.run(['docker', 'network', 'create', '-d', 'calico', '--ipam-driver', 'calico-ipam', '--subnet', '198.19.64.0/20', 'net2']);
  const n3 = await runContainer(h3.docker, { image: c.image, network: 'net2' });
  const b2 = block26((await addressOn(n3, 'net2')).ipv4 ?? '');
  t.like(await until('host1 learns host3 new block via the reflector', async () => (await birdRoutes(h1)).find((r) => r.dst === b2), 20_000), { gateway: h3.address });
  t.truthy((await birdRoutes(h1)).find((r) => r.dst === block26(a3)), 'kept host3 block');
  t.is((await pingUntil(c3, a1, 15_000)).code, 0, 'reflected: 3→1');

  // host1: AS 64600 of its own and a node-specific peer (the router's BIRD, AS 65000).
  const router = await startRouterBird(c, [], [{ name: 'host1', address: h1.address, asNumber: 64600, local: c.router.addresses.a }]);
  await ctl(['node', 'set', h1.name, '--as', '64600']);
  await ctl(['bgp', 'peer', 'add', c.router.addresses.a, '--as', '65000', '--node', h1.name]);
  const sessions = await established(h1, [[h2.address, 'route reflector'], [c.router.addresses.a, 'node specific']]);
  t.true(sessions.every((s) => s.state === 'up'));
  const conf = renderedConfig(h1);
  t.regex(conf, /local 198\.18\.1\.11 as 64600;/);
  t.regex(conf, /protocol bgp node_198_18_1_1 from calico_peer \{\n {2}neighbor 198\.18\.1\.1 as 65000;\n {2}direct;\n {2}allow local as 1;\n\}/);
  t.regex(renderedConfig(h2), /neighbor 198\.18\.1\.11 as 64600;/, 'others see host1 with its AS');
  t.truthy(await until('router learns host1 block', async () => (await router.routes()).find((r) => r.dst === block26(a1)), 20_000));

  // A peer record written straight into etcd with an address that would break out of BIRD's
  // configuration: refused and reported; the sessions stay up.
  admin = new Etcd3({ hosts: c.etcd.endpoints });
  await admin.put(`${c.datastorePrefix}/bgp/peers/global/evil`).value(JSON.stringify({ address: '198.18.1.1; } protocol bgp x { neighbor 1.2.3.4 as 1', asNumber: 65000 }));
  await admin.put(`${c.datastorePrefix}/bgp/peers/global/198.18.1.99`).value(JSON.stringify({ address: '198.18.1.99', asNumber: 0 }));
  await until('host1 reports the refused peers', async () => (((h1.plugin?.output() ?? '').match(/BGP: refused/g)?.length ?? 0) >= 2 ? true : undefined), 15_000);
  t.notRegex(renderedConfig(h1), /protocol bgp x|198\.18\.1\.99/);
  await established(h1, [[h2.address, 'route reflector'], [c.router.addresses.a, 'node specific']]);
  await router.stop();
});
