// Contract tests: the payloads a real Docker 20.10 sent (test/fixtures) replayed against the real
// daemon's sockets, plus malformed input. The daemon runs in-process with its embedded store in a
// temp dir and plumbs endpoints inside a throwaway network namespace.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
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
  sock?: string;
  path?: string;
  body?: Record<string, unknown>;
}

const fixtures = readFileSync(resolve(__dirname, '../../../test/fixtures/docker-20.10-single-host-requests.jsonl'), 'utf8')
  .split('\n')
  .filter((l) => l.trim() !== '')
  .map((l) => JSON.parse(l) as FixtureLine)
  .filter((l): l is Required<FixtureLine> => l.path !== undefined && l.body !== undefined && l.sock !== undefined);

function fixture(path: string, index = 0): Record<string, unknown> {
  const found = fixtures.filter((f) => f.path === path)[index];
  if (found === undefined) throw new Error(`no fixture for ${path}`);
  return structuredClone(found.body);
}

const NETWORK_ID = fixture('/NetworkDriver.CreateNetwork')['NetworkID'] as string;
const ENDPOINT_ID = fixture('/NetworkDriver.CreateEndpoint')['EndpointID'] as string;
const POOL = '10.99.1.0/24';

let daemon: Daemon;
let netns: string;
let dataDir: string;
const chain = `t${randomBytes(3).toString('hex')}`;

test.before(async () => {
  netns = await createNetns('contract');
  dataDir = await mkdtemp(join(tmpdir(), 'calico-contract-'));
  const id = randomBytes(3).toString('hex');
  const config = parseConfig({
    CALICO_HEALTH_LISTEN: 'none', // tests run side by side; the listener has its own test
    CALICO_DATA_DIR: dataDir,
    CALICO_NETWORK_DRIVER_NAME: `calico-c${id}`,
    CALICO_IPAM_DRIVER_NAME: `calico-ipam-c${id}`,
    CALICO_IPV4POOL_CIDR: POOL,
    CALICO_IPV6POOL_CIDR: 'none',
    CALICO_IPTABLES_CHAIN_PREFIX: chain,
    // No Docker here: network names fall back to the network ID.
    DOCKER_HOST: `unix://${dataDir}/no-docker.sock`,
    NODENAME: 'contract-node',
  }, 'contract-node');
  daemon = await startDaemon(config, { netns });
});

test.after.always(async () => {
  await daemon?.close();
  if (netns !== undefined) await new PolicyDataplane({ prefix: chain, markBit: 0x100000, netns }).removeAll().catch(() => undefined);
  if (netns !== undefined) await deleteNetns(netns);
  if (dataDir !== undefined) await rm(dataDir, { recursive: true, force: true });
});

const net = (path: string, body: unknown = ''): ReturnType<typeof post> => post(daemon.sockets.network, path, typeof body === 'string' ? body : JSON.stringify(body));
const ipam = (path: string, body: unknown = ''): ReturnType<typeof post> => post(daemon.sockets.ipam, path, typeof body === 'string' ? body : JSON.stringify(body));

async function snapshot(): Promise<string> {
  const { items } = await daemon.store.list('/');
  return JSON.stringify(items.map((kv) => [kv.key, kv.value]));
}

