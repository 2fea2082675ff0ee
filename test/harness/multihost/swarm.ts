// A Docker swarm on the multi-host harness, with the managed plugin in every host's dockerd:
//
//   const cluster = await startCluster({ hosts: 3, subnets: ['a', 'a', 'a'], processPlugin: false });
//   const rootfs = await buildPluginRootfs(cluster.dir);            // once per test file
//   await Promise.all(cluster.hosts.map((h) => installPlugin(cluster, h, rootfs, { ... })));
//   await formSwarm(cluster.hosts);
//
// The rootfs is built once (scripts/build-plugin.sh --rootfs-only, for the exec root every host's
// dockerd uses as seen inside the host, /run/docker) and `docker plugin create`d in each host from
// the same directory. Everything lives in the cluster's directory and in the hosts' dockerds, so the
// cluster's stop() removes it all.
import { execFile } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Cluster } from './cluster.js';
import type { Host } from './host.js';
import { until } from '../multihost-probes.js';

const BUILD_PLUGIN = resolve(__dirname, '../../../../scripts/build-plugin.sh');
/** The hosts' dockerd exec root, as seen inside each host. */
export const HOST_EXEC_ROOT = '/run/docker';
const NETNS_DIR = `${HOST_EXEC_ROOT}/netns`;
const PLUGIN_TIMEOUT_MS = 90_000;

/** Builds the plugin's rootfs into `<parent>/plugin-rootfs` (config.json and rootfs/). */
export async function buildPluginRootfs(parent: string): Promise<string> {
  const dir = join(parent, 'plugin-rootfs');
  await new Promise<void>((done, fail) => {
    execFile(BUILD_PLUGIN, ['--rootfs-only', dir, '--docker-exec-root', HOST_EXEC_ROOT], { timeout: 240_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err === null) done();
      else fail(new Error(`build-plugin.sh --rootfs-only failed: ${err.message}\n${stdout}\n${stderr}`));
    });
  });
  return dir;
}

/** The settings every host's plugin gets: the cluster's etcd and prefix, the host's name and
 * address, global scope. `extra` overrides or adds. */
export function pluginSettings(cluster: Cluster, host: Host, extra: Readonly<Record<string, string>> = {}): Record<string, string> {
  return {
    ETCD_ENDPOINTS: cluster.etcd.netnsEndpoints.join(','),
    CALICO_DATASTORE_PREFIX: cluster.datastorePrefix,
    NODENAME: host.name,
    IP: host.address,
    CALICO_IPV4POOL_CIDR: '198.19.0.0/16',
    CALICO_IPV6POOL_CIDR: 'none',
    CALICO_LIBNETWORK_SCOPE: 'global',
    'state.source': join(host.dir, 'calico-state'),
    'etcd-certs.source': join(host.dir, 'calico-certs'),
    ...extra,
  };
}

/**
 * Installs the managed plugin from `rootfsDir` into the host's dockerd as `name`: create, set,
 * enable. First, inside the host, the netns directory becomes a shared mount point of its own
 * (the host's mount namespace is a slave of the root's, its /run a bind mount): without it the
 * plugin (rslave) never sees the namespaces dockerd mounts after the plugin started.
 */
export async function installPlugin(host: Host, rootfsDir: string, name: string, settings: Readonly<Record<string, string>>): Promise<void> {
  for (const k of ['state.source', 'etcd-certs.source']) {
    const dir = settings[k];
    if (dir !== undefined) await mkdir(dir, { recursive: true });
  }
  await host.run(['mkdir', '-p', NETNS_DIR]);
  if ((await host.exec(['findmnt', '-n', '--mountpoint', NETNS_DIR])).code !== 0) {
    await host.run(['mount', '--bind', NETNS_DIR, NETNS_DIR]);
  }
  await host.run(['mount', '--make-shared', NETNS_DIR]);
  await host.run(['docker', 'plugin', 'create', name, rootfsDir], { timeoutMs: PLUGIN_TIMEOUT_MS });
  const kv = Object.entries(settings).map(([k, v]) => `${k}=${v}`);
  if (kv.length > 0) await host.run(['docker', 'plugin', 'set', name, ...kv]);
  await host.run(['docker', 'plugin', 'enable', '--timeout', '60', name], { timeoutMs: PLUGIN_TIMEOUT_MS });
}

/** `docker swarm init` on the first host (advertising its fabric address), the others join as
 * workers; resolves once every node is Ready. */
export async function formSwarm(hosts: readonly Host[], timeoutMs = 60_000): Promise<void> {
  const [manager, ...workers] = hosts;
  if (manager === undefined) throw new Error('formSwarm: no hosts');
  await manager.run(['docker', 'swarm', 'init', '--advertise-addr', manager.address, '--listen-addr', `${manager.address}:2377`], { timeoutMs: 60_000 });
  const token = (await manager.run(['docker', 'swarm', 'join-token', '-q', 'worker'])).stdout.trim();
  await Promise.all(workers.map((w) => w.run(['docker', 'swarm', 'join', '--advertise-addr', w.address, '--token', token, `${manager.address}:2377`], { timeoutMs: 60_000 })));
  await until('every swarm node Ready', async () => {
    const r = await manager.exec(['docker', 'node', 'ls', '--format', '{{.Hostname}} {{.Status}} {{.Availability}}']);
    const lines = r.stdout.trim().split('\n').filter((l) => l !== '');
    return lines.length === hosts.length && lines.every((l) => l.endsWith(' Ready Active')) ? true : undefined;
  }, timeoutMs);
}

export interface TaskContainer {
  readonly host: Host;
  readonly id: string;
  readonly name: string;
}

/** The running containers of a service's tasks, on every host. */
export async function serviceContainers(hosts: readonly Host[], service: string): Promise<TaskContainer[]> {
  const per = await Promise.all(hosts.map(async (host) => {
    const list = await host.docker.listContainers({ filters: { label: [`com.docker.swarm.service.name=${service}`], status: ['running'] } });
    return list.map((c) => ({ host, id: c.Id, name: (c.Names[0] ?? '').replace(/^\//, '') }));
  }));
  return per.flat();
}
