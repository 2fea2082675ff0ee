// Reconciliation after a crash, with a real isolated dockerd and the real plugin binary: the plugin
// killed (SIGKILL) while 10 containers start, restarted, every container removed, and then the
// reconciler (interval and grace period made short here) leaves no endpoint record, allocation,
// veth or host route behind. And an allocation whose CreateEndpoint has not come yet (a request in
// flight) is left alone for the grace period, then released. And a simulated reboot: dockerd (with
// its containers) and the plugin killed, our kernel state gone, both started again.
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import Docker from 'dockerode';
import { run } from '../../dataplane/exec';
import { addressOn, createNetwork, exec, runContainer } from '../harness/containers';
import { startDockerd, type Dockerd } from '../harness/dockerd';
import { importTestImage } from '../harness/image';
import { post } from '../harness/plugin-client';
import { calicoctl, linksWithPrefix, startPlugin, waitProgrammed, type Plugin } from '../harness/plugin';
import { reserveTestSubnet } from '../harness/test-subnets';

interface Context {
  dockerd: Dockerd;
  docker: Docker;
  image: string;
}

let ctx: Context | undefined;
const c = (): Context => {
  if (ctx === undefined) throw new Error('setup failed');
  return ctx;
};
const teardowns: (() => Promise<unknown>)[] = [];

test.before(async () => {
  const dockerd = await startDockerd();
  teardowns.push(() => dockerd.stop());
  const image = `calico-test-${randomBytes(3).toString('hex')}:latest`;
  await importTestImage(dockerd.socketPath, image);
  ctx = { dockerd, docker: new Docker({ socketPath: dockerd.socketPath }), image };
});

test.after.always(async () => {
  for (const td of teardowns.reverse()) await td().catch((err: unknown) => console.error('teardown:', err));
});

/** A plugin of this test's own (removed at the end of the test, also on failure). */
async function plugin(t: ExecutionContext, pool: string, env: Record<string, string>): Promise<Plugin> {
  const p = await startPlugin({ dockerSocket: c().dockerd.socketPath, ipv4Pool: pool, env });
  t.teardown(() => p.cleanup());
  return p;
}

/** A pool of its own (reserved: test files running at once never share one). */
async function testPool(): Promise<{ cidr: string; prefix: string }> {
  const cidr = await reserveTestSubnet();
  return { cidr, prefix: cidr.replace('0/24', '') };
}

interface Traces {
  readonly endpoints: number;
  readonly addresses: string[];
  readonly veths: string[];
  readonly routes: string[];
}

async function traces(p: Plugin, poolPrefix: string): Promise<Traces> {
  const eps = await calicoctl(p, ['endpoint', 'list', '-o', 'json']);
  if (eps.code !== 0) throw new Error(eps.stderr);
  const ipam = await calicoctl(p, ['ipam', 'show', '-o', 'json']);
  if (ipam.code !== 0) throw new Error(ipam.stderr);
  const blocks = JSON.parse(ipam.stdout) as { allocations: { ip: string }[] }[];
  const { stdout } = await run('ip', ['-j', '-4', 'route', 'show'], 'list routes');
  const routes = (JSON.parse(stdout || '[]') as { dst: string }[]).map((r) => r.dst)
    // Host routes to containers (ip prints them without a prefix); not the block's own route.
    .filter((d) => d.startsWith(poolPrefix) && !d.includes('/'));
  return {
    endpoints: (JSON.parse(eps.stdout) as unknown[]).length,
    addresses: blocks.flatMap((b) => b.allocations.map((a) => a.ip)),
    veths: await linksWithPrefix(p.ifPrefix),
    routes,
  };
}

const clean = (x: Traces): boolean => x.endpoints === 0 && x.addresses.length === 0 && x.veths.length === 0 && x.routes.length === 0;

async function removeAllContainers(docker: Docker): Promise<void> {
  const all = await docker.listContainers({ all: true });
  await Promise.all(all.map((x) => docker.getContainer(x.Id).remove({ force: true }).catch(() => undefined)));
}