test.serial('replays a docker network create / run / rm sequence', async (t) => {
  const activate = await net('/Plugin.Activate');
  t.deepEqual(activate.body, { Implements: ['NetworkDriver'] });
  t.is(activate.contentType, 'application/vnd.docker.plugins.v1+json');
  t.deepEqual((await net('/NetworkDriver.GetCapabilities')).body, { Scope: 'local', ConnectivityScope: 'local' });
  t.deepEqual((await net('/NetworkDriver.DiscoverNew', fixture('/NetworkDriver.DiscoverNew'))).body, {});
  t.deepEqual((await ipam('/Plugin.Activate')).body, { Implements: ['IpamDriver'] });
  t.deepEqual((await ipam('/IpamDriver.GetCapabilities')).body, { RequiresMACAddress: false, RequiresRequestReplay: false });
  const spaces = (await ipam('/IpamDriver.GetDefaultAddressSpaces')).body;
  t.deepEqual(spaces, { LocalDefaultAddressSpace: 'CalicoLocalAddressSpace', GlobalDefaultAddressSpace: 'CalicoGlobalAddressSpace' });

  // The probe's own address space is refused, with the IPAM error key.
  const foreign = await ipam('/IpamDriver.RequestPool', fixture('/IpamDriver.RequestPool'));
  t.is(foreign.status, 200);
  t.regex(String(foreign.body['Error']), /unknown address space 'ProbeLocal'/);
  t.false('Err' in foreign.body);

  const anyPool = await ipam('/IpamDriver.RequestPool', { ...fixture('/IpamDriver.RequestPool'), AddressSpace: 'CalicoLocalAddressSpace' });
  t.deepEqual(anyPool.body, { PoolID: 'CalicoPoolIPv4', Pool: '0.0.0.0/0', Data: { 'com.docker.network.gateway': '0.0.0.0/0' } });
  const again = await ipam('/IpamDriver.RequestPool', { ...fixture('/IpamDriver.RequestPool'), AddressSpace: 'CalicoLocalAddressSpace' });
  t.deepEqual(again.body, anyPool.body, 'identical requests get identical answers');
  const subnet = await ipam('/IpamDriver.RequestPool', { ...fixture('/IpamDriver.RequestPool'), AddressSpace: 'CalicoLocalAddressSpace', Pool: POOL });
  t.deepEqual(subnet.body, { PoolID: POOL, Pool: POOL, Data: { 'com.docker.network.gateway': '0.0.0.0/0' } });

  // Docker asks for a gateway only when pool data names none (a swarm manager may): the answer
  // takes no address. A gateway the user chose (--gateway) is refused.
  const gateway = await ipam('/IpamDriver.RequestAddress', { ...fixture('/IpamDriver.RequestAddress', 0), PoolID: POOL });
  t.deepEqual(gateway.body, { Address: '0.0.0.0/0', Data: {} });
  const chosen = await ipam('/IpamDriver.RequestAddress', { ...fixture('/IpamDriver.RequestAddress', 0), PoolID: POOL, Address: '10.99.1.1' });
  t.regex(String(chosen.body['Error']), /--gateway is not supported/);

  const foreignNet = await net('/NetworkDriver.CreateNetwork', fixture('/NetworkDriver.CreateNetwork'));
  t.regex(String(foreignNet.body['Err']), /networks need the calico-ipam-c\w+ IPAM driver/);
  const createNet = fixture('/NetworkDriver.CreateNetwork');
  createNet['IPv4Data'] = [{ AddressSpace: 'CalicoLocalAddressSpace', Gateway: '0.0.0.0/0', Pool: POOL }];
  t.deepEqual((await net('/NetworkDriver.CreateNetwork', createNet)).body, {});

  const addr = await ipam('/IpamDriver.RequestAddress', { ...fixture('/IpamDriver.RequestAddress', 1), PoolID: POOL });
  t.regex(String(addr.body['Address']), /^10\.99\.1\.\d+\/32$/);
  const ip = String(addr.body['Address']);

  const createEp = fixture('/NetworkDriver.CreateEndpoint');
  createEp['Interface'] = { Address: ip, AddressIPv6: '', MacAddress: '' };
  t.deepEqual((await net('/NetworkDriver.CreateEndpoint', createEp)).body, {});

  const join = await net('/NetworkDriver.Join', fixture('/NetworkDriver.Join'));
  t.deepEqual(join.body, {
    InterfaceName: { SrcName: `tmp${ENDPOINT_ID.slice(0, 11)}`, DstPrefix: 'eth' },
    Gateway: '169.254.1.1',
    StaticRoutes: [{ Destination: '169.254.1.1/32', RouteType: 1, NextHop: '' }],
    DisableGatewayService: true,
  });
  t.true(await linkExists(`cali${ENDPOINT_ID.slice(0, 11)}`, { netns }));

  t.deepEqual((await net('/NetworkDriver.ProgramExternalConnectivity', fixture('/NetworkDriver.ProgramExternalConnectivity'))).body, {});
  const info = await net('/NetworkDriver.EndpointOperInfo', fixture('/NetworkDriver.EndpointOperInfo'));
  t.like(info.body, { Value: { hostInterface: `cali${ENDPOINT_ID.slice(0, 11)}`, ipv4: [ip] } });
  t.deepEqual((await net('/NetworkDriver.RevokeExternalConnectivity', fixture('/NetworkDriver.RevokeExternalConnectivity'))).body, {});
  t.deepEqual((await net('/NetworkDriver.Leave', fixture('/NetworkDriver.Leave'))).body, {});
  t.deepEqual((await net('/NetworkDriver.Leave', fixture('/NetworkDriver.Leave'))).body, {}, 'Leave twice is fine');
  // Leave starts removing the veth; DeleteEndpoint, which Docker sends next, finishes it.
  t.deepEqual((await net('/NetworkDriver.DeleteEndpoint', fixture('/NetworkDriver.DeleteEndpoint'))).body, {});
  t.false(await linkExists(`cali${ENDPOINT_ID.slice(0, 11)}`, { netns }));
  t.deepEqual((await net('/NetworkDriver.DeleteEndpoint', fixture('/NetworkDriver.DeleteEndpoint'))).body, {}, 'DeleteEndpoint twice is fine');

  const release = { PoolID: POOL, Address: ip.replace('/32', '') };
  t.deepEqual((await ipam('/IpamDriver.ReleaseAddress', release)).body, {});
  t.deepEqual((await ipam('/IpamDriver.ReleaseAddress', release)).body, {}, 'ReleaseAddress twice is harmless');
  t.deepEqual((await ipam('/IpamDriver.ReleasePool', { PoolID: POOL })).body, {});
  t.deepEqual((await net('/NetworkDriver.DeleteNetwork', fixture('/NetworkDriver.DeleteNetwork'))).body, {});
  const { items } = await daemon.store.list('/');
  t.false(items.some((kv) => kv.key.includes(NETWORK_ID) || kv.key.includes(ENDPOINT_ID)), 'no network or endpoint record left');
});

