// The daemon in single-socket mode (CALICO_LIBNETWORK_SOCKETS=single), as a managed plugin runs
// it: one socket answers Plugin.Activate with both interfaces, and each route answers errors with
// its own interface's key (NetworkDriver: Err, IpamDriver: Error), also for unknown methods and
// undecodable bodies. Docker's recorded payloads drive a network create / run / rm through the one
// socket. The daemon runs in-process on its embedded store and plumbs inside a throwaway namespace.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseConfig } from '../../config/config';
import { startDaemon, type Daemon } from '../../daemon/daemon';
import { PolicyDataplane } from '../../dataplane/policy-dataplane';
import { linkExists } from '../../dataplane/veth';
import { createNetns, deleteNetns } from '../harness/netns';
import { post } from '../harness/plugin-client';

interface FixtureLine {
  path?: string;
  body?: Record<string, unknown>;
}

const fixtures = readFileSync(resolve(__dirname, '../../../test/fixtures/docker-20.10-single-host-requests.jsonl'), 'utf8')
  .split('\n')
  .filter((l) => l.trim() !== '')
  .map((l) => JSON.parse(l) as FixtureLine);

function fixture(path: string, index = 0): Record<string, unknown> {
  const found = fixtures.filter((f) => f.path === path && f.body !== undefined)[index]?.body;
  if (found === undefined) throw new Error(`no fixture for ${path}`);
  return structuredClone(found);
}

const POOL = '10.99.2.0/24';
const ENDPOINT_ID = fixture('/NetworkDriver.CreateEndpoint')['EndpointID'] as string;

let daemon: Daemon;
let netns: string;
let dataDir: string;
let pluginDir: string;
let name: string;
const chain = `t${randomBytes(3).toString('hex')}`;

test.before(async () => {
  netns = await createNetns('single');
  dataDir = await mkdtemp(join(tmpdir(), 'calico-single-'));
  pluginDir = await mkdtemp(join(tmpdir(), 'calico-single-plugins-'));
  name = `calico-s${randomBytes(3).toString('hex')}`;
  const config = parseConfig({
    CALICO_HEALTH_LISTEN: 'none', // tests run side by side; the listener has its own test
    CALICO_LIBNETWORK_SOCKETS: 'single',
    CALICO_DATA_DIR: dataDir,
    CALICO_PLUGIN_DIR: pluginDir,
    CALICO_NETWORK_DRIVER_NAME: name,
    CALICO_IPV4POOL_CIDR: POOL,
    CALICO_IPV6POOL_CIDR: 'none',
    CALICO_IPTABLES_CHAIN_PREFIX: chain,
    DOCKER_HOST: `unix://${dataDir}/no-docker.sock`,
    NODENAME: 'single-node',
  }, 'single-node');
  daemon = await startDaemon(config, { netns });
});

test.after.always(async () => {
  await daemon?.close();
  if (netns !== undefined) await new PolicyDataplane({ prefix: chain, markBit: 0x100000, netns }).removeAll().catch(() => undefined);
  if (netns !== undefined) await deleteNetns(netns);
  if (dataDir !== undefined) await rm(dataDir, { recursive: true, force: true });
  if (pluginDir !== undefined) await rm(pluginDir, { recursive: true, force: true });
});

const call = (path: string, body: unknown = ''): ReturnType<typeof post> => post(daemon.sockets.network, path, typeof body === 'string' ? body : JSON.stringify(body));

test.serial('one socket named after the plugin, nothing else in the plugin directory', (t) => {
  t.is(daemon.sockets.network, join(pluginDir, `${name}.sock`));
  t.is(daemon.sockets.ipam, daemon.sockets.network);
  t.false(existsSync(join(pluginDir, 'calico-ipam.sock')));
});

test.serial('Plugin.Activate declares both interfaces; both capability calls answer', async (t) => {
  const activate = await call('/Plugin.Activate');
  t.deepEqual(activate.body, { Implements: ['NetworkDriver', 'IpamDriver'] });
  t.is(activate.contentType, 'application/vnd.docker.plugins.v1+json');
  t.deepEqual((await call('/NetworkDriver.GetCapabilities')).body, { Scope: 'local', ConnectivityScope: 'local' });
  t.deepEqual((await call('/IpamDriver.GetCapabilities')).body, { RequiresMACAddress: false, RequiresRequestReplay: false });
  t.deepEqual((await call('/IpamDriver.GetDefaultAddressSpaces')).body, {
    LocalDefaultAddressSpace: 'CalicoLocalAddressSpace',
    GlobalDefaultAddressSpace: 'CalicoGlobalAddressSpace',
  });
});

