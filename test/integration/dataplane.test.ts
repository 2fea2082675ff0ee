// The endpoint dataplane against the real kernel, inside throwaway namespaces: a "host" namespace
// H (with an uplink veth carrying its default route, as eth0 would) and "container" namespaces
// configured the way Docker configures them after Join.

import test from 'ava';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { DataplaneError, InvalidRequestError } from '../../lib/errors.js';
import { assertIfName, isValidIfName } from '../../lib/interface-names.js';
import {
  hostVethName,
  isValidEndpointId,
  parseHostAddress,
  tempPeerName,
} from '../../dataplane/names.js';
import {
  createEndpointVeth,
  ensureHostForwarding,
  HOST_LINK_LOCAL_V6,
  HOST_VETH_MAC,
  linkExists,
  linkInfo,
  removeEndpointVeth,
  routesFor,
  workloadGateways,
} from '../../dataplane/veth.js';
import { nativeUnavailable } from '../../dataplane/native-addon.js';
import { execInNetns, ipIn, netnsRegistry, type NetnsRegistry, HOST_V4, HOST_V6, makeRoutedHost, plumbContainer } from '../harness/netns.js';

const BUSYBOX = '/bin/busybox';
const MTU = 1400;
const H_V4 = HOST_V4;
const H_V6 = HOST_V6;

function endpointId(): string {
  return randomBytes(32).toString('hex');
}


interface Container {
  ns: string;
  id: string;
  hostIf: string;
  v4?: string;
  v6?: string;
  gatewayIPv6?: string;
}

/** createEndpointVeth in H, then what Docker does: move the peer into C as eth0 and configure it
 * with the gateways Join answered (those of interface number `gatewayIndex`). */
async function attach(reg: NetnsRegistry, h: string, addrs: { v4?: string; v6?: string }, gatewayIndex?: number): Promise<Container> {
  const id = endpointId();
  const hostIf = hostVethName('cali', id);
  const peerIf = tempPeerName(id);
  const res = await createEndpointVeth(
    {
      hostIf,
      peerIf,
      mtu: MTU,
      ...(addrs.v4 ? { ipv4: [`${addrs.v4}/32`] } : {}),
      ...(addrs.v6 ? { ipv6: [addrs.v6] } : {}),
      ...(gatewayIndex !== undefined && { gatewayIndex }),
    },
    { netns: h },
  );
  const gatewayV4 = workloadGateways(gatewayIndex ?? 0).v4;
  const c = await plumbContainer(reg, h, peerIf, { ...addrs, gatewayV4, ...(res.gatewayIPv6 !== undefined && { gatewayIPv6: res.gatewayIPv6 }) }, 'ctc');
  return { ns: c, id, hostIf, ...addrs, ...(res.gatewayIPv6 ? { gatewayIPv6: res.gatewayIPv6 } : {}) };
}

/** One echo, a few tries (a first packet can race neighbour setup); resolves to success. */
async function ping(ns: string, target: string): Promise<boolean> {
  const applet = target.includes(':') ? 'ping6' : 'ping';
  for (let i = 0; i < 3; i++) {
    try {
      await execInNetns(ns, BUSYBOX, [applet, '-c', '1', '-W', '2', target], { timeoutMs: 10_000 });
      return true;
    } catch {
      // try again
    }
  }
  return false;
}

/** The host end's usable (not tentative, DAD not failed) IPv6 link-local address, read at once:
 * createEndpointVeth adds it with nodad, so there is nothing to wait for. */
async function linkLocal(ns: string, hostIf: string): Promise<string | undefined> {
  const { stdout } = await ipIn(ns, ['-j', '-6', 'addr', 'show', 'dev', hostIf, 'scope', 'link']);
  const ifs = JSON.parse(stdout) as Array<{ addr_info?: Array<{ family?: string; local?: string; tentative?: boolean; dadfailed?: boolean }> }>;
  return ifs
    .flatMap((i) => i.addr_info ?? [])
    .find((a) => a.family === 'inet6' && a.local?.toLowerCase().startsWith('fe80:') === true && a.tentative !== true && a.dadfailed !== true)?.local;
}

