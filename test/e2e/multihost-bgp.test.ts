// BGP mode (CALICO_NETWORKING_BACKEND=bird) against a top-of-rack router: three hosts of the
// multi-host harness (host1, host2 on subnet A, host3 on subnet B), each running the plugin and,
// under it, its own BIRD (AS 64512); a BIRD in the router namespace (AS 65000) peers with every
// host by eBGP. The mesh is off and each host peers with its subnet's router address as a
// node-specific peer, as in a rack design. No route is added by hand: the router learns every
// host's blocks over BGP and forwards container traffic natively, without VXLAN.
import test from 'ava';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { addressOn, runContainer } from '../harness/containers.js';
import { startCluster, type Cluster, type Host } from '../harness/multihost.js';
import { calicoctl } from '../harness/plugin.js';
import { pingUntil, until } from '../harness/multihost-probes.js';
import { HOST_BIRD, ROUTER_AS, TEST_BGP_ENV, birdRoutes, sessionOf, startRouterBird } from '../harness/bgp.js';

const CTL = join(__dirname, '../../bin/calicoctl.js');

/** The /26 block (the pools' default block size) holding an address. */
function block26(address: string): string {
  const o = address.split('.').map(Number);
  return `${o[0]}.${o[1]}.${o[2]}.${(o[3] ?? 0) & 0xc0}/26`;
}

/** calicoctl run inside a host (it reads that host's BIRD socket). */
async function ctlOn(h: Host, args: string[]): Promise<string> {
  const env = { ...(h.plugin?.env ?? {}) };
  return (await h.run([process.execPath, CTL, ...args], { env })).stdout;
}

function birdPid(h: Host): number | undefined {
  const file = join(h.runDir, HOST_BIRD.pidFile.slice('/run/'.length));
  return existsSync(file) ? Number(readFileSync(file, 'utf8').trim()) : undefined;
}

