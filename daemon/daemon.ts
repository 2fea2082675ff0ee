// Wires the daemon together: datastore, IPAM, network driver, dataplane and the plugin sockets
// (two, one per interface, or one serving both for a managed plugin: CALICO_LIBNETWORK_SOCKETS). Start-up order matters: the datastore and pools are ready before Docker can reach a
// socket, and on shutdown the sockets stop first so no request meets a closed datastore.
import { join } from 'node:path';
import type { Config } from '../config/config';
import { LinuxEndpointDataplane } from '../dataplane/linux-endpoint-dataplane';
import { POLICY_MARK_BIT, PolicyDataplane } from '../dataplane/policy-dataplane';
import { RoutesDataplane } from '../dataplane/routes';
import { SandboxRoutingDataplane } from '../dataplane/sandbox-routing';
import { VXLAN_DEVICE, VxlanDataplane } from '../dataplane/vxlan';
import { VXLAN_OVERHEAD } from '../ipam/pool';
import { Agent } from '../agent/agent';
import { LabelResolver } from '../driver/label-resolver';
import { listNodeEndpoints } from '../model/endpoint';
import { ensureHostForwarding, listEndpointVeths } from '../dataplane/veth';
import type { Datastore } from '../datastore/datastore';
import { Keys } from '../datastore/keys';
import { openDatastore } from '../datastore/open-datastore';
import { serveStore, storeSocketPath } from '../datastore/store-socket';
import { DockerApi } from '../driver/docker-api';
import { IpamDriver, isDockerHandle } from '../driver/ipam-driver';
import { Reconciler } from '../workload/reconciler';
import { NetworkDriver } from '../driver/network-driver';
import { EndpointService } from '../workload/endpoint-service';
import { Allocator } from '../ipam/allocator';
import { errorMessage } from '../lib/errors';
import { logger } from '../lib/log';
import { nativeUnavailable } from '../dataplane/native-addon';
import { registerNode } from './register-node';
import { defaultPools, ensureDefaultPools } from './default-pools';
import { upgradeBlockLayout } from '../ipam/ipam-store';
import { assertSocketFree, startPluginServer, type PluginApi, type PluginServer } from '../protocol/plugin-server';
import { listAllocations } from '../ipam/block';
import { DaemonMetrics, type HostSample } from './metrics';
import { observedDatastore } from './observed-datastore';
import { agentCheck, runCheck, startHealthServer } from './health';
import { BirdSupervisor } from '../bgp/bird-supervisor';

/** Readiness probes answer within this, or fail. */
const PROBE_TIMEOUT_MS = 3_000;

/** This host's endpoints and IPAM, for the gauges (read when metrics are scraped). */
async function sampleHost(store: Datastore, keys: Keys, node: string, allocator: Allocator): Promise<HostSample> {
  const [endpoints, blocks] = await Promise.all([listNodeEndpoints(store, keys, node), allocator.listBlocks()]);
  return {
    activeEndpoints: endpoints.length,
    endpointsNotReady: endpoints.filter((e) => !e.ready).length,
    ipamBlocks: blocks.filter((b) => b.block.affinity === node).length,
    ipamAddressesInUse: blocks.reduce((n, b) => n + listAllocations(b.block).filter((a) => a.owner.node === node).length, 0),
  };
}

/** What an operator reads when Docker does not answer: every container would stay isolated. */
function dockerUnreachable(dockerSocket: string, reason: string): string {
  return `Docker does not answer at DOCKER_HOST=unix://${dockerSocket} (${reason}): container labels and network names cannot be learned, so every container on a calico network stays isolated until Docker answers there; check DOCKER_HOST`;
}

const log = logger('daemon');


/** Endpoints whose labels (or network name) were still unknown when the daemon last stopped. */
async function resumePendingLabels(store: Datastore, keys: Keys, node: string, labels: LabelResolver): Promise<void> {
  for (const ep of await listNodeEndpoints(store, keys, node)) {
    if (!ep.ready) labels.resolveLater(ep.id, ep.networkId);
  }
}

export interface Daemon {
  readonly store: Datastore;
  /** The same path twice in single-socket mode. */
  readonly sockets: { network: string; ipam: string };
  close(): Promise<void>;
}

export interface DaemonOptions {
  /** Plumb endpoints inside this `ip netns` namespace instead of the host's (contract tests). */
  readonly netns?: string;
}

