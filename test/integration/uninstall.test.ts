// `calicoctl uninstall` against the real daemon binary, each run inside its own throwaway network
// namespace (`ip netns exec`): the daemon's chains, ipsets, routes, VXLAN device and veths all live
// there, under the default names (cali, protocol 80, vxlan.calico), so the host's own are never
// touched. The namespace also holds things that are not ours (another chain, set, routes of other
// protocols, a veth, a device named like our veths, another VXLAN device): uninstall must leave them
// exactly as they were.
import test, { type ExecutionContext } from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Keys } from '../../datastore/keys';
import { EmbeddedStore } from '../../datastore/embedded-store';
import { execInNetns, ipIn, netnsRegistry } from '../harness/netns';
import { post } from '../harness/plugin-client';

const DAEMON = resolve(__dirname, '../../bin/calico-libnetwork.js');
const CTL = resolve(__dirname, '../../bin/calicoctl.js');
const POOL = '10.99.0.0/16';
const NODE = 'uninstall-node';
const OUR_PROTO = '80';

interface FixtureLine {
  path?: string;
  body?: Record<string, unknown>;
}
const fixtures = readFileSync(resolve(__dirname, '../../../test/fixtures/docker-20.10-single-host-requests.jsonl'), 'utf8')
  .split('\n')
  .filter((l) => l.trim() !== '')
  .map((l) => JSON.parse(l) as FixtureLine);
function fixture(path: string, index = 0): Record<string, unknown> {
  const found = fixtures.filter((f) => f.path === path && f.body !== undefined)[index];
  if (found?.body === undefined) throw new Error(`no fixture for ${path}`);
  return structuredClone(found.body);
}
const ENDPOINT_ID = fixture('/NetworkDriver.CreateEndpoint')['EndpointID'] as string;
const OUR_VETH = `cali${ENDPOINT_ID.slice(0, 11)}`;

interface Host {
  readonly ns: string;
  readonly dir: string;
  readonly env: Record<string, string>;
  readonly sockets: { network: string; ipam: string };
}

