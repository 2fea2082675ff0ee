// Reconciliation after a crash, with a real isolated dockerd and the real plugin binary: the plugin
// killed (SIGKILL) while 10 containers start, restarted, every container removed, and then the
// reconciler (interval and grace period made short here) leaves no endpoint record, allocation,
// veth or host route behind. And an allocation whose CreateEndpoint has not come yet (a request in
// flight) is left alone for the grace period, then released. (The simulated reboot is in
// reboot.test.ts, with a dockerd of its own.)
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { createNetwork, runContainer } from '../harness/containers';
import { dockerWithImage, fileFixture } from '../harness/fixture';
import { post } from '../harness/plugin-client';
import { calicoctl, linksWithPrefix, startPlugin, type Plugin } from '../harness/plugin';
import { clean, removeAllContainers, testPool, traces } from '../harness/leaks';

const c = fileFixture(test, (onTeardown) => dockerWithImage(onTeardown));

/** A plugin of this test's own (removed at the end of the test, also on failure). */
async function plugin(t: ExecutionContext, pool: string, env: Record<string, string>): Promise<Plugin> {
  const p = await startPlugin({ dockerSocket: c().dockerd.socketPath, ipv4Pool: pool, env });
  t.teardown(() => p.cleanup());
  return p;
}

/** A plugin reconciling every 2 s with a 3 s grace, and a network of it whose containers are
 * removed at the end. */
async function reconcilingNetwork(t: ExecutionContext): Promise<{ pool: { cidr: string; prefix: string }; p: Plugin; name: string }> {
  const pool = await testPool();
  const p = await plugin(t, pool.cidr, { CALICO_RECONCILE_INTERVAL: '2', CALICO_RECONCILE_GRACE: '3' });
  const name = `net-${randomBytes(3).toString('hex')}`;
  const net = await createNetwork(c().docker, { name, driver: p.networkDriver, ipamDriver: p.ipamDriver });
  t.teardown(async () => {
    await removeAllContainers(c().docker);
    await net.remove().catch(() => undefined);
  });
  return { pool, p, name };
}

test.serial('plugin killed during 10 concurrent container starts, restarted: nothing leaked once every container is removed', async (t) => {
  const { pool, p, name } = await reconcilingNetwork(t);
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
  // Its allocation names more than the pool: when it was handed out, the endpoint (in the handle
  // too) and the container.
  type Shown = { ip: string; handle: string; endpointId?: string; containerId?: string; allocatedAt?: string };
  const shown = async (): Promise<Shown[]> =>
    (JSON.parse((await calicoctl(p, ['ipam', 'show', '-o', 'json'])).stdout) as { allocations: Shown[] }[]).flatMap((b) => b.allocations);
  let allocations = await shown();
  for (let i = 0; i < 40 && allocations[0]?.containerId === undefined; i++) {
    await new Promise((r) => setTimeout(r, 250));
    allocations = await shown();
  }
  t.is(allocations.length, 1);
  t.like(allocations[0], { ip: ep?.IPAddress, handle: `docker:CalicoPoolIPv4#${ep?.EndpointID ?? ''}`, endpointId: ep?.EndpointID, containerId: info.Id });
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
  const { pool, p, name } = await reconcilingNetwork(t);
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
