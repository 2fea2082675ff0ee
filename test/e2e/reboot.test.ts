// A simulated reboot, with a real isolated dockerd of its own and the real plugin binary: containers
// with a restart policy running on two networks; dockerd (with containerd, shims and every container
// process) and the plugin killed with SIGKILL, the exec root emptied and this plugin's veths, host
// routes, chains and ipsets deleted, as a reboot leaves the machine; then the plugin started (before
// Docker, as its systemd unit does) and dockerd started again on the same data root. The containers
// come back reachable with their policy (same network talks, the other network is kept out), one
// record and one address each, and once they and their networks are removed nothing is left:
// records, allocations, veths, routes, chains and ipsets are back to before the first container.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import Docker from 'dockerode';
import { addressOn, createNetwork, exec, removeNetwork, runContainer } from '../harness/containers';
import { startDockerd } from '../harness/dockerd';
import { importTestImage } from '../harness/image';
import { clean, kernelObjects, removeAllContainers, testPool, traces } from '../harness/leaks';
import { calicoctl, linksWithPrefix, startPlugin, waitProgrammed } from '../harness/plugin';

test('a simulated reboot: dockerd and plugin killed, veths, routes and chains gone; both restarted, containers come back reachable with policy, and nothing is leaked once they are removed', async (t) => {
  const dockerd = await startDockerd();
  t.teardown(() => dockerd.stop());
  const image = `calico-test-${randomBytes(3).toString('hex')}:latest`;
  await importTestImage(dockerd.socketPath, image);
  const docker = new Docker({ socketPath: dockerd.socketPath });
  const t0 = Date.now();
  const mark = (what: string): void => t.log(`${((Date.now() - t0) / 1000).toFixed(1)}s ${what}`);
  const pool = await testPool();
  const p = await startPlugin({ dockerSocket: dockerd.socketPath, ipv4Pool: pool.cidr, env: { CALICO_RECONCILE_INTERVAL: '600', CALICO_RECONCILE_GRACE: '3' } });
  t.teardown(() => p.cleanup());
  const baseline = await kernelObjects(p);
  const names = ['a', 'b'].map((x) => `${x}-${randomBytes(3).toString('hex')}`);
  const nets = await Promise.all(names.map((name) => createNetwork(docker, { name, driver: p.networkDriver, ipamDriver: p.ipamDriver })));
  const [front, back] = names as [string, string];
  t.teardown(async () => {
    await removeAllContainers(docker);
    for (const n of nets) await n.remove().catch(() => undefined);
  });
  // Two on one network (they talk), one on another (its profile keeps it out).
  const [a1, a2, b1] = await Promise.all([front, front, back].map((network) => runContainer(docker, { image: image, network, restart: 'always' })));
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
  await dockerd.crash();
  await p.wipeKernel();
  t.deepEqual(await linksWithPrefix(p.ifPrefix), []);
  t.deepEqual((await traces(p, pool.prefix)).routes, []);
  t.deepEqual(await kernelObjects(p), []);
  // Boot: the plugin starts before Docker (as its systemd unit does), Docker restarts the containers.
  mark('rebooted');
  await p.restart();
  await dockerd.start();
  mark('plugin and dockerd started');
  // Docker, restoring, released the old endpoints' addresses without deleting the endpoints: the
  // plugin removed their records on those releases, so by the time Docker answers no record
  // names a released address. The log line proves the release did it, not the reconciler's
  // first pass (which also starts once Docker answers; its interval is long here so no later
  // pass can either).
  const released = new Set(before.map((e) => e.ipv4));
  const records = JSON.parse((await calicoctl(p, ['endpoint', 'list', '-o', 'json'])).stdout) as { id: string; ipv4: string[] }[];
  const naming = records.filter((r) => r.ipv4.some((a) => released.has(a.split('/')[0] ?? '')));
  t.deepEqual(naming.map((r) => `${r.id.slice(0, 12)} ${r.ipv4.join(',')}`), [], 'no record names a released address once Docker answers');
  for (const e of before) {
    t.regex(p.output(), new RegExp(`removed endpoint ${e.endpointId.slice(0, 12)}: Docker released its address ${e.ipv4.replace(/\./g, '\\.')} without deleting it`), p.output());
  }
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
  // One record and one address per container, and nothing for ipam check to find.
  let now = await traces(p, pool.prefix);
  const settled = Date.now() + 30_000;
  while ((now.endpoints !== 3 || now.addresses.length !== 3) && Date.now() < settled) {
    await new Promise((r) => setTimeout(r, 500));
    now = await traces(p, pool.prefix);
  }
  t.is(now.endpoints, 3, p.output());
  const lines = p.output().split('\n').filter((l) => /removed endpoint|removed veth|released address/.test(l));
  t.log(`removals and releases after the reboot: ${lines.length} line(s)\n${lines.join('\n')}`);
  t.deepEqual([...now.addresses].sort(), after.map((e) => e.ipv4).sort());
  t.deepEqual([...now.veths].sort(), after.map((e) => p.hostIf(e.endpointId)).sort());
  const check = await calicoctl(p, ['ipam', 'check', '-o', 'json']);
  t.deepEqual((JSON.parse(check.stdout) as { findings: unknown[] }).findings, [], check.stdout);
  t.is(check.code, 0, 'nothing for an operator to do');

  mark('settled');
  await removeAllContainers(docker);
  for (const n of nets) await removeNetwork(n);
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