// A network's profile is named after the network, the one thing that ties it together across
// hosts: while Docker cannot tell the name, the endpoint waits for it, isolated, rather than
// taking a per-host network ID. Here Docker is absent at CreateEndpoint and answers later.
test.serial('an endpoint whose network name Docker cannot tell yet stays isolated until it can', async (t) => {
  const networkId = randomBytes(32).toString('hex');
  const endpointId = randomBytes(32).toString('hex');
  const createNet = { ...fixture('/NetworkDriver.CreateNetwork'), NetworkID: networkId, IPv4Data: [{ AddressSpace: 'CalicoLocalAddressSpace', Gateway: '0.0.0.0/0', Pool: POOL }] };
  t.deepEqual((await net('/NetworkDriver.CreateNetwork', createNet)).body, {});
  const addr = String((await ipam('/IpamDriver.RequestAddress', { ...fixture('/IpamDriver.RequestAddress', 1), PoolID: POOL })).body['Address']);
  const createEp = { ...fixture('/NetworkDriver.CreateEndpoint'), NetworkID: networkId, EndpointID: endpointId, Interface: { Address: addr, AddressIPv6: '', MacAddress: '' } };
  t.deepEqual((await net('/NetworkDriver.CreateEndpoint', createEp)).body, {});
  const key = `/calico/libnetwork/v1/nodes/contract-node/endpoints/${endpointId}`;
  const record = async (): Promise<Record<string, unknown>> => JSON.parse((await daemon.store.get(key))?.value ?? '{}') as Record<string, unknown>;
  t.like(await record(), { profiles: [], ready: false, profilesPending: true });

  // Docker answers now: the container list names the network this endpoint is on.
  const docker = createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    if ((req.url ?? '').includes('/containers/json')) {
      res.end(JSON.stringify([{ Id: 'c0ffee', Labels: { 'org.projectcalico.label.role': 'api' }, NetworkSettings: { Networks: { front: { EndpointID: endpointId } } } }]));
    } else {
      res.statusCode = 404;
      res.end('{"message":"not here"}');
    }
  });
  await new Promise<void>((done) => docker.listen(join(dataDir, 'no-docker.sock'), done));
  t.teardown(() => new Promise<void>((done) => docker.close(() => done())));
  const joined = await net('/NetworkDriver.Join', { ...fixture('/NetworkDriver.Join'), NetworkID: networkId, EndpointID: endpointId });
  t.is(joined.body['Gateway'], '169.254.1.1');
  const deadline = Date.now() + 10_000;
  while ((await record())['ready'] !== true && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.like(await record(), { profiles: ['front'], ready: true, profilesPending: false, labels: { role: 'api' }, containerId: 'c0ffee' });
  t.truthy(await daemon.store.get('/calico/libnetwork/v1/profiles/front'), 'the profile named after the network');

  const ep = { NetworkID: networkId, EndpointID: endpointId };
  t.deepEqual((await net('/NetworkDriver.Leave', ep)).body, {});
  t.deepEqual((await net('/NetworkDriver.DeleteEndpoint', ep)).body, {});
  t.deepEqual((await ipam('/IpamDriver.ReleaseAddress', { PoolID: POOL, Address: addr.replace('/32', '') })).body, {});
  t.deepEqual((await net('/NetworkDriver.DeleteNetwork', { NetworkID: networkId })).body, {});
});