async function sysctl(ns: string, key: string): Promise<string> {
  return (await execInNetns(ns, 'sysctl', ['-n', key])).stdout.trim();
}

async function allRouteDsts(ns: string): Promise<string[]> {
  const out: string[] = [];
  for (const fam of ['-4', '-6']) {
    const { stdout } = await ipIn(ns, ['-j', fam, 'route', 'show', 'table', 'all']);
    for (const r of JSON.parse(stdout) as Array<{ dst: string }>) out.push(r.dst);
  }
  return out;
}

test.before(() => {
  if (!existsSync(BUSYBOX)) throw new Error(`${BUSYBOX} missing: install busybox-static`);
});

test('names: host and temporary peer names, validators', (t) => {
  const id = 'ABCDEF0123456789abcdef';
  t.is(hostVethName('cali', id), 'caliabcdef01234');
  t.is(tempPeerName(id), 'tmpabcdef01234');
  t.not(hostVethName('cali', id), tempPeerName(id));
  t.throws(() => hostVethName('cali', 'xyz'), { instanceOf: InvalidRequestError });
  t.throws(() => hostVethName('toolong', id), { instanceOf: InvalidRequestError });
  t.false(isValidEndpointId('abc'));
  t.false(isValidEndpointId('0123456789ag'));
  t.true(isValidEndpointId('0123456789ab'));
  for (const bad of ['', '.', '..', 'a/b', 'a b', 'x'.repeat(16), 'eth0;rm', 'a\nb']) {
    t.false(isValidIfName(bad), bad);
  }
  for (const good of ['eth0', 'a.b', 'cali-1_2', 'x'.repeat(15)]) t.is(assertIfName(good), good);
  t.deepEqual(parseHostAddress('10.0.0.5/32'), { family: 4, address: '10.0.0.5', cidr: '10.0.0.5/32' });
  t.deepEqual(parseHostAddress('fd00::5'), { family: 6, address: 'fd00::5', cidr: 'fd00::5/128' });
  for (const bad of ['10.0.0.5/24', '10.0.0.256', 'fe80::1%eth0', 'fd00::5/64', '10.0.0.5 dev lo', '']) {
    t.throws(() => parseHostAddress(bad), { instanceOf: InvalidRequestError }, bad);
  }
  t.throws(() => parseHostAddress('fd00::1', 4), { instanceOf: InvalidRequestError });
});

test('IPv4 endpoint: link, MTU, sysctls, /32 route; container reaches the host', async (t) => {
  const reg = netnsRegistry(t);
  const h = await makeRoutedHost(reg, 'cth');
  const c = await attach(reg, h, { v4: '10.65.0.2' });

  const link = await linkInfo(c.hostIf, { netns: h });
  t.truthy(link);
  t.true(link?.flags?.includes('UP'));
  t.is(link?.mtu, MTU);
  t.is(link?.address, HOST_VETH_MAC);
  const { stdout } = await ipIn(c.ns, ['-j', 'link', 'show', 'dev', 'eth0']);
  t.is((JSON.parse(stdout) as Array<{ mtu: number }>)[0]?.mtu, MTU);

  t.is(await sysctl(h, `net/ipv4/conf/${c.hostIf}/proxy_arp`), '1');
  t.is(await sysctl(h, `net/ipv4/neigh/${c.hostIf}/proxy_delay`), '0');
  const routes = await routesFor(c.hostIf, { netns: h });
  t.deepEqual(
    routes.filter((r) => r.family === 4).map((r) => ({ dst: r.dst, scope: r.scope })),
    [{ dst: '10.65.0.2', scope: 'link' }],
  );
  t.true(await ping(c.ns, H_V4), `ping ${H_V4} from the container`);
});

test('two IPv4 containers on one host reach each other', async (t) => {
  const reg = netnsRegistry(t);
  const h = await makeRoutedHost(reg, 'cth');
  const c1 = await attach(reg, h, { v4: '10.65.0.11' });
  const c2 = await attach(reg, h, { v4: '10.65.0.12' });
  t.true(await ping(c1.ns, '10.65.0.12'));
  t.true(await ping(c2.ns, '10.65.0.11'));
});

