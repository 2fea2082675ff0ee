// calicoctl against a running daemon's embedded store (through its socket) and, once the daemon
// is gone, against the store files directly.
import test from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { calicoctl, startPlugin, type Plugin } from '../harness/plugin';
import { post } from '../harness/plugin-client';
import { Keys } from '../../datastore/keys';
import { RemoteStore, storeSocketPath } from '../../datastore/store-socket';

let plugin: Plugin;

test.before(async () => {
  // No Docker is needed for pool management; the socket path only has to be well-formed.
  plugin = await startPlugin({ dockerSocket: '/nonexistent/docker.sock', ipv4Pool: '198.18.64.0/24', env: { IP: '198.18.200.7/24' } });
});

test.after.always(async () => {
  await plugin?.cleanup();
});

test.serial('pool add, list in every format, and remove', async (t) => {
  const add = await calicoctl(plugin, ['pool', 'add', '198.18.80.0/24', '--block-size', '28', '--nat-outgoing']);
  t.is(add.code, 0, add.stderr);
  t.regex(add.stdout, /added pool 198\.18\.80\.0\/24 \(block size \/28\)/);
  const again = await calicoctl(plugin, ['pool', 'add', '198.18.80.0/24']);
  t.is(again.code, 0);
  t.regex(again.stdout, /already exists/);

  const json = await calicoctl(plugin, ['pool', 'list', '-o', 'json']);
  t.is(json.code, 0, json.stderr);
  const pools = JSON.parse(json.stdout) as { cidr: string; blockSize: number; natOutgoing: boolean; disabled: boolean }[];
  t.like(pools.find((p) => p.cidr === '198.18.80.0/24'), { blockSize: 28, natOutgoing: true, disabled: false });
  t.truthy(pools.find((p) => p.cidr === '198.18.64.0/24'), 'the default pool from CALICO_IPV4POOL_CIDR');

  const table = await calicoctl(plugin, ['pool', 'list']);
  t.regex(table.stdout, /^CIDR\s+BLOCK SIZE\s+DISABLED\s+NAT OUTGOING\s+VXLAN\s+ALLOCATED$/m);
  t.regex(table.stdout, /^198\.18\.80\.0\/24\s+\/28\s+false\s+true\s+Never\s+0$/m);
  const vx = await calicoctl(plugin, ['pool', 'add', '198.18.96.0/24', '--vxlan-mode', 'CrossSubnet']);
  t.is(vx.code, 0, vx.stderr);
  t.regex(vx.stdout, /added pool 198\.18\.96\.0\/24 \(block size \/26, VXLAN CrossSubnet\)/);
  t.regex((await calicoctl(plugin, ['pool', 'list'])).stdout, /^198\.18\.96\.0\/24\s+\/26\s+false\s+false\s+CrossSubnet\s+0$/m);
  const badMode = await calicoctl(plugin, ['pool', 'add', '198.18.97.0/24', '--vxlan-mode', 'sometimes']);
  t.not(badMode.code, 0);
  t.regex(badMode.stderr, /vxlanMode must be one of Never, CrossSubnet, Always/);
  const yaml = await calicoctl(plugin, ['pool', 'list', '-o', 'yaml']);
  t.regex(yaml.stdout, /- cidr: 198\.18\.80\.0\/24\n\s+blockSize: 28/);

  const removed = await calicoctl(plugin, ['pool', 'remove', '198.18.80.0/24']);
  t.is(removed.code, 0, removed.stderr);
  const after = JSON.parse((await calicoctl(plugin, ['pool', 'list', '-o', 'json'])).stdout) as { cidr: string }[];
  t.false(after.some((p) => p.cidr === '198.18.80.0/24'));
});

