// A container on several calico networks, end to end: a real isolated dockerd, the real plugin
// (embedded store), real iptables. The compose front/back stack (through the Docker API as
// docker-compose drives it, and through docker-compose itself), `docker network connect` and
// `disconnect` on a running container with a label-selected rule, and a --subnet network with IPv6.
// Every check runs in both directions; ping succeeds only if the receiving network's profile
// admitted the source address, so a success also proves which address the sender used.
import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Docker from 'dockerode';
import { run } from '../../dataplane/exec';
import { linkExists } from '../../dataplane/veth';
import { addressOn, createNetwork, exec, removeNetwork, removeQuietly, type ContainerAddress } from '../harness/containers';
import { dockerWithImage, fileFixture } from '../harness/fixture';
import { reserveTestSubnets } from '../harness/test-subnets';
import { calicoctl, startPlugin, waitProgrammed } from '../harness/plugin';

const DOCKER_COMPOSE = '/usr/bin/docker-compose';

const c = fileFixture(test, async (onTeardown) => {
  const docker = await dockerWithImage(onTeardown, 'calico-multinet');
  // RFC 2544 benchmark ranges and a ULA: never routed outside this machine, random per run.
  const [v4Pool, subnetPool] = await reserveTestSubnets(2) as [string, string];
  const plugin = await startPlugin({
    dockerSocket: docker.dockerd.socketPath,
    ipv4Pool: v4Pool,
    ipv6Pool: `fd00:ca12:${randomBytes(2).toString('hex')}::/64`,
  });
  onTeardown(() => plugin.cleanup());
  const added = await calicoctl(plugin, ['pool', 'add', subnetPool]);
  if (added.code !== 0) throw new Error(added.stderr);
  const tmp = await mkdtemp(join(tmpdir(), 'calico-multinet-'));
  onTeardown(() => rm(tmp, { recursive: true, force: true }));
  /** subnetPool: a second IPv4 pool, for --subnet networks. */
  return { ...docker, plugin, tmp, subnetPool };
});

interface Member {
  readonly container: Docker.Container;
  readonly name: string;
}

/** Creates a container on its first network, connects the others before it starts (as
 * docker-compose does), starts it and waits for its policy on every network. */