async function makeHost(t: ExecutionContext): Promise<Host> {
  const reg = netnsRegistry(t);
  const ns = await reg.create('uninst');
  const dir = await mkdtemp(join(tmpdir(), 'calico-uninstall-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await mkdir(join(dir, 'plugins'));
  // The network between hosts, and a peer host (recorded in the store) so the agent makes the
  // VXLAN device.
  await ipIn(ns, ['link', 'add', 'uplink0', 'type', 'veth', 'peer', 'name', 'uplink1']);
  await ipIn(ns, ['addr', 'add', '10.64.0.1/24', 'dev', 'uplink0']);
  await ipIn(ns, ['link', 'set', 'uplink0', 'up']);
  const keys = new Keys('/calico/libnetwork/v1');
  const store = await EmbeddedStore.open(join(dir, 'data'));
  const peer = { name: 'peer-node', version: 'test', datastore: 'embedded', startedAt: new Date().toISOString(), ipv4Address: '10.64.0.2/24' };
  await store.create(keys.node('peer-node'), JSON.stringify(peer));
  await store.close();
  // Not ours: must survive.
  for (const tool of ['iptables', 'ip6tables']) {
    await execInNetns(ns, tool, ['-N', 'other-chain']);
    await execInNetns(ns, tool, ['-A', 'other-chain', '-j', 'RETURN']);
    await execInNetns(ns, tool, ['-A', 'FORWARD', '-j', 'other-chain']);
  }
  await execInNetns(ns, 'ipset', ['create', 'other-set', 'hash:ip']);
  await execInNetns(ns, 'ipset', ['create', 'calix-set', 'hash:ip']);
  await ipIn(ns, ['route', 'add', '10.200.0.0/24', 'dev', 'uplink0', 'proto', 'static']);
  await ipIn(ns, ['route', 'add', 'blackhole', '10.201.0.0/24', 'proto', '81']);
  await ipIn(ns, ['-6', 'route', 'add', 'blackhole', 'fd01::/64', 'proto', '81']);
  await ipIn(ns, ['link', 'add', 'vethA', 'type', 'veth', 'peer', 'name', 'vethB']);
  // Named like one of our veths, but not a veth.
  await ipIn(ns, ['link', 'add', 'cali0123456789a', 'type', 'vxlan', 'id', '43', 'dstport', '4791', 'nolearning']);
  await ipIn(ns, ['link', 'add', 'vxlan.other', 'type', 'vxlan', 'id', '42', 'dstport', '4790', 'local', '10.64.0.1', 'nolearning']);
  const env = {
    PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    CALICO_DATA_DIR: join(dir, 'data'),
    CALICO_PLUGIN_DIR: join(dir, 'plugins'),
    NODENAME: NODE,
    IP: '10.64.0.1/24',
    DOCKER_HOST: `unix://${dir}/no-docker.sock`,
    CALICO_IPV4POOL_CIDR: POOL,
    CALICO_IPV4POOL_VXLAN: 'Always',
    CALICO_IPV6POOL_CIDR: 'none',
  };
  return { ns, dir, env, sockets: { network: join(dir, 'plugins', 'calico.sock'), ipam: join(dir, 'plugins', 'calico-ipam.sock') } };
}

interface Running {
  stop(): Promise<number | null>;
}

async function startDaemon(t: ExecutionContext, h: Host): Promise<Running> {
  let out = '';
  const child: ChildProcess = spawn('ip', ['netns', 'exec', h.ns, process.execPath, DAEMON], { env: h.env, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  child.stdout?.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr?.on('data', (b: Buffer) => (out += b.toString()));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  });
  const deadline = Date.now() + 20_000;
  while (!(existsSync(h.sockets.network) && existsSync(h.sockets.ipam) && out.includes('serving'))) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`daemon did not start:\n${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    async stop() {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

function calicoctl(h: Host, args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((res) => {
    const child = spawn('ip', ['netns', 'exec', h.ns, process.execPath, CTL, ...args], { env: { ...h.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    child.once('exit', (code) => res({ code, stdout, stderr }));
  });
}

/** Docker's calls for one container: network, address, endpoint, Join (the veth appears). */
async function createEndpoint(t: ExecutionContext, h: Host): Promise<string> {
  const net = async (path: string, body: unknown): Promise<Record<string, unknown>> => (await post(h.sockets.network, path, JSON.stringify(body))).body;
  const ipam = async (path: string, body: unknown): Promise<Record<string, unknown>> => (await post(h.sockets.ipam, path, JSON.stringify(body))).body;
  t.like(await ipam('/IpamDriver.RequestPool', { ...fixture('/IpamDriver.RequestPool'), AddressSpace: 'CalicoLocalAddressSpace', Pool: POOL }), { PoolID: POOL });
  t.deepEqual(await net('/NetworkDriver.CreateNetwork', { ...fixture('/NetworkDriver.CreateNetwork'), IPv4Data: [{ AddressSpace: 'CalicoLocalAddressSpace', Gateway: '0.0.0.0/0', Pool: POOL }] }), {});
  const address = String((await ipam('/IpamDriver.RequestAddress', { ...fixture('/IpamDriver.RequestAddress', 1), PoolID: POOL }))['Address']);
  t.regex(address, /^10\.99\.\d+\.\d+\/32$/);
  t.deepEqual(await net('/NetworkDriver.CreateEndpoint', { ...fixture('/NetworkDriver.CreateEndpoint'), Interface: { Address: address, AddressIPv6: '', MacAddress: '' } }), {});
  t.like(await net('/NetworkDriver.Join', fixture('/NetworkDriver.Join')), { Gateway: '169.254.1.1' });
  return address;
}

async function removeEndpoint(t: ExecutionContext, h: Host, address: string): Promise<void> {
  const net = async (path: string, body: unknown): Promise<Record<string, unknown>> => (await post(h.sockets.network, path, JSON.stringify(body))).body;
  t.deepEqual(await net('/NetworkDriver.Leave', fixture('/NetworkDriver.Leave')), {});
  t.deepEqual(await net('/NetworkDriver.DeleteEndpoint', fixture('/NetworkDriver.DeleteEndpoint')), {});
  t.deepEqual((await post(h.sockets.ipam, '/IpamDriver.ReleaseAddress', JSON.stringify({ PoolID: POOL, Address: address.replace('/32', '') }))).body, {});
}

/** `<kind> <name>`: our veths (host ends and peers not yet moved) and our VXLAN device. */
const isOurLink = (kindAndName: string): boolean => /^veth (cali|tmp)[0-9a-f]{11}$/.test(kindAndName) || kindAndName === 'vxlan vxlan.calico';

interface Kernel {
  /** Ours (by the default names). */
  ours: { chains: string[]; sets: string[]; routes: string[]; links: string[] };
  /** Everything else, normalised (no counters), for before/after comparison. */
  others: { iptables: string[]; sets: string[]; routes: string[]; links: string[] };
}

async function readKernel(ns: string): Promise<Kernel> {
  const iptables: string[] = [];
  const chains: string[] = [];
  for (const tool of ['iptables-save', 'ip6tables-save']) {
    const { stdout } = await execInNetns(ns, tool, []);
    for (const line of stdout.split('\n')) {
      if (line.startsWith('#') || line.trim() === '') continue;
      const l = `${tool} ${line.replace(/\[\d+:\d+\]/g, '')}`;
      if (/\bcali-/.test(line)) chains.push(l);
      else iptables.push(l);
    }
  }
  const setNames = (await execInNetns(ns, 'ipset', ['list', '-n'])).stdout.split('\n').filter((s) => s !== '');
  const links = JSON.parse((await ipIn(ns, ['-j', '-d', 'link', 'show'])).stdout) as Array<{ ifname: string; linkinfo?: { info_kind?: string } }>;
  const linkNames = links.map((l) => `${l.linkinfo?.info_kind ?? '-'} ${l.ifname}`);
  const ourLinkNames = new Set(links.filter((l) => isOurLink(`${l.linkinfo?.info_kind ?? '-'} ${l.ifname}`)).map((l) => l.ifname));
  const routes: string[] = [];
  const ourRoutes: string[] = [];
  for (const family of ['-4', '-6']) {
    const rows = JSON.parse((await ipIn(ns, ['-j', family, 'route', 'show', 'table', 'all'])).stdout) as Array<Record<string, unknown>>;
    for (const r of rows) {
      const s = `${family} ${JSON.stringify(r)}`;
      if (String(r['protocol']) === OUR_PROTO) ourRoutes.push(s);
      else if (!ourLinkNames.has(String(r['dev']))) routes.push(s); // routes of our devices go with them
    }
  }
  return {
    ours: {
      chains,
      sets: setNames.filter((s) => s.startsWith('cali-4') || s.startsWith('cali-6')),
      routes: ourRoutes,
      links: linkNames.filter(isOurLink),
    },
    others: {
      iptables: iptables.sort(),
      sets: setNames.filter((s) => !(s.startsWith('cali-4') || s.startsWith('cali-6'))).sort(),
      routes: routes.sort(),
      links: linkNames.filter((l) => !isOurLink(l)).sort(),
    },
  };
}

async function waitFor(what: string, ok: () => Promise<boolean>, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function assertNothingOurs(t: ExecutionContext, k: Kernel): void {
  t.deepEqual(k.ours, { chains: [], sets: [], routes: [], links: [] }, 'nothing of ours is left');
}

test.serial('uninstall refuses while the daemon runs and while endpoints exist; --force removes all of ours and nothing else', async (t) => {
  const h = await makeHost(t);
  const daemon = await startDaemon(t, h);
  await createEndpoint(t, h);
  // Everything the plugin makes is there: chains, sets, a blackhole for its block, the VXLAN
  // device and its route to the peer's block (if any), the veth.
  await waitFor('our kernel state', async () => {
    const k = await readKernel(h.ns);
    return k.ours.chains.length > 0 && k.ours.sets.length > 0 && k.ours.routes.length > 0 && k.ours.links.some((l) => l === 'vxlan vxlan.calico') && k.ours.links.some((l) => l === `veth ${OUR_VETH}`);
  });

  for (const args of [['uninstall'], ['uninstall', '--force']]) {
    const r = await calicoctl(h, args);
    t.is(r.code, 1, args.join(' '));
    t.regex(r.stderr, /the daemon is running \(.*calico\.sock.* answers\)/);
  }
  t.true((await readKernel(h.ns)).ours.chains.length > 0, 'refused: nothing removed');

  t.is(await daemon.stop(), 0);
  const refused = await calicoctl(h, ['uninstall']);
  t.is(refused.code, 1);
  t.regex(refused.stderr, new RegExp(`host ${NODE} still has 1 endpoint\\(s\\): ${ENDPOINT_ID.slice(0, 12)}`));

  // An IPv6 route of our protocol (the daemon here has no IPv6 pool): uninstall covers both families.
  await ipIn(h.ns, ['-6', 'route', 'add', 'blackhole', 'fd99::/64', 'proto', OUR_PROTO]);
  const before = await readKernel(h.ns);
  t.true(before.ours.sets.length > 0);
  const forced = await calicoctl(h, ['uninstall', '--force']);
  t.is(forced.code, 0, forced.stderr);
  t.regex(forced.stdout, /^note: --force: ignoring 1 endpoint record/m);
  t.regex(forced.stdout, /^removed chain ipv4 filter cali-/m);
  t.regex(forced.stdout, /^removed chain ipv6 filter cali-/m);
  t.regex(forced.stdout, /^removed ipset cali-4/m);
  t.regex(forced.stdout, /^removed route ipv4 10\.99\.\d+\.\d+\/26 blackhole$/m);
  t.regex(forced.stdout, /^removed route ipv6 fd99::\/64 blackhole$/m);
  t.regex(forced.stdout, /^removed interface vxlan vxlan\.calico$/m);
  t.regex(forced.stdout, new RegExp(`^removed interface veth ${OUR_VETH}$`, 'm'));
  const after = await readKernel(h.ns);
  assertNothingOurs(t, after);
  t.deepEqual(after.others, before.others, 'everything not ours is exactly as it was');
  t.true(after.others.links.includes('vxlan cali0123456789a') && after.others.links.includes('veth vethA') && after.others.links.includes('vxlan vxlan.other'));
  t.true(after.others.sets.includes('calix-set'));

  // Idempotent; the endpoint record is still in the datastore, so only --force runs.
  t.is((await calicoctl(h, ['uninstall'])).code, 1);
  const again = await calicoctl(h, ['uninstall', '--force', '-o', 'json']);
  t.is(again.code, 0, again.stderr);
  t.like(JSON.parse(again.stdout) as object, { removed: { chains: [], sets: [], routes: [], interfaces: [] } });
});

test.serial('with the containers gone uninstall needs no --force; forced, it works with the datastore unreachable', async (t) => {
  const h = await makeHost(t);
  const daemon = await startDaemon(t, h);
  const address = await createEndpoint(t, h);
  await waitFor('our kernel state', async () => (await readKernel(h.ns)).ours.links.includes('vxlan vxlan.calico'));
  await removeEndpoint(t, h, address);
  t.is(await daemon.stop(), 0);
  const before = await readKernel(h.ns);
  t.true(before.ours.chains.length > 0 && before.ours.links.includes('vxlan vxlan.calico'));
  const r = await calicoctl(h, ['uninstall']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^removed chain ipv4 filter cali-/m);
  t.regex(r.stdout, /^removed interface vxlan vxlan\.calico$/m);
  t.notRegex(r.stdout, /^note:/m);
  const after = await readKernel(h.ns);
  assertNothingOurs(t, after);
  t.deepEqual(after.others, before.others);

  // No datastore at all: refused without --force (it cannot tell about endpoints), done with it.
  await ipIn(h.ns, ['route', 'add', 'blackhole', '10.99.77.0/26', 'proto', OUR_PROTO]);
  const etcd = { ETCD_ENDPOINTS: 'http://127.0.0.1:9' };
  const unknown = await calicoctl(h, ['uninstall'], etcd);
  t.is(unknown.code, 1);
  t.regex(unknown.stderr, /cannot tell whether host uninstall-node still has endpoints/);
  const started = Date.now();
  const forced = await calicoctl(h, ['uninstall', '--force'], etcd);
  t.is(forced.code, 0, forced.stderr);
  t.true(Date.now() - started < 15_000);
  t.regex(forced.stdout, /^note: datastore not consulted/m);
  t.regex(forced.stdout, /^removed route ipv4 10\.99\.77\.0\/26 blackhole$/m);
  assertNothingOurs(t, await readKernel(h.ns));
});