test.serial('unknown paths answer 404 with the interface error key', async (t) => {
  const a = await net('/NetworkDriver.NoSuchMethod', '{}');
  t.is(a.status, 404);
  t.regex(String(a.body['Err']), /not implemented/);
  const b = await ipam('/IpamDriver.NoSuchMethod', '{}');
  t.is(b.status, 404);
  t.truthy(b.body['Error']);
});

test.serial('swarm: AllocateNetwork and FreeNetwork as the manager sends them (swarm network IDs are 25 characters)', async (t) => {
  const swarmId = 'ib3bdajqhe7vu5mplcwtjcfzg';
  const a = await net('/NetworkDriver.AllocateNetwork', { NetworkID: swarmId, Options: {}, IPv4Data: [{ AddressSpace: '', Gateway: '0.0.0.0/0', Pool: '0.0.0.0/0' }], IPv6Data: null });
  t.is(a.status, 200);
  t.deepEqual(a.body, { Options: {} });
  const bad = await net('/NetworkDriver.AllocateNetwork', { NetworkID: swarmId, Options: {}, IPv4Data: [{ Pool: 'x' }] });
  t.regex(String(bad.body['Err']), /IPAM pool/);
  const freed = await net('/NetworkDriver.FreeNetwork', { NetworkID: swarmId });
  t.deepEqual(freed.body, {});
});

test.serial('published ports are refused with a clear message', async (t) => {
  const body = fixture('/NetworkDriver.ProgramExternalConnectivity');
  body['Options'] = { 'com.docker.network.portmap': [{ Proto: 6, IP: '', Port: 80, HostIP: '', HostPort: 8080, HostPortEnd: 8080 }] };
  const a = await net('/NetworkDriver.ProgramExternalConnectivity', body);
  t.regex(String(a.body['Err']), /publishing ports \(-p\) is not supported/);
});

const malformed: [string, string | Buffer, number, RegExp][] = [
  ['truncated JSON', '{"NetworkID": "', 400, /not valid JSON/],
  ['a JSON array', '[]', 200, /must be an object, got array/],
  ['a wrong type', '{"NetworkID": 5}', 200, /NetworkID must be a string, got number/],
  ['an empty body', '', 200, /must be a string, got undefined/],
  ['an oversized body', Buffer.alloc(70 * 1024, 0x20), 413, /too large/],
];