test('IPv6: /128 route, proxy_ndp, gateway is the host end link-local; ping6 across', async (t) => {
  const reg = netnsRegistry(t);
  const h = await makeRoutedHost(reg, 'cth');
  const c1 = await attach(reg, h, { v4: '10.65.0.21', v6: 'fd65::21' });
  const c2 = await attach(reg, h, { v6: 'fd65::22' });

  t.is(c1.gatewayIPv6, HOST_LINK_LOCAL_V6);
  t.is(await linkLocal(h, c1.hostIf), HOST_LINK_LOCAL_V6);
  t.is(await sysctl(h, `net/ipv6/conf/${c1.hostIf}/proxy_ndp`), '1');
  t.is(await sysctl(h, `net/ipv6/conf/${c1.hostIf}/accept_ra`), '0');
  t.is(await sysctl(h, `net/ipv6/conf/${c1.hostIf}/disable_ipv6`), '0');
  const v6 = (await routesFor(c1.hostIf, { netns: h })).filter((r) => r.family === 6).map((r) => r.dst);
  t.true(v6.includes('fd65::21'), JSON.stringify(v6));
  // Exactly one link-local on the host end: ours, not a kernel-generated second one.
  const { stdout } = await ipIn(h, ['-j', '-6', 'addr', 'show', 'dev', c1.hostIf]);
  const addrs = (JSON.parse(stdout) as Array<{ addr_info: Array<{ local: string }> }>).flatMap((i) => i.addr_info.map((a) => a.local));
  t.deepEqual(addrs, [HOST_LINK_LOCAL_V6]);

  t.true(await ping(c1.ns, H_V6), 'ping6 host');
  t.true(await ping(c1.ns, 'fd65::22'), 'ping6 c1 -> c2');
  t.true(await ping(c2.ns, 'fd65::21'), 'ping6 c2 -> c1');
  t.true(await ping(c1.ns, H_V4), 'dual-stack container still reaches the host over IPv4');
});

/** The host end's IPv6 addresses, sorted, each with whether it is usable (not tentative, no DAD failure). */
async function hostEndV6(ns: string, hostIf: string): Promise<string[]> {
  const { stdout } = await ipIn(ns, ['-j', '-6', 'addr', 'show', 'dev', hostIf]);
  const ifs = JSON.parse(stdout) as Array<{ addr_info?: Array<{ local?: string; prefixlen?: number; tentative?: boolean; dadfailed?: boolean }> }>;
  return ifs
    .flatMap((i) => i.addr_info ?? [])
    .map((a) => `${a.local ?? '?'}/${a.prefixlen ?? '?'}${a.tentative === true || a.dadfailed === true ? ' (not usable)' : ''}`)
    .sort();
}

test("a workload's second interface (gatewayIndex 1): the host end carries its own IPv6 gateway too; both gateways work", async (t) => {
  const reg = netnsRegistry(t);
  const h = await makeRoutedHost(reg, 'cth');
  const c = await attach(reg, h, { v4: '10.65.0.41', v6: 'fd65::41' }, 1);

  t.is(c.gatewayIPv6, 'fe80::ecee:eeff:fe00:1');
  t.deepEqual(await hostEndV6(h, c.hostIf), [`${HOST_LINK_LOCAL_V6}/64`, 'fe80::ecee:eeff:fe00:1/64'].sort(), 'both link-locals, usable at once');
  const v6 = (await routesFor(c.hostIf, { netns: h })).filter((r) => r.family === 6).map((r) => r.dst);
  t.true(v6.includes('fd65::41'), JSON.stringify(v6));
  t.is(await sysctl(h, `net/ipv4/conf/${c.hostIf}/proxy_arp`), '1');
  // The container's routes point at 169.254.1.2 and fe80::ecee:eeff:fe00:1: proxy ARP answers
  // the one, the host end's own address the other.
  t.true(await ping(c.ns, H_V4), `ping ${H_V4} via 169.254.1.2`);
  t.true(await ping(c.ns, H_V6), `ping6 ${H_V6} via fe80::ecee:eeff:fe00:1`);

  // Another workload's first interface on the same host keeps Calico's gateways, and both reach
  // each other.
  const first = await attach(reg, h, { v4: '10.65.0.42', v6: 'fd65::42' });
  t.is(first.gatewayIPv6, HOST_LINK_LOCAL_V6);
  t.deepEqual(await hostEndV6(h, first.hostIf), [`${HOST_LINK_LOCAL_V6}/64`]);
  t.true(await ping(c.ns, 'fd65::42'));
  t.true(await ping(first.ns, '10.65.0.41'));
});