test.serial('each interface answers errors with its own key', async (t) => {
  const ipamRefusal = await call('/IpamDriver.RequestPool', fixture('/IpamDriver.RequestPool'));
  t.is(ipamRefusal.status, 200);
  t.regex(String(ipamRefusal.body['Error']), /unknown address space 'ProbeLocal'/);
  t.false('Err' in ipamRefusal.body);

  const netRefusal = await call('/NetworkDriver.CreateNetwork', fixture('/NetworkDriver.CreateNetwork'));
  t.is(netRefusal.status, 200);
  t.regex(String(netRefusal.body['Err']), new RegExp(`networks need the ${name} IPAM driver`));
  t.false('Error' in netRefusal.body);

  const netUnknown = await call('/NetworkDriver.NoSuchMethod', '{}');
  t.is(netUnknown.status, 404);
  t.regex(String(netUnknown.body['Err']), /not implemented/);
  const ipamUnknown = await call('/IpamDriver.NoSuchMethod', '{}');
  t.is(ipamUnknown.status, 404);
  t.regex(String(ipamUnknown.body['Error']), /not implemented/);
  t.false('Err' in ipamUnknown.body);

  const netGarbage = await call('/NetworkDriver.CreateNetwork', '{not json');
  t.is(netGarbage.status, 400);
  t.truthy(netGarbage.body['Err']);
  const ipamGarbage = await call('/IpamDriver.RequestAddress', '{not json');
  t.is(ipamGarbage.status, 400);
  t.truthy(ipamGarbage.body['Error']);
  t.false('Err' in ipamGarbage.body);
  const ipamTooLarge = await call('/IpamDriver.RequestPool', Buffer.alloc(65 * 1024, 0x20));
  t.is(ipamTooLarge.status, 413);
  t.truthy(ipamTooLarge.body['Error']);
});

test.serial('a network create / run / rm through the one socket', async (t) => {
  const pool = await call('/IpamDriver.RequestPool', { ...fixture('/IpamDriver.RequestPool'), AddressSpace: 'CalicoLocalAddressSpace', Pool: POOL });
  t.deepEqual(pool.body, { PoolID: POOL, Pool: POOL, Data: { 'com.docker.network.gateway': '0.0.0.0/0' } });
  const createNet = fixture('/NetworkDriver.CreateNetwork');
  createNet['IPv4Data'] = [{ AddressSpace: 'CalicoLocalAddressSpace', Gateway: '0.0.0.0/0', Pool: POOL }];
  t.deepEqual((await call('/NetworkDriver.CreateNetwork', createNet)).body, {});
  const addr = await call('/IpamDriver.RequestAddress', { ...fixture('/IpamDriver.RequestAddress', 1), PoolID: POOL });
  const ip = String(addr.body['Address']);
  t.regex(ip, /^10\.99\.2\.\d+\/32$/);
  const createEp = fixture('/NetworkDriver.CreateEndpoint');
  createEp['Interface'] = { Address: ip, AddressIPv6: '', MacAddress: '' };
  t.deepEqual((await call('/NetworkDriver.CreateEndpoint', createEp)).body, {});
  const joined = await call('/NetworkDriver.Join', fixture('/NetworkDriver.Join'));
  t.is(joined.body['Gateway'], '169.254.1.1');
  t.true(await linkExists(`cali${ENDPOINT_ID.slice(0, 11)}`, { netns }));
  t.deepEqual((await call('/NetworkDriver.Leave', fixture('/NetworkDriver.Leave'))).body, {});
  t.deepEqual((await call('/NetworkDriver.DeleteEndpoint', fixture('/NetworkDriver.DeleteEndpoint'))).body, {});
  t.false(await linkExists(`cali${ENDPOINT_ID.slice(0, 11)}`, { netns }));
  t.deepEqual((await call('/IpamDriver.ReleaseAddress', { PoolID: POOL, Address: ip.replace('/32', '') })).body, {});
  t.deepEqual((await call('/IpamDriver.ReleasePool', { PoolID: POOL })).body, {});
  t.deepEqual((await call('/NetworkDriver.DeleteNetwork', fixture('/NetworkDriver.DeleteNetwork'))).body, {});
});