test('BGP to a top-of-rack router: native routes across subnets, new blocks announced, restart keeps, crash recovers, link loss times out, removal withdraws', async (t) => {
  t.timeout(240_000);
  let cluster: Cluster | undefined;
  t.teardown(async () => {
    await cluster?.stop();
  });
  cluster = await startCluster({ hosts: 3, ipv4Pool: '198.19.0.0/20', pluginEnv: TEST_BGP_ENV });
  const c = cluster;
  const [h1, h2, h3] = c.hosts as [Host, Host, Host];
  const ctl = async (args: string[]): Promise<string> => {
    const r = await calicoctl({ env: c.ctlEnv }, args);
    if (r.code !== 0) throw new Error(`calicoctl ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };

  await ctl(['bgp', 'config', 'set', '--mesh', 'off']);
  for (const h of [h1, h2, h3]) await ctl(['bgp', 'peer', 'add', h.gateway, '--as', String(ROUTER_AS), '--node', h.name]);
  t.regex(await ctl(['bgp', 'peer', 'list']), /node host3\s+198\.18\.2\.1\s+65000/);
  const router = await startRouterBird(c, [h1, h2, h3]);

  await Promise.all(c.hosts.map((h) => h.run(['docker', 'network', 'create', '-d', 'calico', '--ipam-driver', 'calico-ipam', 'net1'])));
  const containers = await Promise.all([h1, h3].map((h) => runContainer(h.docker, { image: c.image, network: 'net1' })));
  const [c1, c3] = containers as [(typeof containers)[0], (typeof containers)[0]];
  const [a1, a3] = (await Promise.all(containers.map((x) => addressOn(x, 'net1')))).map((a) => a.ipv4 ?? '') as [string, string];

  // The router's table holds each host's block, via that host.
  const rtr = await until('router routes to host1 and host3 blocks', async () => {
    const rs = await router.routes();
    return [a1, a3].every((a) => rs.some((r) => r.dst === block26(a))) ? rs : undefined;
  }, 30_000);
  t.like(rtr.find((r) => r.dst === block26(a1)), { gateway: h1.address });
  t.like(rtr.find((r) => r.dst === block26(a3)), { gateway: h3.address });

  // host1 reaches host3's block through the router, written by BIRD; no VXLAN device anywhere.
  const r13 = await until('host1 route to host3 block', async () => (await birdRoutes(h1)).find((r) => r.dst === block26(a3)), 20_000);
  t.like(r13, { gateway: h1.gateway, dev: 'eth0' });
  t.like(await until('host3 route to host1 block', async () => (await birdRoutes(h3)).find((r) => r.dst === block26(a1)), 20_000), { gateway: h3.gateway });
  for (const h of [h1, h3]) t.not((await h.exec(['ip', 'link', 'show', 'vxlan.calico'])).code, 0, `${h.name}: no VXLAN device`);
  // The routes manager kept only the blackhole of the local block (proto 80).
  t.deepEqual(JSON.parse((await h1.run(['ip', '-j', '-4', 'route', 'show', 'proto', '80'])).stdout || '[]').map((r: { dst: string; type?: string }) => [r.dst, r.type]), [[block26(a1), 'blackhole']]);
  for (const [from, to, what] of [[c1, a3, '1→3'], [c3, a1, '3→1']] as const) {
    const p = await pingUntil(from, to, 15_000);
    t.is(p.code, 0, `${what}: ${p.output}`);
  }

  // calicoctl node status on host1: its session to the router, node-specific, Established.
  const status = JSON.parse(await ctlOn(h1, ['node', 'status', '-o', 'json'])) as { peerAddress: string; peerType: string; state: string; info: string }[];
  t.deepEqual(status.map((s) => [s.peerAddress, s.peerType, s.state, s.info]), [[h1.gateway, 'node specific', 'up', 'Established']]);

  // A block newly claimed on host1 (a second pool) reaches the router and host3.
  await ctl(['pool', 'add', '198.19.64.0/20']);
  await h1.run(['docker', 'network', 'create', '-d', 'calico', '--ipam-driver', 'calico-ipam', '--subnet', '198.19.64.0/20', 'net2']);
  const n1 = await runContainer(h1.docker, { image: c.image, network: 'net2' });
  const b2 = block26((await addressOn(n1, 'net2')).ipv4 ?? '');
  t.like(await until('router learns the new block', async () => (await router.routes()).find((r) => r.dst === b2), 20_000), { gateway: h1.address });
  t.like(await until('host3 learns the new block', async () => (await birdRoutes(h3)).find((r) => r.dst === b2), 20_000), { gateway: h3.gateway });

  // A daemon restart keeps BIRD (same process) and the router's session (same "since").
  const pidBefore = birdPid(h1);
  const sinceBefore = sessionOf(await router.birdc(['show', 'protocols']), 'host1')?.since;
  t.truthy(sinceBefore);
  await h1.plugin?.restart();
  await ctlOn(h1, ['node', 'status']); // answers through the adopted BIRD
  t.is(birdPid(h1), pidBefore, 'BIRD survived the daemon restart');
  const afterRestart = sessionOf(await router.birdc(['show', 'protocols']), 'host1');
  t.is(afterRestart?.since, sinceBefore, 'the session was never reset');
  t.is(afterRestart?.info, 'Established');
  t.truthy((await router.routes()).find((r) => r.dst === block26(a1)), 'routes kept');

  // host3's BIRD crashes: the supervisor starts it again (same configuration), the session and
  // the routes come back.
  const crashed = birdPid(h3);
  await h3.run(['kill', '-KILL', String(crashed)]);
  await until('host3 BIRD restarted and Established again', async () => {
    const pid = birdPid(h3);
    const s = sessionOf(await router.birdc(['show', 'protocols']), 'host3');
    return pid !== undefined && pid !== crashed && s?.info === 'Established' ? true : undefined;
  }, 30_000);
  t.truthy(await until('router relearns host3 block', async () => (await router.routes()).find((r) => r.dst === block26(a3)), 20_000));

  // host2 loses its link: the router drops the session after the hold time (6 s), not before.
  const c2 = await runContainer(h2.docker, { image: c.image, network: 'net1' });
  const b22 = block26((await addressOn(c2, 'net1')).ipv4 ?? '');
  await until('router learns host2 block', async () => (await router.routes()).find((r) => r.dst === b22), 20_000);
  const cut = Date.now();
  await h2.disconnect();
  await until('router drops host2 block', async () => ((await router.routes()).some((r) => r.dst === b22) ? undefined : true), 30_000);
  const lost = Date.now() - cut;
  // The router's hold timer runs from the last keepalive it heard, which came up to one keepalive
  // interval (2 s, plus BIRD's jitter) before the cut: 6 s after that, at least ~3.5 s after the
  // cut (a Cease or a closed socket would take well under a second).
  t.true(lost >= 3_000, `withdrawn after ${lost} ms: by the hold timer, not at once`);
  t.regex(sessionOf(await router.birdc(['show', 'protocols']), 'host2')?.info ?? '', /Hold timer expired/);

  // host1 taken out for good (while its daemon runs): its BIRD stops and the router withdraws
  // host1's routes at once (a Cease, not a hold timer).
  const removedAt = Date.now();
  await ctl(['node', 'remove', h1.name, '--force']);
  await until('router withdraws host1 blocks', async () => ((await router.routes()).some((r) => r.dst === block26(a1) || r.dst === b2) ? undefined : true), 20_000);
  const took = Date.now() - removedAt;
  // host1's BIRD may withdraw the routes a moment before it stops and closes the session: wait
  // for the session to go, well within the 6 s hold time.
  const session1 = async (): Promise<string> => sessionOf(await router.birdc(['show', 'protocols']), 'host1')?.info ?? '';
  const s1 = { info: await until('router\'s session to host1 down', async () => {
    const info = await session1();
    return info === 'Established' ? undefined : info;
  }, 3_000).catch(() => session1()) };
  t.notRegex(s1.info, /Hold timer expired/, `router's session to host1: ${JSON.stringify(s1)} after ${took} ms`);
  t.not(s1.info, 'Established');
  await until('host1 BIRD stopped', async () => (birdPid(h1) === undefined || !existsSync(`/proc/${birdPid(h1) ?? 0}`) ? true : undefined), 10_000);
  t.falsy((await birdRoutes(h3)).find((r) => r.dst === block26(a1)), 'host3 forgot host1');
  t.log(`hold-time loss ${lost} ms; removal withdrawn in ${took} ms`);
  await router.stop();
});