test('gatewayIndex without IPv6: no IPv6 address on the host end, no gatewayIPv6; IPv4 via 169.254.1.N+1', async (t) => {
  const reg = netnsRegistry(t);
  const h = await makeRoutedHost(reg, 'cth');
  const c = await attach(reg, h, { v4: '10.65.0.43' }, 15);
  t.is(c.gatewayIPv6, undefined);
  t.deepEqual(await hostEndV6(h, c.hostIf), []);
  t.true(await ping(c.ns, H_V4), `ping ${H_V4} via 169.254.1.16`);
  await t.throwsAsync(
    createEndpointVeth({ hostIf: 'calioutofrange', peerIf: 'tmpoutofrange', mtu: MTU, ipv4: ['10.65.0.44'], gatewayIndex: 200 }, { netns: h }),
    { instanceOf: InvalidRequestError },
  );
  t.false(await linkExists('calioutofrange', { netns: h }), 'refused before anything was created');
});

test('removeEndpointVeth deletes the pair and its routes, and is idempotent', async (t) => {
  const reg = netnsRegistry(t);
  const h = await makeRoutedHost(reg, 'cth');
  const c = await attach(reg, h, { v4: '10.65.0.31', v6: 'fd65::31' });
  t.true(await linkExists(c.hostIf, { netns: h }));

  t.true(await removeEndpointVeth(c.hostIf, { netns: h }));
  t.false(await linkExists(c.hostIf, { netns: h }));
  t.deepEqual(await routesFor(c.hostIf, { netns: h }), []);
  const dsts = await allRouteDsts(h);
  t.false(dsts.includes('10.65.0.31'));
  t.false(dsts.includes('fd65::31'));
  // The container end went with it.
  await t.throwsAsync(ipIn(c.ns, ['link', 'show', 'dev', 'eth0']));

  t.false(await removeEndpointVeth(c.hostIf, { netns: h }));
  // Only "Cannot find device" is swallowed: a missing namespace is still an error.
  await t.throwsAsync(removeEndpointVeth(c.hostIf, { netns: `nonexistent-${process.pid}` }), {
    instanceOf: DataplaneError,
  });
});

