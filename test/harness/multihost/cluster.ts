// Many hosts on one machine, for the multi-host tests (routes between hosts, VXLAN across
// subnets, cross-host policy):
//
//   const cluster = await startCluster({ hosts: 3 });
//   t.teardown(() => cluster.stop());
//   await cluster.hosts[0].run(['docker', 'network', 'create', '-d', 'calico', '--ipam-driver', 'calico-ipam', 'net1']);
//
// Each host has its own network, mount and UTS namespaces, its own dockerd and its own plugin
// (started as a user would, see host-plugin.ts), the test image, and a fabric address; all share
// one etcd (in a namespace of its own on the fabric) under a datastore prefix unique to the
// cluster. See fabric.ts for the network and host.ts for how a host is built. Everything carries
// the cluster's random id; stop() removes all of it, also after a failed or half-done start, and
// remnants() lists anything still there (tests assert it is empty). If the test process dies
// without stop(), an exit hook cleans up; if it is killed, the next startCluster() on the machine
// reaps what is left (reap.ts).
import { execFileSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { startEtcd, type EtcdHandle } from '../etcd.js';
import { buildBusyboxRootfsTar, importRootfsTar, TEST_IMAGE } from '../image.js';
import { deleteNetns } from '../netns.js';
import { createNamespaces, ETCD_ADDRESS, namespacesOf, OUTSIDE, planFabric, SUBNETS, type FabricPlan, type Subnet, wireFabric } from './fabric.js';
import { newHostState, startHost, sweepSet, teardownHost, type Host, type HostState } from './host.js';
import { HOST_PATH, nsExec, nsRun, nsSpawn, type NsExecOptions, type NsExecResult } from './ns-exec.js';
import { isAlive, killMembers, members, nsInode, remnants, removeCgroupTrees, ticksNow, type Membership } from './procs.js';
import { reapOrphans, recordEtcdDir, writeOwner } from './reap.js';
import { allSettledOrThrow } from './settle.js';

/** Every cluster's directory is <this>/<cluster id>. */
export const CLUSTER_BASE_DIR = '/tmp';
/** Docker as in the single-host e2e harness: no bridge and no iptables of its own (the host's
 * filter table is the plugin's alone), and it does not turn on forwarding (the plugin does). */
export const DEFAULT_DOCKERD_ARGS: readonly string[] = ['--bridge=none', '--iptables=false', '--ip6tables=false', '--ip-masq=false', '--ip-forward=false'];
/** Processes the test left in the fabric's own namespaces (router, fabric, outside) get this
 * long to die at teardown. */
const FABRIC_SWEEP_TIMEOUT_MS = 10_000;
/** Container pool: a test range, clear of the fabric (198.18.1.0/24, 198.18.2.0/24). */
export const DEFAULT_IPV4_POOL = '198.19.0.0/16';

export interface ClusterOptions {
  /** Number of hosts (default 3). */
  readonly hosts?: number;
  /** Subnet of each host (default: the first half, rounded up, on 'a', the rest on 'b'). */
  readonly subnets?: readonly ('a' | 'b')[];
  /** CALICO_IPV4POOL_CIDR of every plugin (default 198.19.0.0/16). */
  readonly ipv4Pool?: string;
  /** CALICO_IPV6POOL_CIDR of every plugin (default 'none': the fabric is IPv4 only). */
  readonly ipv6Pool?: string;
  /** More plugin environment, for every host. */
  readonly pluginEnv?: Readonly<Record<string, string>>;
  /** dockerd flags besides the per-host paths (default DEFAULT_DOCKERD_ARGS). */
  readonly dockerdArgs?: readonly string[];
  /** Default 'vfs' (the test image is tiny; works on any backing filesystem). */
  readonly storageDriver?: string;
  /** Add the outside namespace behind the router (fabric.ts; `Cluster.outside`). Default false. */
  readonly outside?: boolean;
  /** Start each host's plugin as a process (default true); false: no plugin, the test installs
   * the managed plugin into each host's dockerd. */
  readonly processPlugin?: boolean;
}

export interface StopOptions {
  /**
   * false (default): SIGKILL for every process of every host at once; the namespaces, and with
   * them interfaces, routes, iptables and mounts, go next. Fast and independent of the state the
   * test left the hosts in.
   * true: first remove every container through its dockerd (the plugin answers Leave,
   * DeleteEndpoint, ReleaseAddress) and stop plugins and dockerds with SIGTERM (bounded).
   */
  readonly graceful?: boolean;
}

/** A namespace of the fabric that is not a host (router, fabric switch, etcd's). */
export interface NetnsHandle {
  readonly netns: string;
  /** Runs argv in the namespace's network (root mount namespace); any exit status resolves. */
  exec(argv: readonly string[], opts?: NsExecOptions): Promise<NsExecResult>;
  /** Like exec, but rejects unless the command exits 0. */
  run(argv: readonly string[], opts?: NsExecOptions): Promise<NsExecResult>;
  /** Starts a long-running process in the namespace's network (a listener): the caller owns it;
   * the cluster's stop() ends it at the latest. */
  spawn(argv: readonly string[], opts?: { stdio?: 'ignore' | 'pipe' }): ChildProcess;
}

export interface Router extends NetnsHandle {
  /** Its address on each subnet (its interface is named like the subnet: 'a', 'b'). */
  readonly addresses: { readonly a: string; readonly b: string };
}

/** The world beyond the hosts: a namespace on its own leg of the router, at an address in no pool
 * and on neither subnet (203.0.113.10 on 203.0.113.0/24; see fabric.ts). The router has no route
 * to container addresses. */
export interface Outside extends NetnsHandle {
  readonly address: string;
  readonly cidr: string;
  /** The router's address on the outside's link. */
  readonly gateway: string;
}

export interface ClusterEtcd extends EtcdHandle {
  /** etcd's address on the fabric (subnet A). */
  readonly address: string;
}

export interface Cluster {
  /** Random, in every name the cluster creates (`mh-xxxxxx`). */
  readonly id: string;
  /** Everything on disk: one directory per host, logs. */
  readonly dir: string;
  readonly hosts: readonly Host[];
  readonly router: Router;
  /** Present when the cluster was started with `outside: true`. */
  readonly outside?: Outside;
  readonly fabric: NetnsHandle & { readonly subnets: readonly Subnet[] };
  /** `endpoints` work from the test process, `netnsEndpoints` from inside the hosts. */
  readonly etcd: ClusterEtcd;
  readonly datastorePrefix: string;
  /** The test image, in every host's dockerd. */
  readonly image: string;
  /** Environment for calicoctl run from the test process (`node dist/bin/calicoctl.js`). */
  readonly ctlEnv: Readonly<Record<string, string>>;
  /** Milliseconds spent per bring-up stage and in total; after stop(), per teardown stage too
   * (`stop.*`). */
  readonly timings: Readonly<Record<string, number>>;
  host(name: string): Host;
  /** Removes everything, collecting errors (thrown together at the end). Idempotent. */
  stop(opts?: StopOptions): Promise<void>;
  /** What is still there of the cluster (empty after a successful stop()). */
  remnants(): string[];
}

function netnsHandle(netns: string): NetnsHandle {
  const enter = [`--net=/run/netns/${netns}`];
  const env = { PATH: HOST_PATH };
  return {
    netns,
    exec: (argv, o) => nsExec(enter, argv, env, o),
    run: (argv, o) => nsRun(netns, enter, argv, env, o),
    spawn: (argv, o) => nsSpawn(enter, argv, env, { stdio: o?.stdio ?? 'ignore' }),
  };
}

interface Resources {
  readonly id: string;
  readonly dir: string;
  readonly plan: FabricPlan;
  readonly createdNs: string[];
  readonly nsInodes: Set<number>;
  readonly hostStates: HostState[];
  readonly cgroupDirs: string[];
  etcd?: EtcdHandle;
  tarCleanup?: () => Promise<void>;
  /** ticksNow() when teardown began. */
  teardownAt?: number;
  readonly timings: Record<string, number>;
}

const live = new Set<Resources>();
let exitHookInstalled = false;

export async function startCluster(options: ClusterOptions = {}): Promise<Cluster> {
  installExitHook();
  const t0 = Date.now();
  const timings: Record<string, number> = {};
  const mark = (stage: string, since: number): void => {
    timings[stage] = Date.now() - since;
  };
  await reapOrphans(CLUSTER_BASE_DIR);
  const id = `mh-${randomBytes(3).toString('hex')}`;
  const dir = join(CLUSTER_BASE_DIR, id);
  mkdirSync(dir, { mode: 0o700 });
  writeOwner(dir);
  const plan = planFabric(id, options.hosts ?? 3, options.subnets, options.outside ?? false);
  const res: Resources = { id, dir, plan, createdNs: [], nsInodes: new Set(), hostStates: [], cgroupDirs: [], timings };
  live.add(res);
  const datastorePrefix = `/calico-test/${id}`;
  try {
    let t = Date.now();
    const [tar] = await allSettledOrThrow([
      buildBusyboxRootfsTar().then((r) => {
        res.tarCleanup = r.cleanup;
        return r;
      }),
      createNamespaces(plan, res.createdNs).then(() => mark('namespaces', t)),
    ] as const);
    for (const ns of res.createdNs) {
      const ino = nsInode(`/run/netns/${ns}`);
      if (ino !== undefined) res.nsInodes.add(ino);
    }

    // The fabric and then etcd, while the hosts build their namespaces and start dockerd; each
    // host's plugin waits for etcd (and so for the fabric).
    t = Date.now();
    const etcdReady = wireFabric(plan)
      .then(() => {
        mark('fabric', t);
        return startEtcd({ inMemory: true, netns: { name: plan.etcdNs, address: ETCD_ADDRESS } });
      })
      .then((e) => {
        res.etcd = e;
        recordEtcdDir(dir, e.dir);
        mark('fabric+etcd', t);
        return e;
      });
    const pluginEnv = etcdReady.then((e): Record<string, string> => ({
      ETCD_ENDPOINTS: e.netnsEndpoints.join(','),
      CALICO_DATASTORE_PREFIX: datastorePrefix,
      CALICO_IPV4POOL_CIDR: options.ipv4Pool ?? DEFAULT_IPV4_POOL,
      CALICO_IPV6POOL_CIDR: options.ipv6Pool ?? 'none',
      CALICO_HEALTH_LISTEN: 'none',
      ...(process.env['DEBUG'] !== undefined && { DEBUG: process.env['DEBUG'] }),
      ...options.pluginEnv,
    }));
    // Awaited by every host before its plugin starts; a rejection is reported through etcdReady.
    pluginEnv.catch(() => undefined);
    const started = await allSettledOrThrow([
      etcdReady,
      ...plan.hosts.map(async (placement) => {
        const cgroupParent = `/${id}-${placement.name}`;
        const state = newHostState(cgroupParent);
        res.hostStates.push(state);
        res.cgroupDirs.push(...state.membership.cgroupDirs);
        const th = Date.now();
        const r = await startHost({
          placement,
          dir: join(dir, placement.name),
          cgroupParent,
          dockerdArgs: options.dockerdArgs ?? DEFAULT_DOCKERD_ARGS,
          storageDriver: options.storageDriver ?? 'vfs',
          fabricNs: plan.fabricNs,
          ...(options.processPlugin !== undefined && { processPlugin: options.processPlugin }),
        }, state, pluginEnv, (socket) => importRootfsTar(socket, tar.tarPath, TEST_IMAGE));
        mark(placement.name, th);
        for (const [k, v] of Object.entries(r.timings)) timings[`${placement.name}.${k}`] = v;
        return r;
      }),
    ]);
    const etcd = started[0];
    const hostResults = started.slice(1) as { host: Host; image: string }[];
    await tar.cleanup();
    mark('total', t0);

    const hosts = hostResults.map((r) => r.host);
    let stopping: Promise<void> | undefined;
    const cluster: Cluster = {
      id,
      dir,
      hosts,
      router: { ...netnsHandle(plan.routerNs), addresses: { a: SUBNETS[0].router, b: SUBNETS[1].router } },
      ...(plan.outsideNs !== undefined && { outside: { ...netnsHandle(plan.outsideNs), address: OUTSIDE.address, cidr: OUTSIDE.cidr, gateway: OUTSIDE.router } }),
      fabric: { ...netnsHandle(plan.fabricNs), subnets: SUBNETS },
      etcd: { ...etcd, address: ETCD_ADDRESS },
      datastorePrefix,
      image: hostResults[0]?.image ?? TEST_IMAGE,
      ctlEnv: { PATH: HOST_PATH, ETCD_ENDPOINTS: etcd.endpoints.join(','), CALICO_DATASTORE_PREFIX: datastorePrefix },
      timings,
      host(name) {
        const h = hosts.find((x) => x.name === name);
        if (h === undefined) throw new Error(`no host ${name} in cluster ${id}`);
        return h;
      },
      stop(opts = {}) {
        stopping ??= teardown(res, opts.graceful ?? false);
        return stopping;
      },
      remnants: () => remnantsOf(res),
    };
    return cluster;
  } catch (err) {
    let cleanupError: unknown;
    try {
      await teardown(res, false);
    } catch (e) {
      cleanupError = e;
    }
    throw new ClusterStartError(res, err, cleanupError);
  }
}

/** startCluster() failed; everything it had created was removed (`remnants()` says what was
 * not, if anything). */
export class ClusterStartError extends Error {
  readonly id: string;
  readonly cleanupError: unknown;
  readonly #res: Resources;

  constructor(res: Resources, cause: unknown, cleanupError: unknown) {
    const why = cause instanceof Error ? cause.message : String(cause);
    const cleanup = cleanupError === undefined ? '' : `; cleanup failed too: ${cleanupError instanceof Error ? cleanupError.message : String(cleanupError)}`;
    super(`cluster ${res.id} failed to start: ${why}${cleanup}`, { cause });
    this.id = res.id;
    this.cleanupError = cleanupError;
    this.#res = res;
  }

  remnants(): string[] {
    return remnantsOf(this.#res);
  }
}

async function teardown(res: Resources, graceful: boolean): Promise<void> {
  res.teardownAt ??= ticksNow();
  const errors: unknown[] = [];
  const settle = async (what: string, p: Promise<unknown> | undefined): Promise<void> => {
    try {
      await p;
    } catch (err) {
      errors.push(new Error(`${what}: ${err instanceof Error ? err.message : String(err)}`, { cause: err }));
    }
  };
  const t0 = Date.now();
  let t = t0;
  await Promise.all(res.hostStates.map((s, i) => {
    const name = res.plan.hosts[i]?.name ?? `host${i + 1}`;
    const hostTimings: Record<string, number> = {};
    return settle(`stop ${name}`, teardownHost(s, join(res.dir, name, 'run', 'docker.sock'), { graceful, timings: hostTimings })).then(() => {
      for (const [k, v] of Object.entries(hostTimings)) res.timings[`stop.${name}.${k}`] = v;
    });
  }));
  res.timings['stop.hosts'] = Date.now() - t;
  t = Date.now();
  await settle('stop etcd', res.etcd?.stop());
  // What a test started in the router, fabric or outside namespace (a listener it never
  // connected to) would otherwise outlive them.
  await settle('stop processes in the fabric namespaces', killMembers(fabricMembership(res.plan), FABRIC_SWEEP_TIMEOUT_MS).then((left) => {
    if (left.length > 0) throw new Error(`processes ${left.join(', ')} survived SIGKILL`);
  }));
  await Promise.all(res.createdNs.map((ns) => settle(`delete netns ${ns}`, deleteNetns(ns))));
  res.timings['stop.etcd+netns'] = Date.now() - t;
  t = Date.now();
  await settle('remove image tarball', res.tarCleanup?.());
  await settle(`remove ${res.dir}`, rm(res.dir, { recursive: true, force: true }));
  res.timings['stop.files'] = Date.now() - t;
  res.timings['stop.total'] = Date.now() - t0;
  live.delete(res);
  if (errors.length > 0) throw new AggregateError(errors, `cluster ${res.id}: teardown incomplete: ${errors.map(String).join('; ')}`);
}

/** The processes in the namespaces of the fabric that are no host's and not etcd's (found through
 * the namespaces' bind mounts, which are ours until deleted). */
function fabricMembership(plan: FabricPlan): Membership {
  const names = [plan.fabricNs, plan.routerNs, ...(plan.outsideNs === undefined ? [] : [plan.outsideNs])];
  const netInodes = new Set(names.map((n) => nsInode(`/run/netns/${n}`)).filter((i): i is number => i !== undefined));
  return { netInodes, mntInodes: new Set(), cgroupDirs: [] };
}

function remnantsOf(res: Resources): string[] {
  const nsInodes = new Set(res.nsInodes);
  for (const s of res.hostStates) for (const ino of [...s.membership.netInodes, ...s.membership.mntInodes]) nsInodes.add(ino);
  return remnants({
    id: res.id,
    netnsNames: namespacesOf(res.plan),
    nsInodes,
    since: res.teardownAt ?? ticksNow(),
    paths: [res.dir, ...(res.etcd === undefined ? [] : [res.etcd.dir])],
    cgroupDirs: res.cgroupDirs,
    pids: res.hostStates.flatMap((s) => s.pids),
  });
}

/** Last resort when the test process exits without stop(): synchronous kill, delete, unmount. */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    const pause = new Int32Array(new SharedArrayBuffer(4));
    for (const res of live) {
      for (const s of res.hostStates) {
        for (let round = 0; round < 20; round++) {
          const pids = members(sweepSet(s, true));
          if (s.holder?.pid !== undefined && isAlive(s.holder.pid) && pids.length === 0) pids.push(s.holder.pid);
          if (pids.length === 0) break;
          for (const pid of pids) {
            try {
              process.kill(pid, 'SIGKILL');
            } catch {
              // gone
            }
          }
          Atomics.wait(pause, 0, 0, 25);
        }
      }
      for (const pid of members(fabricMembership(res.plan))) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
      removeCgroupTrees(res.cgroupDirs);
      for (const ns of res.createdNs) {
        try {
          execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
        } catch {
          // best effort
        }
      }
      rmSync(res.dir, { recursive: true, force: true });
    }
  });
}