test.serial('node list: this host, its address, blocks and endpoints, alive while its daemon serves', async (t) => {
  const json = await calicoctl(plugin, ['node', 'list', '-o', 'json']);
  t.is(json.code, 0, json.stderr);
  const nodes = JSON.parse(json.stdout) as Array<{ name: string; ipv4Address: string; ipv6Address: string; blocks: string[]; endpoints: number; alive: boolean }>;
  t.like(nodes.find((n) => n.name === plugin.node), { ipv4Address: '198.18.200.7/24', ipv6Address: '', endpoints: 0, alive: true });
  const table = await calicoctl(plugin, ['node', 'list']);
  t.regex(table.stdout, /^NAME\s+IPV4\s+IPV6\s+BLOCKS\s+ENDPOINTS\s+ALIVE$/m);
  t.regex(table.stdout, new RegExp(`^${plugin.node}\\s+198\\.18\\.200\\.7/24\\s+-\\s+\\d+\\s+0\\s+yes$`, 'm'));
});

test.serial('node remove: refused while the host has endpoints, --force removes them too', async (t) => {
  const store = new RemoteStore(storeSocketPath(plugin.env['CALICO_DATA_DIR'] ?? ''));
  t.teardown(() => store.close());
  const keys = new Keys(plugin.env['CALICO_DATASTORE_PREFIX']);
  const gone = 'gone-host';
  await store.create(keys.node(gone), JSON.stringify({ name: gone, version: 'x', datastore: 'embedded', startedAt: '2026-11-30T00:00:00Z', ipv4Address: '198.18.200.9/24' }));
  await store.create(keys.endpoint(gone, 'ep1'), '{}');
  const refused = await calicoctl(plugin, ['node', 'remove', gone]);
  t.is(refused.code, 1);
  t.regex(refused.stderr, /node gone-host still has 1 endpoint; remove its containers first, or use --force/);
  t.truthy(await store.get(keys.node(gone)), 'nothing changed');
  const forced = await calicoctl(plugin, ['node', 'remove', gone, '--force']);
  t.is(forced.code, 0, forced.stderr);
  t.regex(forced.stdout, /removed node gone-host: 0 blocks released, 0 addresses freed, 1 endpoint record removed/);
  t.is(await store.get(keys.node(gone)), undefined);
  t.deepEqual((await store.list(keys.endpointsPrefix(gone))).items, []);
  const unknown = await calicoctl(plugin, ['node', 'remove', gone]);
  t.regex(unknown.stderr, /node gone-host is not registered/);
});

test.serial('bad input is refused with a clear message and changes nothing', async (t) => {
  const before = (await calicoctl(plugin, ['pool', 'list', '-o', 'json'])).stdout;
  const cases: [string[], RegExp][] = [
    [['pool', 'add', '198.18.90.1/24'], /host bits are set/],
    [['pool', 'add', 'banana'], /CIDR/],
    [['pool', 'add', '198.18.90.0/24', '--block-size', '8'], /block size must be a prefix length from 24 to 32/],
    [['pool', 'add', '198.18.64.0/25'], /overlaps/],
    [['pool', 'remove', '198.18.99.0/24'], /198\.18\.99\.0\/24/],
    [['pool', 'list', '-o', 'xml'], /-o must be table, json or yaml/],
    [['frobnicate'], /unknown command 'frobnicate'/],
  ];
  for (const [args, message] of cases) {
    const r = await calicoctl(plugin, args);
    t.is(r.code, 1, args.join(' '));
    t.regex(r.stderr, message, args.join(' '));
  }
  t.is((await calicoctl(plugin, ['pool', 'list', '-o', 'json'])).stdout, before);
});