async function startMember(t: ExecutionContext, networks: string[], labels: Record<string, string> = {}): Promise<Member> {
  const [first, ...rest] = networks;
  if (first === undefined) throw new Error('no network');
  const container = await c().docker.createContainer({
    Image: c().image,
    Cmd: ['sleep', '3600'],
    Labels: labels,
    HostConfig: { NetworkMode: first },
    NetworkingConfig: { EndpointsConfig: { [first]: {} } },
  });
  t.teardown(() => container.remove({ force: true }).catch(() => undefined));
  for (const net of rest) await c().docker.getNetwork(net).connect({ Container: container.id });
  await container.start();
  for (const net of networks) await waitProgrammed(c().plugin, (await addressOn(container, net)).endpointId);
  return { container, name: (await container.inspect()).Name.replace(/^\//, '') };
}

/** Docker makes the network whose name sorts first the container's gateway network (libnetwork
 * orders endpoints by network name): `tag` sets that order. */
async function network(t: ExecutionContext, tag: string, opts: { subnet?: string; ipv6?: boolean } = {}): Promise<string> {
  const name = `mn-${tag}-${randomBytes(3).toString('hex')}`;
  const net = await createNetwork(c().docker, { name, driver: c().plugin.networkDriver, ipamDriver: c().plugin.ipamDriver, ...opts });
  t.teardown(() => net.remove().catch(() => undefined));
  return name;
}

async function ping(from: Member, to: string): Promise<boolean> {
  const r = await exec(from.container, [to.includes(':') ? 'ping6' : 'ping', '-c', '1', '-W', '1', to]);
  return r.code === 0;
}

/** Reachable: retried for a few seconds (a freshly connected interface's routing is programmed
 * by the agent just after Docker moved it into the container). */
async function assertReaches(t: ExecutionContext, from: Member, to: string, what: string): Promise<void> {
  const deadline = Date.now() + 8_000;
  let ok = await ping(from, to);
  while (!ok && Date.now() < deadline) ok = await ping(from, to);
  t.true(ok, `${what}: ${from.name} reaches ${to}`);
}

async function assertBlocked(t: ExecutionContext, from: Member, to: string, what: string): Promise<void> {
  t.false(await ping(from, to), `${what}: ${from.name} must not reach ${to}`);
}

async function on(m: Member, net: string): Promise<ContainerAddress> {
  return addressOn(m.container, net);
}

/** Our rules and routes inside a container's namespace (from the host: busybox's ip lacks rules). */
async function sandboxRouting(m: Member): Promise<{ rules: string[]; routes: string[]; defaultRoute: string }> {
  const key = (await m.container.inspect()).NetworkSettings.SandboxKey;
  const ns = (args: string[]): Promise<string> => run('nsenter', [`--net=${key}`, 'ip', ...args], 'read container routing').then((r) => r.stdout);
  const proto = c().plugin.env['CALICO_ROUTE_PROTOCOL'] ?? '';
  const rules = [...(await ns(['-4', 'rule'])).split('\n'), ...(await ns(['-6', 'rule'])).split('\n')].filter((l) => l.startsWith('100:'));
  const routes = [...(await ns(['-4', 'route', 'show', 'table', 'all', 'proto', proto])).split('\n'), ...(await ns(['-6', 'route', 'show', 'table', 'all', 'proto', proto])).split('\n')].filter((l) => l !== '');
  return { rules, routes, defaultRoute: (await ns(['-4', 'route', 'show', 'default'])).trim() };
}

/** Nothing of the given endpoints is left: records, allocations, veths, host routes. */
async function assertNothingLeft(t: ExecutionContext, endpoints: ContainerAddress[]): Promise<void> {
  const listed = await calicoctl(c().plugin, ['endpoint', 'list', '-o', 'json']);
  t.is(listed.code, 0, listed.stderr);
  const ids = new Set((JSON.parse(listed.stdout) as { id: string }[]).map((e) => e.id));
  const ipam = await calicoctl(c().plugin, ['ipam', 'show', '-o', 'json']);
  const used = new Set((JSON.parse(ipam.stdout) as { allocations: { ip: string }[] }[]).flatMap((b) => b.allocations.map((a) => a.ip)));
  for (const ep of endpoints) {
    t.false(ids.has(ep.endpointId), `endpoint ${ep.endpointId.slice(0, 12)} removed`);
    t.false(await linkExists(c().plugin.hostIf(ep.endpointId)), `veth of ${ep.ipv4} removed`);
    for (const ip of [ep.ipv4, ep.ipv6].filter((a) => a !== '')) {
      t.false(used.has(ip), `${ip} released`);
      const { stdout } = await run('ip', ['-j', ip.includes(':') ? '-6' : '-4', 'route', 'show', 'exact', ip], 'routes');
      t.deepEqual(JSON.parse(stdout || '[]'), [], `route to ${ip} removed`);
    }
  }
}

/** The front/back stack's checks: web on both networks, client on front, db on back. */
async function checkStack(t: ExecutionContext, s: { front: string; back: string; web: Member; client: Member; db: Member }): Promise<ContainerAddress[]> {
  const [webFront, webBack, client, db] = await Promise.all([on(s.web, s.front), on(s.web, s.back), on(s.client, s.front), on(s.db, s.back)]);
  await assertReaches(t, s.client, webFront.ipv4, 'front');
  await assertReaches(t, s.web, client.ipv4, 'front');
  await assertReaches(t, s.db, webBack.ipv4, 'back (the reply leaves web by its back interface)');
  await assertReaches(t, s.web, db.ipv4, 'back (web starts from its back address)');
  await assertBlocked(t, s.client, db.ipv4, 'front to back');
  await assertBlocked(t, s.db, client.ipv4, 'back to front');
  await assertBlocked(t, s.client, webBack.ipv4, 'front member to web on back');
  await assertBlocked(t, s.db, webFront.ipv4, 'back member to web on front');
  return [webFront, webBack, client, db];
}

test.serial('compose front/back stack through the Docker API; down leaves nothing', async (t) => {
  const front = await network(t, 'front');
  const back = await network(t, 'back');
  const web = await startMember(t, [front, back]);
  const [client, db] = await Promise.all([startMember(t, [front]), startMember(t, [back])]);
  const endpoints = await checkStack(t, { front, back, web, client, db });
  // Both networks on the default pool: one address range, told apart by membership.
  const routing = await sandboxRouting(web);
  t.is(routing.rules.length, 2, routing.rules.join('\n'));
  // Each interface has its own gateway, in the order Docker joined them (random at start: Docker
  // walks a Go map). back sorts first, so Docker made it web's gateway network whatever that
  // order: front's traffic still leaves by front's interface, from front's address.
  const settings = (await web.container.inspect()).NetworkSettings.Networks;
  const gateways = { front: settings[front]?.Gateway ?? '', back: settings[back]?.Gateway ?? '' };
  t.deepEqual([gateways.front, gateways.back].sort(), ['169.254.1.1', '169.254.1.2']);
  t.true(routing.defaultRoute.startsWith(`default via ${gateways.back} `), routing.defaultRoute);
  t.deepEqual((await sandboxRouting(client)).rules, [], 'a container on one network gets no rules');

  await removeQuietly([web.container, client.container, db.container]);
  for (const net of [front, back]) await removeNetwork(c().docker.getNetwork(net));
  await assertNothingLeft(t, endpoints);
});

test.serial('docker-compose up and down with a front/back stack', async (t) => {
  if (!existsSync(DOCKER_COMPOSE)) {
    t.fail(`${DOCKER_COMPOSE} is not installed (scripts/setup.sh installs it)`);
    return;
  }
  const project = `mn${randomBytes(3).toString('hex')}`;
  const file = join(c().tmp, `${project}.yml`);
  const p = c().plugin;
  await writeFile(file, `version: "3.7"
services:
  web:
    image: ${c().image}
    command: ["sleep", "3600"]
    networks: [front, back]
  client:
    image: ${c().image}
    command: ["sleep", "3600"]
    networks: [front]
  db:
    image: ${c().image}
    command: ["sleep", "3600"]
    networks: [back]
networks:
  front:
    driver: ${p.networkDriver}
    ipam: {driver: ${p.ipamDriver}}
  back:
    driver: ${p.networkDriver}
    ipam: {driver: ${p.ipamDriver}}
`);
  const compose = (args: string[]): Promise<{ code: number; output: string }> => new Promise((resolve) => {
    execFile(DOCKER_COMPOSE, ['-p', project, '-f', file, ...args], { env: { PATH: process.env['PATH'] ?? '', DOCKER_HOST: `unix://${c().dockerd.socketPath}` }, timeout: 120_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, output: `${stdout}${stderr}` });
    });
  });
  t.teardown(async () => {
    await compose(['down', '--timeout', '1']);
  });
  const up = await compose(['up', '-d']);
  t.is(up.code, 0, up.output);
  const member = async (service: string): Promise<Member> => {
    const name = `${project}_${service}_1`;
    const container = c().docker.getContainer(name);
    const info = await container.inspect();
    for (const ep of Object.values(info.NetworkSettings.Networks)) await waitProgrammed(p, ep.EndpointID);
    return { container, name };
  };
  const [web, client, db] = await Promise.all(['web', 'client', 'db'].map(member)) as [Member, Member, Member];
  const endpoints = await checkStack(t, { front: `${project}_front`, back: `${project}_back`, web, client, db });
  const down = await compose(['down', '--timeout', '1']);
  t.is(down.code, 0, down.output);
  await assertNothingLeft(t, endpoints);
  const nets = await c().docker.listNetworks({ filters: { name: [project] } });
  t.deepEqual(nets.map((n) => n.Name), [], 'compose removed its networks');
});

