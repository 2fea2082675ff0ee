// The VXLAN dataplane against a real kernel: two throwaway namespaces ("hosts") joined by a veth
// "underlay", each with its VXLAN device, static entries and routes through it; a "container"
// address on each (on lo) reaches the other's only over the tunnel.
import test, { type ExecutionContext } from 'ava';
import { vxlanMac } from '../../agent/route-plan';
import { run } from '../../dataplane/exec';
import { type KernelRoute, RoutesDataplane } from '../../dataplane/routes';
import { type KernelVxlan, VxlanDataplane } from '../../dataplane/vxlan';
import { createNetns, deleteNetns, execInNetns, ipIn } from '../harness/netns';

const PROTO = 202;
const DEV = 'vxlan.calico';
const UNDERLAY = { a: '198.18.30.1', b: '198.18.30.2' } as const;
const BLOCK = { a: '10.70.0.0/26', b: '10.70.0.64/26' } as const;
const CONTAINER = { a: '10.70.0.1', b: '10.70.0.65' } as const;

async function twoHosts(t: ExecutionContext): Promise<{ a: string; b: string }> {
  const a = await createNetns('cvxa');
  t.teardown(() => deleteNetns(a));
  const b = await createNetns('cvxb');
  t.teardown(() => deleteNetns(b));
  await ipIn(a, ['link', 'add', 'fab0', 'type', 'veth', 'peer', 'name', 'fab0', 'netns', b]);
  for (const [ns, side] of [[a, 'a'], [b, 'b']] as const) {
    await ipIn(ns, ['addr', 'add', `${UNDERLAY[side]}/24`, 'dev', 'fab0']);
    await ipIn(ns, ['link', 'set', 'fab0', 'up']);
    await ipIn(ns, ['addr', 'add', `${CONTAINER[side]}/32`, 'dev', 'lo']);
  }
  return { a, b };
}

function plan(me: 'a' | 'b'): { routes: KernelRoute[]; vxlan: KernelVxlan } {
  const other = me === 'a' ? 'b' : 'a';
  return {
    routes: [
      { kind: 'blackhole', dst: BLOCK[me], family: 4 },
      { kind: 'vxlan', dst: BLOCK[other], via: UNDERLAY[other], family: 4 },
    ],
    vxlan: { local: UNDERLAY[me], mac: vxlanMac(me), peers: [{ address: UNDERLAY[other], mac: vxlanMac(other) }] },
  };
}

function dataplanes(ns: string, vni = 4096): { vx: VxlanDataplane; routes: RoutesDataplane } {
  const vx = new VxlanDataplane({ device: DEV, vni, port: 4789, mtu: 1450, netns: ns });
  return { vx, routes: new RoutesDataplane({ protocol: PROTO, netns: ns, vxlan: vx }) };
}

async function ping(ns: string, from: string, to: string): Promise<boolean> {
  try {
    await execInNetns(ns, 'busybox', ['ping', '-c', '1', '-W', '2', '-I', from, to]);
    return true;
  } catch {
    return false;
  }
}

async function link(ns: string): Promise<{ ifindex: number; mtu: number; address: string; linkinfo: { info_data: { id: number; port: number; local: string; learning: boolean } }; stats64?: { tx: { packets: number } } } | undefined> {
  try {
    return (JSON.parse((await ipIn(ns, ['-j', '-d', '-s', 'link', 'show', 'dev', DEV])).stdout) as [never])[0];
  } catch {
    return undefined;
  }
}

async function neighbours(ns: string): Promise<string[]> {
  return (await ipIn(ns, ['-4', 'neigh', 'show', 'dev', DEV])).stdout.trim().split('\n').filter((l) => l !== '').sort();
}

async function fdb(ns: string): Promise<string[]> {
  return (await run('bridge', ['-n', ns, 'fdb', 'show', 'dev', DEV], 'fdb')).stdout.trim().split('\n').filter((l) => l !== '').sort();
}

test('two hosts: device, static entries and routes carry traffic between their containers', async (t) => {
  const { a, b } = await twoHosts(t);
  const dpA = dataplanes(a);
  const dpB = dataplanes(b);
  t.false(await ping(a, CONTAINER.a, CONTAINER.b), 'no route before');
  await dpA.routes.apply(plan('a').routes, plan('a').vxlan);
  await dpB.routes.apply(plan('b').routes, plan('b').vxlan);

  const l = await link(a);
  t.like(l, { mtu: 1450, address: vxlanMac('a'), linkinfo: { info_data: { id: 4096, port: 4789, local: UNDERLAY.a, learning: false } } });
  t.deepEqual(await neighbours(a), [`${UNDERLAY.b} lladdr ${vxlanMac('b')} PERMANENT`]);
  t.true((await fdb(a)).some((e) => e.startsWith(`${vxlanMac('b')} dst ${UNDERLAY.b} self permanent`)), (await fdb(a)).join('\n'));
  const routes = (await ipIn(a, ['-4', 'route', 'show', 'proto', String(PROTO)])).stdout;
  t.regex(routes, new RegExp(`^10\\.70\\.0\\.64/26 via ${UNDERLAY.b.replace(/\./g, '\\.')} dev vxlan\\.calico onlink`, 'm'));

  const before = (await link(a))?.stats64?.tx.packets ?? 0;
  t.true(await ping(a, CONTAINER.a, CONTAINER.b), 'container a reaches container b');
  t.true(await ping(b, CONTAINER.b, CONTAINER.a), 'and back');
  t.true(((await link(a))?.stats64?.tx.packets ?? 0) > before, 'over the VXLAN device');

  // A resync reads its own routes back (the VXLAN route is recognised, not a stray) and keeps the
  // device that fits (no blip: same interface).
  dpA.routes.resync();
  await dpA.routes.apply(plan('a').routes, plan('a').vxlan);
  t.is((await link(a))?.ifindex, l?.ifindex, 'device kept');
  t.true(await ping(a, CONTAINER.a, CONTAINER.b));
});

