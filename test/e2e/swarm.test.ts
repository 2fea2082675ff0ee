// Docker swarm services on calico networks: a 3-node swarm (one manager) on the multi-host
// harness, hosts on subnet A, the managed plugin (built once by scripts/build-plugin.sh
// --rootfs-only) installed in every host's dockerd with CALICO_LIBNETWORK_SCOPE=global, the
// cluster's etcd, NODENAME and IP of the host.
import test, { type ExecutionContext } from 'ava';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { exec } from '../harness/containers.js';
import { startCluster, type Cluster, type Host } from '../harness/multihost.js';
import { until } from '../harness/multihost-probes.js';
import { buildPluginRootfs, formSwarm, installPlugin, pluginSettings, serviceContainers, type TaskContainer } from '../harness/multihost/swarm.js';
import { calicoctl } from '../harness/plugin.js';

const PLUGIN = 'calico:latest';
const POOL_PREFIX = '198.19.';

interface Ctx {
  cluster: Cluster;
  manager: Host;
  workers: Host[];
}
let ctx: Ctx | undefined;
const c = (): Ctx => {
  if (ctx === undefined) throw new Error('setup failed');
  return ctx;
};

test.before(async () => {
  const cluster = await startCluster({ hosts: 3, subnets: ['a', 'a', 'a'], processPlugin: false });
  ctx = { cluster, manager: cluster.hosts[0] as Host, workers: cluster.hosts.slice(1) };
  const rootfs = await buildPluginRootfs(cluster.dir);
  await Promise.all(cluster.hosts.map((h) => installPlugin(h, rootfs, PLUGIN, pluginSettings(cluster, h, { DEBUG: 'calico:*' }))));
  await formSwarm(cluster.hosts);
});

test.after.always(async () => {
  await ctx?.cluster.stop();
});

async function docker(h: Host, args: string[], timeoutMs = 60_000): Promise<string> {
  return (await h.run(['docker', ...args], { timeoutMs })).stdout.trim();
}

async function pluginLog(h: Host): Promise<string> {
  return readFile(join(h.dir, 'dockerd.log'), 'utf8');
}

function poolAddresses(text: string): string[] {
  return [...text.matchAll(/\b(198\.19\.\d+\.\d+)\b/g)].map((m) => m[1] as string);
}

async function taskAddress(task: TaskContainer, network: string): Promise<string> {
  const info = await task.host.docker.getContainer(task.id).inspect();
  const ip = info.NetworkSettings.Networks[network]?.IPAddress;
  if (ip === undefined || ip === '') throw new Error(`task ${task.name} has no address on ${network}`);
  return ip;
}

async function waitTasks(service: string, n: number, timeoutMs = 90_000): Promise<TaskContainer[]> {
  return until(`${n} running tasks of ${service}`, async () => {
    const tasks = await serviceContainers(c().cluster.hosts, service);
    return tasks.length === n ? tasks : undefined;
  }, timeoutMs);
}

async function pingFrom(task: TaskContainer, target: string, tries = 20): Promise<boolean> {
  const ctr = task.host.docker.getContainer(task.id);
  for (let i = 0; i < tries; i++) {
    if ((await exec(ctr, ['ping', '-c', '1', '-W', '1', target])).code === 0) return true;
  }
  return false;
}

test.serial('dnsrr service: 6 tasks over 3 nodes reach each other; tasks.<service> resolves', async (t: ExecutionContext) => {
  t.timeout(300_000);
  const { manager, cluster } = c();
  await docker(manager, ['network', 'create', '--scope', 'swarm', '--attachable', '-d', PLUGIN, '--ipam-driver', PLUGIN, 'snet']);
  await docker(manager, ['service', 'create', '--detach', '--no-resolve-image', '--name', 'web', '--endpoint-mode', 'dnsrr', '--replicas', '6', '--network', 'snet', cluster.image, 'sleep', '3600'], 120_000);
  const tasks = await waitTasks('web', 6);
  const addrs = await Promise.all(tasks.map((x) => taskAddress(x, 'snet')));
  t.log(tasks.map((x, i) => `${x.host.name} ${x.name} ${addrs[i]}`).join('\n'));
  t.is(new Set(tasks.map((x) => x.host.name)).size, 3, 'tasks on all three nodes');
  t.is(new Set(addrs).size, 6, 'addresses unique');
  for (const a of addrs) t.true(a.startsWith(POOL_PREFIX), `${a} from the calico pool`);
  for (const [i, from] of tasks.entries()) {
    for (const [j, to] of addrs.entries()) {
      if (i !== j) t.true(await pingFrom(from, to), `${from.name} (${from.host.name}) -> ${to}`);
    }
  }
  const ns = await exec(cluster.host(tasks[0]!.host.name).docker.getContainer(tasks[0]!.id), ['nslookup', 'tasks.web']);
  t.log(ns.output);
  t.deepEqual(poolAddresses(ns.output).sort(), [...addrs].sort());
  for (const h of cluster.hosts) t.log(`--- ${h.name}\n${(await pluginLog(h)).split('\n').filter((l) => l.includes('calico:wire')).join('\n')}`);
  const ipam = await calicoctl({ env: cluster.ctlEnv }, ['ipam', 'show', '-o', 'json']);
  t.log(ipam.stdout);
});