test.serial('network connect and disconnect on a running container, with a label-selected rule on the second network', async (t) => {
  const net1 = await network(t, 'a');
  const net2 = await network(t, 'b');
  const net3 = await network(t, 'c');
  const c1 = await startMember(t, [net1]);
  const [peer1, peer2] = await Promise.all([startMember(t, [net1]), startMember(t, [net2])]);
  // A container on none of c1's networks, admitted to net2 by its label.
  const probe = await startMember(t, [net3], { 'org.projectcalico.label.role': 'probe' });
  const profile = join(c().tmp, `${net2}.yaml`);
  await writeFile(profile, `apiVersion: projectcalico.org/v3
kind: Profile
metadata:
  name: ${net2}
spec:
  ingress:
  - action: Allow
    source:
      selector: role == 'probe'
  - action: Allow
    source:
      selector: has(${net2})
  egress:
  - action: Allow
  labelsToApply:
    ${net2}: ""
`);
  const applied = await calicoctl(c().plugin, ['apply', '-f', profile]);
  t.is(applied.code, 0, applied.stderr);
  const c1net1 = await on(c1, net1);
  const before = await sandboxRouting(c1);
  t.deepEqual(before.rules, []);

  await c().docker.getNetwork(net2).connect({ Container: c1.container.id });
  const c1net2 = await on(c1, net2);
  await waitProgrammed(c().plugin, c1net2.endpointId);
  t.not(c1net2.ipv4, '');
  await assertReaches(t, peer2, c1net2.ipv4, 'net2 member to the new address');
  await assertReaches(t, c1, (await on(peer2, net2)).ipv4, 'to a net2 member, from the net2 address');
  await assertReaches(t, probe, c1net2.ipv4, 'label-admitted container to the net2 address (the reply leaves by eth1)');
  await assertBlocked(t, probe, c1net1.ipv4, 'label rule is net2\'s only');
  await assertReaches(t, peer1, c1net1.ipv4, 'net1 still, inbound');
  await assertReaches(t, c1, (await on(peer1, net1)).ipv4, 'net1 still, outbound');
  await assertBlocked(t, peer2, c1net1.ipv4, 'net2 member to the net1 address');
  const connected = await sandboxRouting(c1);
  t.regex(connected.defaultRoute, /^default via 169\.254\.1\.1 dev eth0/, 'the default route stays on net1 (its name sorts first)');
  t.true(connected.rules.some((r) => r.includes(`from ${c1net2.ipv4} lookup`)), connected.rules.join('\n'));

  await c().docker.getNetwork(net2).disconnect({ Container: c1.container.id });
  await assertReaches(t, peer1, c1net1.ipv4, 'net1 after disconnect, inbound');
  await assertReaches(t, c1, (await on(peer1, net1)).ipv4, 'net1 after disconnect, outbound');
  await assertBlocked(t, peer2, c1net2.ipv4, 'the net2 address is gone');
  const deadline = Date.now() + 5_000;
  let after = await sandboxRouting(c1);
  while ((after.rules.length > 0 || after.routes.length > 0) && Date.now() < deadline) after = await sandboxRouting(c1);
  t.deepEqual(after, before, 'back to a one-network container: our rules and routes are gone, Docker\'s are as they were');
  await assertNothingLeft(t, [c1net2]);
});