export async function startDaemon(config: Config, options: DaemonOptions = {}): Promise<Daemon> {
  const ns = options.netns === undefined ? {} : { netns: options.netns };
  const pools = defaultPools(config);
  const networkSocket = join(config.pluginDir, `${config.networkDriverName}.sock`);
  const sockets = {
    network: networkSocket,
    ipam: config.sockets === 'single' ? networkSocket : join(config.pluginDir, `${config.ipamDriverName}.sock`),
  };
  // Before anything with side effects: a second daemon under the same names would otherwise
  // reprogram the first one's chains from its own (different) datastore before failing.
  for (const socket of new Set(Object.values(sockets))) await assertSocketFree(socket);
  // Sysctls of the host namespace go through the configured proc root (a managed plugin sees the
  // host's /proc at /host/proc); tests' namespaces go through `ip netns exec ... sysctl`.
  const host = { ...ns, procRoot: config.procRoot };
  const rawStore = await openDatastore({ ...(config.etcd !== undefined && { etcd: config.etcd }), dataDir: config.dataDir, mode: 'daemon' });
  const closers: (() => Promise<void>)[] = [() => rawStore.close()];
  let allocatorForMetrics: Allocator | undefined;
  const keysForMetrics = new Keys(config.datastorePrefix);
  const metrics = new DaemonMetrics(
    async () => {
      if (allocatorForMetrics === undefined) throw new Error('not started yet');
      return sampleHost(store, keysForMetrics, config.nodeName, allocatorForMetrics);
    },
    (err) => log.warn('metrics: reading this host\'s endpoints and IPAM failed: %s', errorMessage(err)),
  );
  const store = observedDatastore(rawStore, (op) => metrics.onDatastoreError(op));
  const closeAll = async (): Promise<void> => {
    for (const close of closers.reverse()) {
      try {
        await close();
      } catch (err) {
        log.error('shutdown step failed: %s', errorMessage(err));
      }
    }
  };
  try {
    const keys = new Keys(config.datastorePrefix);
    const moved = await upgradeBlockLayout(store, keys, (m) => log.warn('%s', m));
    if (moved > 0) log.info('moved %d IPAM blocks to the per-pool layout', moved);
    const allocator = new Allocator({ store, keys, node: config.nodeName });
    allocatorForMetrics = allocator;
    await ensureDefaultPools(allocator, pools);
    // The unwrapped store: registration holds its liveness key through etcd's own lease API.
    const registration = await registerNode(rawStore, keys, config, ns, (m) => log.warn('%s', m));
    closers.push(() => registration.stop());
    log.info(
      'node %s: IPv4 %s, IPv6 %s',
      config.nodeName,
      registration.node.ipv4Address ?? 'none',
      registration.node.ipv6Address ?? 'none',
    );
    await ensureHostForwarding({ ipv6: false }, host);
    const noNative = nativeUnavailable();
    if (noNative === undefined) log.info('native addon loaded: veths, addresses and routes over netlink, tools started without forking the daemon');
    else log.warn('native addon not loaded (%s): veths are configured with ip and tools start from a helper process, which is slower', noNative);
    // The agent owns our iptables chains; it programs everything before Docker can reach us.
    // BGP mode: BIRD outlives the daemon (bird-supervisor.ts); closing only stops supervising it.
    const bird = config.networkingBackend === 'bird' ? new BirdSupervisor(config.birdDir, logger('bird')) : undefined;
    if (bird !== undefined) closers.push(() => bird.close());
    const policyDataplane = new PolicyDataplane({ prefix: config.iptablesChainPrefix, markBit: POLICY_MARK_BIT, ifPrefix: config.hostIfPrefix, ...ns });
    closers.push(() => policyDataplane.close()); // after the agent has stopped (closers run in reverse)
    const agent = new Agent(store, keys, config.nodeName, {
      policy: {
        apply: async (model) => {
          const stats = await policyDataplane.apply(model);
          metrics.onPolicyApplied(stats);
          return stats;
        },
        resync: () => policyDataplane.resync(),
      },
      routes: new RoutesDataplane({
        protocol: config.routeProtocol,
        warn: (m) => log.warn('%s', m),
        vxlan: new VxlanDataplane({ device: VXLAN_DEVICE, vni: config.vxlanVni, port: config.vxlanPort, mtu: config.vethMtu - VXLAN_OVERHEAD, ...ns }),
        ...ns,
      }),
      sandboxes: new SandboxRoutingDataplane({ protocol: config.routeProtocol, warn: (m) => log.warn('%s', m) }),
      ...(bird !== undefined && { bgp: { bird, options: { timers: config.bgpTimers, logFile: bird.paths.log } } }),
    }, metrics, config.networkingBackend);
    await agent.start();
    closers.push(() => agent.stop());
    // Set once the endpoint service exists (the resolver starts before it, for pending labels).
    let recordWorkload: ((endpointId: string, containerId: string, addresses: readonly string[]) => void) | undefined;
    const docker = new DockerApi(config.dockerSocket);
    const labels = new LabelResolver({
      docker,
      store,
      keys,
      node: config.nodeName,
      copyLabels: config.labelEndpoints,
      onContainer: (endpointId, containerId, addresses) => recordWorkload?.(endpointId, containerId, addresses),
    });
    closers.push(async () => labels.close());
    await resumePendingLabels(store, keys, config.nodeName, labels);
    if (config.etcd === undefined) {
      const server = await serveStore(rawStore, storeSocketPath(config.dataDir));
      closers.push(() => server.close());
    }
    const endpointDataplane = new LinuxEndpointDataplane(host);
    // Closers run in reverse: this one after the sockets and the reconciler have stopped, so no
    // veth deletion is cut short by the exit.
    closers.push(() => endpointDataplane.settled());
    const endpoints = new EndpointService({
      store,
      keys,
      allocator,
      dataplane: endpointDataplane,
      node: config.nodeName,
      hostIfPrefix: config.hostIfPrefix,
      mtu: config.vethMtu,
      labelEndpoints: config.labelEndpoints,
      policy: {
        resolveLabelsLater: (endpointId, networkId) => labels.resolveLater(endpointId, networkId),
        waitProgrammed: (endpointId, timeoutMs) => agent.waitProgrammed(endpointId, timeoutMs),
      },
    });
    recordWorkload = (endpointId, containerId, addresses) => endpoints.recordWorkload(endpointId, containerId, addresses);
    const driver = new NetworkDriver({
      store,
      keys,
      endpoints,
      names: docker,
      node: config.nodeName,
      pluginName: config.networkDriverName,
      ipamPluginName: config.ipamDriverName,
      containerIfPrefix: config.containerIfPrefix,
      createProfiles: config.createProfiles,
      scope: config.scope,
    });
    const ipam = new IpamDriver(allocator, config.nodeName, config.ipamDriverName, endpoints);
    const networkApi: PluginApi = { implements: 'NetworkDriver', errorKey: 'Err', routes: driver.routes() };
    const ipamApi: PluginApi = { implements: 'IpamDriver', errorKey: 'Error', routes: ipam.routes() };
    const servers: PluginServer[] = [];
    const observer = metrics;
    // With etcd, CALICO_DATASTORE_TIMEOUT bounds each request as a whole (the embedded store is
    // local and does not hang).
    const requestBudgetMs = config.etcd?.requestTimeoutMs;
    if (config.sockets === 'single') {
      const server = await startPluginServer({ name: config.networkDriverName, socketPath: sockets.network, apis: [networkApi, ipamApi], observer, requestBudgetMs });
      closers.push(() => server.close());
      servers.push(server);
      log.info('serving NetworkDriver and IpamDriver on %s as node %s (%s datastore)', sockets.network, config.nodeName, config.etcd === undefined ? 'embedded' : 'etcd');
    } else {
      const networkServer = await startPluginServer({ name: config.networkDriverName, socketPath: sockets.network, apis: [networkApi], observer, requestBudgetMs });
      closers.push(() => networkServer.close());
      const ipamServer = await startPluginServer({ name: config.ipamDriverName, socketPath: sockets.ipam, apis: [ipamApi], observer, requestBudgetMs });
      closers.push(() => ipamServer.close());
      servers.push(networkServer, ipamServer);
      log.info('serving %s and %s as node %s (%s datastore)', sockets.network, sockets.ipam, config.nodeName, config.etcd === undefined ? 'embedded' : 'etcd');
    }
    const pingDocker = (): Promise<void> => docker.ping();
    // A managed plugin starts before Docker's API answers, so this only warns; readiness keeps
    // reporting it until Docker answers.
    const dockerAtStart = await runCheck('docker', pingDocker, PROBE_TIMEOUT_MS);
    if (!dockerAtStart.ok) log.error('%s', dockerUnreachable(config.dockerSocket, dockerAtStart.reason ?? 'no answer'));
    if (config.healthListen !== undefined) {
      const probeKey = keys.node(config.nodeName);
      try {
        const health = await startHealthServer(config.healthListen, {
          live: () => servers.every((s) => s.serving()),
          readiness: () =>
            Promise.all([
              runCheck('datastore', async () => {
                await store.get(probeKey);
              }, PROBE_TIMEOUT_MS, (r) => `${config.etcd === undefined ? 'embedded store' : `etcd at ${config.etcd.endpoints.join(',')}`} unreachable: ${r}`),
              Promise.resolve(agentCheck(agent.status())),
              runCheck('docker', pingDocker, PROBE_TIMEOUT_MS, (r) => dockerUnreachable(config.dockerSocket, r)),
            ]),
          metrics: () => metrics.render(),
        }, (err) => log.warn('health listener: %s', errorMessage(err)));
        closers.push(() => health.close());
        log.info('health and metrics on http://%s (/liveness, /readiness, /metrics)', health.address);
      } catch (err) {
        // The plugin matters more than its metrics: keep serving Docker.
        log.error('health and metrics listener on %s:%d failed: %s; serving the plugin without it', config.healthListen.host, config.healthListen.port, errorMessage(err));
      }
    }
    // After the sockets: a managed plugin starts before Docker's API, so the first pass waits
    // (in the background) until Docker answers. Stopped before the sockets close.
    const reconciler = new Reconciler({
      store,
      keys,
      node: config.nodeName,
      allocator,
      endpoints,
      knownEndpoints: () => docker.knownEndpoints(config.networkDriverName),
      frontEndReady: () => docker.answers(),
      listLinks: () => listEndpointVeths(config.hostIfPrefix, ns),
      removeLink: (name) => endpointDataplane.detach(name),
      ownsHandle: isDockerHandle,
      hostIfPrefix: config.hostIfPrefix,
      intervalMs: config.reconcileIntervalMs,
      graceMs: config.reconcileGraceMs,
    });
    reconciler.start();
    closers.push(() => reconciler.stop());
    return { store: rawStore, sockets, close: closeAll };
  } catch (err) {
    await closeAll();
    throw err;
  }
}