test.serial('plugin killed during 10 concurrent container starts, restarted: nothing leaked once every container is removed', async (t) => {
  const pool = await testPool();
  const p = await plugin(t, pool.cidr, { CALICO_RECONCILE_INTERVAL: '2', CALICO_RECONCILE_GRACE: '3' });
  const name = `net-${randomBytes(3).toString('hex')}`;
  const net = await createNetwork(c().docker, { name, driver: p.networkDriver, ipamDriver: p.ipamDriver });
  t.teardown(async () => {
    await removeAllContainers(c().docker);
    await net.remove().catch(() => undefined);
  });
  const starts = Array.from({ length: 10 }, () => runContainer(c().docker, { image: c().image, network: name }));
  // Kill once some of the starts are under way: a couple of veths exist, others are still coming.
  const deadline = Date.now() + 60_000;
  while ((await linksWithPrefix(p.ifPrefix)).length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  await p.kill();
  t.log(`killed with ${(await linksWithPrefix(p.ifPrefix)).length} veths in place`);
  await p.restart();
  const results = await Promise.allSettled(starts);
  t.log(`${results.filter((r) => r.status === 'fulfilled').length} of 10 containers started`);
  await removeAllContainers(c().docker);
  t.deepEqual(await c().docker.listContainers({ all: true }), []);

  let last = await traces(p, pool.prefix);
  const until = Date.now() + 30_000;
  while (!clean(last) && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 500));
    last = await traces(p, pool.prefix);
  }
  t.deepEqual(last, { endpoints: 0, addresses: [], veths: [], routes: [] }, p.output());
  const lines = p.output().split('\n').filter((l) => /removed endpoint|removed veth|released address/.test(l));
  t.log(`reconciler: ${lines.length} line(s)\n${lines.join('\n')}`);
  // The network is usable afterwards: a new container gets an address and nothing is handed out twice.
  const again = await runContainer(c().docker, { image: c().image, network: name });
  const info = await again.inspect();
  const ep = info.NetworkSettings.Networks[name];
  t.true(ep?.IPAddress.startsWith(pool.prefix));
  // Its allocation names more than the pool: when it was handed out, the endpoint and the container.
  type Shown = { ip: string; handle: string; endpointId?: string; containerId?: string; allocatedAt?: string };
  const shown = async (): Promise<Shown[]> =>
    (JSON.parse((await calicoctl(p, ['ipam', 'show', '-o', 'json'])).stdout) as { allocations: Shown[] }[]).flatMap((b) => b.allocations);
  let allocations = await shown();
  for (let i = 0; i < 40 && allocations[0]?.containerId === undefined; i++) {
    await new Promise((r) => setTimeout(r, 250));
    allocations = await shown();
  }
  t.is(allocations.length, 1);
  t.like(allocations[0], { ip: ep?.IPAddress, handle: 'docker:CalicoPoolIPv4', endpointId: ep?.EndpointID, containerId: info.Id });
  t.false(Number.isNaN(Date.parse(allocations[0]?.allocatedAt ?? '')));
  await again.remove({ force: true });
});

test.serial('an allocation whose endpoint is not recorded yet is left alone for the grace period, then released', async (t) => {
  const pool = await testPool();
  // Long enough that the check below (two calicoctl runs on a busy machine) ends well inside it.
  const graceS = 20;
  const p = await plugin(t, pool.cidr, { CALICO_RECONCILE_INTERVAL: '1', CALICO_RECONCILE_GRACE: String(graceS) });
  const socket = join('/run/docker/plugins', `${p.ipamDriver}.sock`);
  // What Docker sends before CreateEndpoint: RequestAddress, which names only the pool.
  const answer = await post(socket, '/IpamDriver.RequestAddress', JSON.stringify({ PoolID: 'CalicoPoolIPv4', Address: '', Options: {} }));
  t.is(answer.status, 200, JSON.stringify(answer.body));
  const address = String(answer.body['Address']).replace('/32', '');
  const askedAt = Date.now();
  t.true(address.startsWith(pool.prefix), address);
  // Wait until the reconciler has run several times within the grace period.
  const runsBefore = (): number => p.output().split('Docker answers: reconciling').length - 1;
  const ready = Date.now() + 20_000;
  while (runsBefore() === 0 && Date.now() < ready) await new Promise((r) => setTimeout(r, 100));
  t.is(runsBefore(), 1, p.output());
  await new Promise((r) => setTimeout(r, Math.max(0, askedAt + 6_000 - Date.now())));
  t.deepEqual((await traces(p, pool.prefix)).addresses, [address], `pending allocation kept within the grace period\n${p.output()}`);
  t.false(p.output().includes(`released address ${address}`));
  // Past the grace period nothing will ever claim it: released, with a log line.
  const until = Date.now() + 30_000;
  let left = (await traces(p, pool.prefix)).addresses;
  while (left.length > 0 && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 250));
    left = (await traces(p, pool.prefix)).addresses;
  }
  t.deepEqual(left, []);
  t.true(Date.now() - askedAt >= graceS * 1000);
  t.regex(p.output(), new RegExp(`released address ${address.replace(/\./g, '\\.')} .*no endpoint was ever recorded`));
});