test.serial('a --subnet network with IPv6 next to a default-pool network', async (t) => {
  const plain = await network(t, 'plain');
  const dual = await network(t, 'dual', { subnet: c().subnetPool, ipv6: true });
  const both = await startMember(t, [plain, dual]);
  const [onPlain, onDual] = await Promise.all([startMember(t, [plain]), startMember(t, [dual])]);
  const bothDual = await on(both, dual);
  const dualPeer = await on(onDual, dual);
  t.not(bothDual.ipv6, '', 'an IPv6 address on the dual-stack network');
  t.true(bothDual.ipv4.startsWith(c().subnetPool.replace('.0/24', '.')), 'the --subnet pool\'s address');
  await assertReaches(t, onDual, bothDual.ipv4, 'dual, IPv4 in');
  await assertReaches(t, both, dualPeer.ipv4, 'dual, IPv4 out');
  await assertReaches(t, onDual, bothDual.ipv6, 'dual, IPv6 in');
  await assertReaches(t, both, dualPeer.ipv6, 'dual, IPv6 out');
  await assertReaches(t, onPlain, (await on(both, plain)).ipv4, 'plain in');
  await assertReaches(t, both, (await on(onPlain, plain)).ipv4, 'plain out');
  await assertBlocked(t, onPlain, bothDual.ipv4, 'plain member to the dual address');
  await assertBlocked(t, onDual, (await on(both, plain)).ipv4, 'dual member to the plain address');
  const routing = await sandboxRouting(both);
  t.true(routing.rules.some((r) => r.includes(`from ${bothDual.ipv6} lookup`)), routing.rules.join('\n'));
});