for (const via of ['netlink', 'ip'] as const) test(`createEndpointVeth rolls back (${via}): existing name, route conflict, bad input`, async (t) => {
  const useIp = via === 'ip';
  const reg = netnsRegistry(t);
  const h = await makeRoutedHost(reg, 'cth');
  const before = async () => ({
    links: (JSON.parse((await ipIn(h, ['-j', 'link', 'show'])).stdout) as Array<{ ifname: string }>)
      .map((l) => l.ifname)
      .sort(),
    // Only the test's own prefixes: link-local addresses of the uplink appear asynchronously.
    routes: (await allRouteDsts(h)).filter((d) => /^(10\.65\.|fd65:)/.test(d)).sort(),
  });

  // 1. Host name already taken: fails on `link add`, the existing link is left alone.
  const id1 = endpointId();
  const host1 = hostVethName('cali', id1);
  await ipIn(h, ['link', 'add', host1, 'type', 'veth', 'peer', 'name', 'keep1']);
  const s1 = await before();
  const e1 = await t.throwsAsync(
    createEndpointVeth({ hostIf: host1, peerIf: tempPeerName(id1), mtu: MTU, ipv4: ['10.65.0.41'] }, { netns: h, useIp }),
    { instanceOf: DataplaneError },
  );
  t.regex(e1?.message ?? '', new RegExp(`link add ${host1}.*File exists`));
  t.true(await linkExists(host1, { netns: h }));
  t.deepEqual(await before(), s1);

  // 2. Route already present (the address is in use elsewhere): the new pair is deleted again.
  await ipIn(h, ['route', 'add', '10.65.0.42/32', 'dev', 'upl0']);
  const s2 = await before();
  const id2 = endpointId();
  const e2 = await t.throwsAsync(
    createEndpointVeth(
      { hostIf: hostVethName('cali', id2), peerIf: tempPeerName(id2), mtu: MTU, ipv4: ['10.65.0.43', '10.65.0.42'] },
      { netns: h, useIp },
    ),
    { instanceOf: DataplaneError },
  );
  t.regex(e2?.message ?? '', /route add 10\.65\.0\.42\/32 .*File exists/);
  t.deepEqual(await before(), s2);

  // 3. Same for an IPv6 route conflict (second stage when IPv6 is configured separately).
  await ipIn(h, ['-6', 'route', 'add', 'fd65::44/128', 'dev', 'upl0']);
  const s3 = await before();
  const id3 = endpointId();
  await t.throwsAsync(
    createEndpointVeth(
      { hostIf: hostVethName('cali', id3), peerIf: tempPeerName(id3), mtu: MTU, ipv4: ['10.65.0.45'], ipv6: ['fd65::44'] },
      { netns: h, useIp },
    ),
    { instanceOf: DataplaneError },
  );
  t.deepEqual(await before(), s3);

  // 4. Invalid input never reaches the kernel.
  const id4 = endpointId();
  const base = { hostIf: hostVethName('cali', id4), peerIf: tempPeerName(id4), mtu: MTU };
  for (const bad of [
    { ...base, ipv4: ['10.65.0.46', '10.65.0.46/32'] },
    { ...base, ipv4: ['10.65.0.300'] },
    { ...base, ipv4: ['fd00::1'] },
    { ...base, ipv6: ['10.65.0.46'] },
    { ...base, mtu: 20 },
    { ...base, mac: '01:00:5e:00:00:01' },
    { ...base, hostIf: 'bad name' },
    { ...base, peerIf: base.hostIf },
  ]) {
    await t.throwsAsync(createEndpointVeth(bad, { netns: h, useIp }), { instanceOf: InvalidRequestError }, JSON.stringify(bad));
  }
  t.deepEqual(await before(), s3);
});

test('the native addon is built and loaded (npm ci builds native/; without it the daemon runs ip)', (t) => {
  t.is(nativeUnavailable(), undefined);
});