test.serial('containers removed while the plugin is down: their records, veths, routes and addresses go once it is back', async (t) => {
  const pool = await testPool();
  const p = await plugin(t, pool.cidr, { CALICO_RECONCILE_INTERVAL: '2', CALICO_RECONCILE_GRACE: '3' });
  const name = `net-${randomBytes(3).toString('hex')}`;
  const net = await createNetwork(c().docker, { name, driver: p.networkDriver, ipamDriver: p.ipamDriver });
  t.teardown(async () => {
    await removeAllContainers(c().docker);
    await net.remove().catch(() => undefined);
  });
  const containers = await Promise.all([0, 1].map(() => runContainer(c().docker, { image: c().image, network: name })));
  const endpoints = await Promise.all(containers.map(async (x) => (await x.inspect()).NetworkSettings.Networks[name]?.EndpointID ?? ''));
  t.is((await traces(p, pool.prefix)).endpoints, 2);
  await p.kill();
  // Docker gives up on the dead plugin (Leave, DeleteEndpoint and ReleaseAddress fail) and
  // removes the containers anyway.
  await removeAllContainers(c().docker);
  t.deepEqual(await c().docker.listContainers({ all: true }), []);
  const left = await traces(p, pool.prefix);
  t.log(`left behind while the plugin was down: ${JSON.stringify(left)}`);
  await p.restart();
  let last = await traces(p, pool.prefix);
  const until = Date.now() + 30_000;
  while (!clean(last) && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 500));
    last = await traces(p, pool.prefix);
  }
  t.deepEqual(last, { endpoints: 0, addresses: [], veths: [], routes: [] }, p.output());
  if (left.endpoints > 0) {
    for (const id of endpoints) t.regex(p.output(), new RegExp(`removed endpoint ${id.slice(0, 12)} `));
  }
});

/** This plugin's chains (IPv4 and IPv6) and ipsets, by name: what must be back to the baseline
 * once every container and network is gone. */
async function kernelObjects(p: Plugin): Promise<string[]> {
  const names: string[] = [];
  for (const tool of ['iptables-save', 'ip6tables-save']) {
    const { stdout } = await run(tool, [], `read ${tool}`);
    for (const line of stdout.split('\n')) if (line.startsWith(`:${p.chainPrefix}`)) names.push(`${tool} ${line.slice(1).split(' ')[0] ?? ''}`);
  }
  const { stdout } = await run('ipset', ['list', '-n'], 'list ipsets');
  names.push(...stdout.split('\n').filter((n) => n.startsWith(p.chainPrefix)).map((n) => `ipset ${n}`));
  return names.sort();
}