for (const [what, body, status, message] of malformed) {
  test.serial(`NetworkDriver refuses ${what} and changes nothing`, async (t) => {
    const before = await snapshot();
    for (const method of ['CreateNetwork', 'CreateEndpoint', 'Join', 'Leave', 'DeleteEndpoint', 'DeleteNetwork']) {
      const a = await net(`/NetworkDriver.${method}`, body);
      t.is(a.status, status, method);
      t.regex(String(a.body['Err']), message, method);
      t.false('Error' in a.body);
    }
    t.is(await snapshot(), before);
  });

  test.serial(`IpamDriver refuses ${what} and changes nothing`, async (t) => {
    const before = await snapshot();
    for (const method of ['RequestAddress', 'ReleaseAddress', 'ReleasePool']) {
      const a = await ipam(`/IpamDriver.${method}`, body);
      t.is(a.status, status, method);
      t.regex(String(a.body['Error']), what === 'a wrong type' ? /must be a string, got/ : message, method);
      t.false('Err' in a.body);
    }
    t.is(await snapshot(), before);
  });
}

test.serial('bad values are refused before they reach the datastore or the kernel', async (t) => {
  const before = await snapshot();
  const cases: [Promise<Awaited<ReturnType<typeof post>>>, 'Err' | 'Error', RegExp][] = [
    [ipam('/IpamDriver.RequestPool', { AddressSpace: 'CalicoLocalAddressSpace', Pool: '10.99.1.0/24', SubPool: '10.99.1.0/25' }), 'Error', /--ip-range is not supported/],
    [ipam('/IpamDriver.RequestPool', { AddressSpace: 'CalicoLocalAddressSpace', Options: { foo: 'bar' } }), 'Error', /unsupported --ipam-opt 'foo'/],
    [ipam('/IpamDriver.RequestPool', { AddressSpace: 'CalicoLocalAddressSpace', Pool: '10.99.1.5/24' }), 'Error', /--subnet/],
    [ipam('/IpamDriver.RequestPool', { AddressSpace: 'CalicoLocalAddressSpace', Pool: '', V6: true }), 'Error', /no enabled IPv6 pool/],
    [ipam('/IpamDriver.RequestAddress', { PoolID: POOL, Address: '10.99.2.1' }), 'Error', /outside the network's subnet/],
    [ipam('/IpamDriver.RequestAddress', { PoolID: POOL, Address: 'not-an-ip' }), 'Error', /--ip/],
    [ipam('/IpamDriver.RequestAddress', { PoolID: 'bogus', Address: '' }), 'Error', /unknown PoolID 'bogus'/],
    [net('/NetworkDriver.CreateNetwork', { NetworkID: '../../etc/passwd' }), 'Err', /NetworkID must be a Docker network ID/],
    [net('/NetworkDriver.CreateNetwork', { NetworkID: NETWORK_ID, IPv4Data: [{ AddressSpace: 'CalicoLocalAddressSpace', Pool: 'x' }] }), 'Err', /IPAM pool/],
    [net('/NetworkDriver.CreateNetwork', { NetworkID: NETWORK_ID, Options: { 'com.docker.network.generic': { mtu: '9000' } }, IPv4Data: [{ AddressSpace: 'CalicoLocalAddressSpace', Pool: '0.0.0.0/0' }] }), 'Err', /unsupported network option 'mtu'/],
    [net('/NetworkDriver.CreateEndpoint', { NetworkID: NETWORK_ID, EndpointID: ENDPOINT_ID, Interface: { Address: '10.99.1.9/32' } }), 'Err', /network 33e8c3ffd93b is not known/],
    [net('/NetworkDriver.Join', { NetworkID: NETWORK_ID, EndpointID: ENDPOINT_ID, SandboxKey: '/x' }), 'Err', /endpoint 22e5b9dd1c95 does not exist/],
  ];
  for (const [answer, key, message] of cases) {
    const a = await answer;
    t.regex(String(a.body[key]), message);
  }
  t.is(await snapshot(), before);
});