test.serial('a pool with allocated addresses cannot be removed', async (t) => {
  const socket = `/run/docker/plugins/${plugin.ipamDriver}.sock`;
  const got = await post(socket, '/IpamDriver.RequestAddress', JSON.stringify({ PoolID: 'CalicoPoolIPv4', Address: '', Options: null }));
  const address = String(got.body['Address']);
  t.regex(address, /^198\.18\.64\.\d+\/32$/);
  const refused = await calicoctl(plugin, ['pool', 'remove', '198.18.64.0/24']);
  t.is(refused.code, 1);
  t.regex(refused.stderr, /in use/);
  const shown = JSON.parse((await calicoctl(plugin, ['ipam', 'show', '-o', 'json'])).stdout) as { node: string; used: number; allocations: { ip: string; node: string; kind: string }[] }[];
  t.like(shown[0], { node: plugin.node, used: 1 });
  t.like(shown[0]?.allocations[0], { ip: address.replace('/32', ''), node: plugin.node, kind: 'container' });
  await post(socket, '/IpamDriver.ReleaseAddress', JSON.stringify({ PoolID: 'CalicoPoolIPv4', Address: address.replace('/32', '') }));
});

test.serial('ipam release-swarm frees what a swarm left for good, never an address in use', async (t) => {
  const socket = `/run/docker/plugins/${plugin.ipamDriver}.sock`;
  const ask = async (): Promise<string> => {
    const got = await post(socket, '/IpamDriver.RequestAddress', JSON.stringify({ PoolID: 'CalicoGlobalPoolIPv4', Address: '', Options: { 'com.docker.network.ipam.serial': 'true' } }));
    return String(got.body['Address']).replace('/32', '');
  };
  const [task, vip] = [await ask(), await ask()];
  const store = new RemoteStore(storeSocketPath(plugin.env['CALICO_DATA_DIR'] ?? ''));
  t.teardown(() => store.close());
  const keys = new Keys(plugin.env['CALICO_DATASTORE_PREFIX']);
  // A task still running somewhere: its endpoint record holds the address.
  const record = keys.endpoint('host-x', 'task1');
  await store.create(record, JSON.stringify({ id: 'task1', networkId: 'n', node: 'host-x', hostInterface: 'calitask1', ipv4: [`${task}/32`], createdAt: 'x' }));
  const refused = await calicoctl(plugin, ['ipam', 'release-swarm']);
  t.is(refused.code, 1);
  t.regex(refused.stderr, new RegExp(`1 of the swarm's addresses are in use by containers \\(${task.replaceAll('.', '\\.')}\\)`));
  const held = async (): Promise<string[]> => (JSON.parse((await calicoctl(plugin, ['ipam', 'show', '-o', 'json'])).stdout) as { allocations: { ip: string; node: string }[] }[])
    .flatMap((b) => b.allocations).filter((a) => a.node === '@swarm').map((a) => a.ip).sort();
  t.deepEqual(await held(), [task, vip].sort(), 'nothing freed');
  await store.delete(record);
  const released = await calicoctl(plugin, ['ipam', 'release-swarm']);
  t.is(released.code, 0, released.stderr);
  t.regex(released.stdout, /released 2 addresses held by the swarm manager/);
  t.deepEqual(await held(), []);
});

test.serial('ipam show and endpoint list work with nothing allocated', async (t) => {
  const ipam = await calicoctl(plugin, ['ipam', 'show', '-o', 'json']);
  t.is(ipam.code, 0, ipam.stderr);
  t.is((JSON.parse(ipam.stdout) as { used: number }[]).reduce((n, b) => n + b.used, 0), 0);
  const eps = await calicoctl(plugin, ['endpoint', 'list']);
  t.is(eps.code, 0, eps.stderr);
  t.regex(eps.stdout, /^NODE\s+ENDPOINT\s+NETWORK/);
});