test('strays on the device are removed, a device of another VNI is replaced, no VXLAN removes the device', async (t) => {
  const { a } = await twoHosts(t);
  const { routes } = dataplanes(a);
  await routes.apply(plan('a').routes, plan('a').vxlan);
  // Entries someone added by hand on our device; an entry on another device is not ours.
  await ipIn(a, ['neigh', 'add', '198.18.30.9', 'lladdr', '02:00:00:00:00:09', 'dev', DEV, 'nud', 'permanent']);
  await run('bridge', ['-n', a, 'fdb', 'append', '02:00:00:00:00:09', 'dev', DEV, 'dst', '198.18.30.9', 'self', 'permanent'], 'fdb by hand');
  await ipIn(a, ['neigh', 'add', '198.18.30.9', 'lladdr', '02:00:00:00:00:09', 'dev', 'fab0', 'nud', 'permanent']);
  routes.resync();
  await routes.apply(plan('a').routes, plan('a').vxlan);
  t.deepEqual(await neighbours(a), [`${UNDERLAY.b} lladdr ${vxlanMac('b')} PERMANENT`]);
  t.false((await fdb(a)).some((e) => e.includes('02:00:00:00:00:09')));
  t.regex((await ipIn(a, ['neigh', 'show', 'dev', 'fab0'])).stdout, /198\.18\.30\.9/, 'other devices untouched');

  // A peer moves to another address: entries replaced.
  const moved: KernelVxlan = { ...plan('a').vxlan, peers: [{ address: '198.18.30.3', mac: vxlanMac('b') }] };
  await routes.apply([plan('a').routes[0]!, { kind: 'vxlan', dst: BLOCK.b, via: '198.18.30.3', family: 4 }], moved);
  t.deepEqual(await neighbours(a), [`198.18.30.3 lladdr ${vxlanMac('b')} PERMANENT`]);
  t.deepEqual((await fdb(a)).filter((e) => e.includes(vxlanMac('b'))).map((e) => e.split(' ').slice(0, 3).join(' ')), [`${vxlanMac('b')} dst 198.18.30.3`]);

  // Another VNI configured: the device is recreated with it.
  const other = dataplanes(a, 4100);
  await other.routes.apply(plan('a').routes, plan('a').vxlan);
  t.like(await link(a), { linkinfo: { info_data: { id: 4100 } } });
  t.regex((await ipIn(a, ['-4', 'route', 'show', 'proto', String(PROTO)])).stdout, /dev vxlan\.calico/);

  // No pool encapsulates any more: routes through it and the device go.
  await other.routes.apply([plan('a').routes[0]!], undefined);
  t.is(await link(a), undefined);
  t.deepEqual((await ipIn(a, ['-4', 'route', 'show', 'proto', String(PROTO)])).stdout.trim(), `blackhole ${BLOCK.a} `.trim());
});

test('bad input never reaches the kernel', (t) => {
  t.throws(() => new VxlanDataplane({ device: 'bad name', vni: 1, port: 4789, mtu: 1450 }));
  t.throws(() => new VxlanDataplane({ device: DEV, vni: 0, port: 4789, mtu: 1450 }));
  t.throws(() => new VxlanDataplane({ device: DEV, vni: 1, port: 70000, mtu: 1450 }));
});

test('bad addresses and MACs in a plan are refused before any command runs', async (t) => {
  const vx = new VxlanDataplane({ device: DEV, vni: 4096, port: 4789, mtu: 1450, netns: 'no-such-ns-x' });
  await t.throwsAsync(vx.apply({ local: '198.18.30.1; reboot', mac: vxlanMac('a'), peers: [] }), { message: /IPv4 address/ });
  await t.throwsAsync(vx.apply({ local: '198.18.30.1', mac: '01:00:00:00:00:01', peers: [] }), { message: /multicast/ });
  await t.throwsAsync(vx.apply({ local: '198.18.30.1', mac: vxlanMac('a'), peers: [{ address: 'fd00::1', mac: vxlanMac('b') }] }), { message: /IPv4 address/ });
});