test('netlink and ip leave the kernel in the same state: link, peer, addresses, routes, sysctls', async (t) => {
  const reg = netnsRegistry(t);
  const h = await makeRoutedHost(reg, 'cts');
  const state = async (hostIf: string, peerIf: string) => {
    const [link] = JSON.parse((await ipIn(h, ['-j', '-d', 'link', 'show', 'dev', hostIf])).stdout) as Array<Record<string, unknown>>;
    const [peer] = JSON.parse((await ipIn(h, ['-j', '-d', 'link', 'show', 'dev', peerIf])).stdout) as Array<Record<string, unknown>>;
    const [addrs] = JSON.parse((await ipIn(h, ['-j', 'addr', 'show', 'dev', hostIf])).stdout) as Array<{ addr_info: unknown[] }>;
    const pick = (l: Record<string, unknown> | undefined) => ({
      mtu: l?.['mtu'], address: l?.['address'], flags: l?.['flags'], kind: (l?.['linkinfo'] as { info_kind?: string } | undefined)?.info_kind,
      addrgen: l?.['inet6_addr_gen_mode'],
    });
    const routes: unknown[] = [];
    for (const fam of ['-4', '-6']) {
      for (const r of JSON.parse((await ipIn(h, ['-j', '-d', fam, 'route', 'show', 'dev', hostIf])).stdout) as Array<Record<string, unknown>>) {
        // The destinations differ by design (one address each); everything else must not.
        routes.push({ ...r, dst: String(r['dst']).replace(/\d+$|[0-9a-f]+$/, 'N') });
      }
    }
    const sysctls: string[] = [];
    for (const key of [`net/ipv4/conf/${hostIf}/proxy_arp`, `net/ipv4/neigh/${hostIf}/proxy_delay`, `net/ipv6/conf/${hostIf}/proxy_ndp`, `net/ipv6/conf/${hostIf}/accept_ra`, `net/ipv6/conf/${hostIf}/disable_ipv6`]) {
      sysctls.push(await sysctl(h, key));
    }
    return { link: pick(link), peer: pick(peer), addrs: addrs?.addr_info, routes: routes.sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b))), sysctls };
  };
  const seen: Record<string, unknown> = {};
  for (const [i, via] of (['netlink', 'ip'] as const).entries()) {
    const id = endpointId();
    const spec = { hostIf: hostVethName('cali', id), peerIf: tempPeerName(id), mtu: MTU, mac: '02:42:0a:41:00:07', ipv4: [`10.65.0.7${i}`], ipv6: [`fd65::7${i}`], gatewayIndex: 1 };
    const res = await createEndpointVeth(spec, { netns: h, useIp: via === 'ip' });
    t.deepEqual(res, { hostIf: spec.hostIf, peerIf: spec.peerIf, gatewayIPv6: workloadGateways(1).v6 });
    seen[via] = await state(spec.hostIf, spec.peerIf);
    t.true(await removeEndpointVeth(spec.hostIf, { netns: h, useIp: via === 'ip' }));
    t.false(await linkExists(spec.peerIf, { netns: h }));
  }
  t.deepEqual(seen['netlink'], seen['ip']);
  // And what they agree on is what Join promises.
  const s = seen['netlink'] as { link: { address: string; mtu: number; addrgen: string }; peer: { address: string }; routes: unknown[]; sysctls: string[] };
  t.like(s, { link: { address: HOST_VETH_MAC, mtu: MTU, addrgen: 'none' }, peer: { address: '02:42:0a:41:00:07' }, sysctls: ['1', '0', '1', '0', '0'] });
  t.is(s.routes.length, 2 + 1); // the /32, the /128 and the kernel's fe80::/64
});

test('host-namespace mode (run inside H): /proc/sys writes; no process over netlink, one `ip` per IPv4 endpoint without', async (t) => {
  // The code path without `netns` writes /proc/sys directly. Running it in a child process that
  // lives in H tests that path without touching the real host.
  const reg = netnsRegistry(t);
  const h = await makeRoutedHost(reg, 'cth');
  const vethModule = path.join(__dirname, '../../dataplane/veth.js');
  const execModule = path.join(__dirname, '../../dataplane/exec.js');
  const code = `
    const v = require(${JSON.stringify(vethModule)});
    const e = require(${JSON.stringify(execModule)});
    (async () => {
      const spec = JSON.parse(process.argv[1]);
      const s0 = e.spawnCount();
      const r = await v.createEndpointVeth(spec, { useIp: process.argv[2] === 'ip' });
      process.stdout.write(JSON.stringify({ result: r, spawns: e.spawnCount() - s0 }));
    })().catch((err) => { process.stderr.write(String(err && err.message)); process.exit(1); });`;
  const runChild = async (spec: object, via: 'netlink' | 'ip' = 'netlink') => {
    const { stdout } = await execInNetns(h, process.execPath, ['-e', code, JSON.stringify(spec), via]);
    return JSON.parse(stdout) as { result: { hostIf: string; gatewayIPv6?: string }; spawns: number };
  };

  const id = endpointId();
  const hostIf = hostVethName('cali', id);
  const out = await runChild({ hostIf, peerIf: tempPeerName(id), mtu: MTU, ipv4: ['10.65.0.51'] });
  t.is(out.spawns, 0);
  const idIp = endpointId();
  t.is((await runChild({ hostIf: hostVethName('cali', idIp), peerIf: tempPeerName(idIp), mtu: MTU, ipv4: ['10.65.0.53'] }, 'ip')).spawns, 1);
  t.is(await sysctl(h, `net/ipv4/conf/${hostIf}/proxy_arp`), '1');
  t.is(await sysctl(h, `net/ipv4/neigh/${hostIf}/proxy_delay`), '0');
  t.deepEqual((await routesFor(hostIf, { netns: h })).map((r) => r.dst), ['10.65.0.51']);

  const id6 = endpointId();
  const hostIf6 = hostVethName('cali', id6);
  const out6 = await runChild({ hostIf: hostIf6, peerIf: tempPeerName(id6), mtu: MTU, ipv4: ['10.65.0.52'], ipv6: ['fd65::52'] });
  t.is(out6.spawns, 0);
  t.is(out6.result.gatewayIPv6, HOST_LINK_LOCAL_V6);
  t.is(await sysctl(h, `net/ipv6/conf/${hostIf6}/proxy_ndp`), '1');
  t.is(await linkLocal(h, hostIf6), HOST_LINK_LOCAL_V6);
});