test.serial('profiles: apply, get in every format, round trip, delete', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'calicoctl-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'web.yaml');
  await writeFile(file, `apiVersion: projectcalico.org/v3
kind: Profile
metadata:
  name: web
spec:
  ingress:
  - action: Allow
    protocol: TCP
    source:
      selector: role == 'frontend' && !has(blocked)
    destination:
      ports: [80, "8000:8080"]
  - action: Deny
    source:
      nets: [198.18.0.0/16]
  egress:
  - action: Allow
`);
  const applied = await calicoctl(plugin, ['apply', '-f', file]);
  t.is(applied.code, 0, applied.stderr);
  t.is(applied.stdout.trim(), 'profile web created');
  t.is((await calicoctl(plugin, ['apply', '-f', file])).stdout.trim(), 'profile web unchanged');

  const yaml = await calicoctl(plugin, ['get', 'profile', 'web', '-o', 'yaml']);
  t.is(yaml.code, 0, yaml.stderr);
  t.regex(yaml.stdout, /selector: "!has\(blocked\) && role == 'frontend'"/, 'stored in canonical form');
  // What `get` prints is valid input for `apply`.
  const copy = join(dir, 'copy.yaml');
  await writeFile(copy, yaml.stdout);
  t.is((await calicoctl(plugin, ['apply', '-f', copy])).stdout.trim(), 'profile web unchanged');

  const json = JSON.parse((await calicoctl(plugin, ['get', 'profile', '-o', 'json'])).stdout) as { kind: string; items: { metadata: { name: string } }[] };
  t.is(json.kind, 'ProfileList');
  t.true(json.items.some((p) => p.metadata.name === 'web'));
  const table = await calicoctl(plugin, ['get', 'profile']);
  t.regex(table.stdout, /^web\s+2\s+1\s*$/m);

  t.is((await calicoctl(plugin, ['delete', 'profile', 'web'])).code, 0);
  const gone = await calicoctl(plugin, ['get', 'profile', 'web']);
  t.is(gone.code, 1);
  t.regex(gone.stderr, /profile 'web' does not exist/);
});

test.serial('profiles: bad documents are refused with a clear message and write nothing', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'calicoctl-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const doc = (rule: string, name = 'bad'): string => `kind: Profile\nmetadata:\n  name: ${name}\nspec:\n  ingress:\n  - action: Allow\n${rule}`;
  const cases: [string, string, RegExp][] = [
    ['bad selector', doc('    source:\n      selector: "role == frontend"\n'), /column 9/],
    ['unknown field', doc('    sauce:\n      nets: [198.18.0.0/16]\n'), /sauce/],
    ['port out of range', doc('    protocol: TCP\n    destination:\n      ports: [70000]\n'), /70000/],
    ['bad CIDR', doc('    source:\n      nets: [198.18.0.300/16]\n'), /198\.18\.0\.300\/16/],
    ['ports without protocol', doc('    destination:\n      ports: [80]\n'), /protocol/i],
    ['injection through a name', doc('', 'x --jump ACCEPT'), /name/],
    ['injection through a selector', doc('    source:\n      selector: "role == \'a\' -j ACCEPT"\n'), /selector/],
    ['a second bad document after a good one', `${doc('', 'good')}---\n${doc('    protocol: TCP\n    destination:\n      ports: ["9:1"]\n')}`, /9:1/],
  ];
  for (const [what, text, message] of cases) {
    const file = join(dir, 'p.yaml');
    await writeFile(file, text);
    const r = await calicoctl(plugin, ['apply', '-f', file]);
    t.is(r.code, 1, what);
    t.regex(r.stderr, message, what);
  }
  const listed = JSON.parse((await calicoctl(plugin, ['get', 'profile', '-o', 'json'])).stdout) as { items: { metadata: { name: string } }[] };
  t.deepEqual(listed.items.map((p) => p.metadata.name).filter((n) => n === 'good' || n === 'bad'), [], 'nothing written');
});

test.serial('after the daemon stops, calicoctl opens the store files directly', async (t) => {
  t.is(await plugin.stop(), 0, 'SIGTERM exits cleanly');
  const list = await calicoctl(plugin, ['pool', 'list', '-o', 'json']);
  t.is(list.code, 0, list.stderr);
  t.true((JSON.parse(list.stdout) as { cidr: string }[]).some((p) => p.cidr === '198.18.64.0/24'));
});