test.serial('a simulated reboot: dockerd and plugin killed, veths, routes and chains gone; both restarted, containers come back reachable with policy, and nothing is leaked once they are removed', async (t) => {
  const t0 = Date.now();
  const mark = (what: string): void => t.log(`${((Date.now() - t0) / 1000).toFixed(1)}s ${what}`);
  const pool = await testPool();
  const p = await plugin(t, pool.cidr, { CALICO_RECONCILE_INTERVAL: '2', CALICO_RECONCILE_GRACE: '3' });
  const baseline = await kernelObjects(p);
  const names = ['a', 'b'].map((x) => `${x}-${randomBytes(3).toString('hex')}`);
  const nets = await Promise.all(names.map((name) => createNetwork(c().docker, { name, driver: p.networkDriver, ipamDriver: p.ipamDriver })));
  const [front, back] = names as [string, string];
  t.teardown(async () => {
    await removeAllContainers(c().docker);
    for (const n of nets) await n.remove().catch(() => undefined);
  });
  // Two on one network (they talk), one on another (its profile keeps it out).
  const [a1, a2, b1] = await Promise.all([front, front, back].map((network) => runContainer(c().docker, { image: c().image, network, restart: 'always' })));
  if (a1 === undefined || a2 === undefined || b1 === undefined) throw new Error('unreachable');
  const reachable = async (): Promise<void> => {
    const [x, y, z] = await Promise.all([addressOn(a1, front), addressOn(a2, front), addressOn(b1, back)]);
    await Promise.all([x, y, z].map((e) => waitProgrammed(p, e.endpointId, 30_000)));
    const same = await exec(a1, ['ping', '-c', '1', '-W', '5', y.ipv4]);
    t.is(same.code, 0, `same network: ${same.output}`);
    const across = await exec(b1, ['ping', '-c', '1', '-W', '2', y.ipv4]);
    t.not(across.code, 0, 'another network is kept out by policy');
  };
  await reachable();
  mark('containers up and reachable');
  const before = await Promise.all([a1, a2, b1].map(async (x, i) => addressOn(x, i < 2 ? front : back)));

  // The reboot: everything dies at once, and the kernel forgets our veths, routes, chains and sets.
  await p.kill();
  await c().dockerd.crash();
  await p.wipeKernel();
  t.deepEqual(await linksWithPrefix(p.ifPrefix), []);
  t.deepEqual((await traces(p, pool.prefix)).routes, []);
  t.deepEqual(await kernelObjects(p), []);
  // Boot: the plugin starts before Docker (as its systemd unit does), Docker restarts the containers.
  mark('rebooted');
  await p.restart();
  await c().dockerd.start();
  mark('plugin and dockerd started');
  const until = Date.now() + 60_000;
  const running = async (): Promise<boolean> => {
    const states = await Promise.all([a1, a2, b1].map(async (x) => (await x.inspect()).State.Running));
    return states.every(Boolean);
  };
  while (!(await running()) && Date.now() < until) await new Promise((r) => setTimeout(r, 250));
  t.true(await running(), 'Docker restarted every container');
  const after = await Promise.all([a1, a2, b1].map(async (x, i) => addressOn(x, i < 2 ? front : back)));
  t.log(`endpoints before ${before.map((e) => `${e.endpointId.slice(0, 12)} ${e.ipv4}`).join(', ')}; after ${after.map((e) => `${e.endpointId.slice(0, 12)} ${e.ipv4}`).join(', ')}`);
  mark('containers restarted');
  await reachable();
  mark('reachable again');
  // The old endpoints go. Docker 20.10, restoring, sends ReleaseAddress for their addresses but no
  // Leave or DeleteEndpoint, so their records go through the reconciler (seen: 'removed endpoint
  // ... its endpoint is gone from Docker'). Then: one record and one address per container, and
  // nothing for ipam check to find.
  let now = await traces(p, pool.prefix);
  const settled = Date.now() + 30_000;
  while ((now.endpoints !== 3 || now.addresses.length !== 3) && Date.now() < settled) {
    await new Promise((r) => setTimeout(r, 500));
    now = await traces(p, pool.prefix);
  }
  t.is(now.endpoints, 3, p.output());
  const lines = p.output().split('\n').filter((l) => /removed endpoint|removed veth|released address/.test(l));
  t.log(`reconciler after the reboot: ${lines.length} line(s)\n${lines.join('\n')}`);
  t.deepEqual([...now.addresses].sort(), after.map((e) => e.ipv4).sort());
  t.deepEqual([...now.veths].sort(), after.map((e) => p.hostIf(e.endpointId)).sort());
  const check = await calicoctl(p, ['ipam', 'check', '-o', 'json']);
  t.deepEqual((JSON.parse(check.stdout) as { findings: unknown[] }).findings, [], check.stdout);

  mark('settled');
  await removeAllContainers(c().docker);
  for (const n of nets) await n.remove();
  let last = await traces(p, pool.prefix);
  let objects = await kernelObjects(p);
  const drained = Date.now() + 30_000;
  while ((!clean(last) || objects.join() !== baseline.join()) && Date.now() < drained) {
    await new Promise((r) => setTimeout(r, 500));
    [last, objects] = await Promise.all([traces(p, pool.prefix), kernelObjects(p)]);
  }
  t.deepEqual(last, { endpoints: 0, addresses: [], veths: [], routes: [] }, p.output());
  t.deepEqual(objects, baseline, 'chains and ipsets as before the first container');
  mark('clean');
});