test('ensureHostForwarding reads before it writes', async (t) => {
  const reg = netnsRegistry(t);
  const h = await reg.create('ctf');
  await execInNetns(h, 'sysctl', ['-q', '-w', 'net.ipv4.ip_forward=0', 'net.ipv6.conf.all.forwarding=0']);
  t.deepEqual(await ensureHostForwarding({ ipv6: false }, { netns: h }), ['net.ipv4.ip_forward']);
  t.is(await sysctl(h, 'net.ipv6.conf.all.forwarding'), '0');
  t.deepEqual(await ensureHostForwarding({ ipv6: true }, { netns: h }), ['net.ipv6.conf.all.forwarding']);
  t.deepEqual(await ensureHostForwarding({ ipv6: true }, { netns: h }), []);
  t.is(await sysctl(h, 'net.ipv4.ip_forward'), '1');
});

test('LinuxEndpointDataplane in the host namespace (run inside H): detach answers once the routes are gone and the name is free; settled() waits for the rest', async (t) => {
  // detach watches /sys/class/net, which shows the namespace sysfs was mounted in: `ip netns exec`
  // mounts H's, so a child process in H tests the host-namespace path without touching the host.
  const reg = netnsRegistry(t);
  const h = await makeRoutedHost(reg, 'cdh');
  const dataplaneModule = path.join(__dirname, '../../dataplane/linux-endpoint-dataplane.js');
  const code = `
    const { LinuxEndpointDataplane } = require(${JSON.stringify(dataplaneModule)});
    const { execFileSync } = require('node:child_process');
    const { existsSync } = require('node:fs');
    const routes = () => execFileSync('ip', ['-4', 'route', 'show', '10.65.0.61/32']).toString().trim() +
      execFileSync('ip', ['-6', 'route', 'show', 'fd65::61/128']).toString().trim();
    (async () => {
      const spec = JSON.parse(process.argv[1]);
      const d = new LinuxEndpointDataplane();
      const steps = [];
      for (let round = 0; round < 2; round++) {
        await d.attach(spec);
        steps.push({ linked: existsSync('/sys/class/net/' + spec.hostIf), route: routes() !== '' });
        d.startDetach(spec.hostIf);
        await d.detach(spec.hostIf);
        // Checked at once, before anything else can run: what detach promised.
        steps.push({ linked: existsSync('/sys/class/net/' + spec.hostIf) || existsSync('/sys/class/net/' + spec.peerIf), route: routes() !== '' });
      }
      await d.settled();
      await d.detach(spec.hostIf); // already gone: fine
      process.stdout.write(JSON.stringify(steps));
    })().catch((err) => { process.stderr.write(String(err && err.message)); process.exit(1); });`;
  const id = endpointId();
  const spec = { hostIf: hostVethName('cali', id), peerIf: tempPeerName(id), mtu: MTU, ipv4: ['10.65.0.61'], ipv6: ['fd65::61'], gatewayIndex: 0 };
  const { stdout } = await execInNetns(h, process.execPath, ['-e', code, JSON.stringify(spec)]);
  const attached = { linked: true, route: true };
  const detached = { linked: false, route: false };
  // The second attach reuses the name and the address right after the first detach answered.
  t.deepEqual(JSON.parse(stdout), [attached, detached, attached, detached]);
  t.false(await linkExists(spec.hostIf, { netns: h }));
  t.deepEqual(await routesFor(spec.hostIf, { netns: h }), []);
});
