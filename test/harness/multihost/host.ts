// One simulated host: its own network namespace (created with the fabric), mount namespace, UTS
// namespace (host name), dockerd and plugin.
//
// `ip netns exec` cannot host dockerd (it remounts /sys, which drops /sys/fs/cgroup: "Devices
// cgroup isn't mounted"). Instead a long-lived "holder" process
// (`nsenter --net=<netns> unshare --mount --propagation slave --uts sleep infinity`) owns the
// host's mount and UTS namespaces, and every command for the host joins it with
// `nsenter -t <holder> -m -n -u --wd=<host dir>`. In the holder's mount namespace:
// - copies of other namespaces' bind mounts (/run/netns/*, other dockerds' container namespaces)
//   are unmounted: a copy would keep someone else's namespace alive;
// - /sys is a sysfs of the host's own network namespace (the plugin reads /sys/class/net/<if>),
//   with the cgroup hierarchies moved aside and back so dockerd still finds them;
// - a per-host directory is bind-mounted over /run: the host has its own /run/docker.sock,
//   /run/docker/plugins, /run/docker (exec root), /run/xtables.lock. (/var/run is a symlink to
//   /run.) Propagation is "slave": nothing mounted inside (container rootfs, network namespaces)
//   shows up in the root namespace, so it all goes when the host's processes are gone.
import Docker from 'dockerode';
import type { ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync, readlinkSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { run } from '../../../dataplane/exec.js';
import { pingOk } from '../dockerd.js';
import { hostPlugin, type HostPlugin } from './host-plugin.js';
import { HOST_PATH, nsExec, nsRun, nsSpawn, type NsExecOptions, type NsExecResult } from './ns-exec.js';
import { allSettledOrThrow } from './settle.js';
import { cgroupDirsFor, decodeMountPath, isAlive, killMembers, nsInode, removeCgroupTreesWithin, terminate, type Membership } from './procs.js';
import type { HostPlacement } from './fabric.js';

const HOLDER_START_TIMEOUT_MS = 5_000;
const DOCKERD_START_TIMEOUT_MS = 60_000;
const DOCKERD_STOP_GRACE_MS = 10_000;
const CONTAINER_REMOVE_TIMEOUT_MS = 20_000;
const SWEEP_TIMEOUT_MS = 10_000;
const CGROUP_REMOVE_TIMEOUT_MS = 5_000;

export interface HostOptions {
  readonly placement: HostPlacement;
  /** This host's directory (created here): run/, data/, home/, logs. */
  readonly dir: string;
  /** Absolute cgroup path Docker puts the host's containers under. */
  readonly cgroupParent: string;
  readonly dockerdArgs: readonly string[];
  readonly storageDriver: string;
  /** The fabric namespace, where the host's port on its bridge lives. */
  readonly fabricNs: string;
  /** Start the plugin as a process (default); false: the test installs one itself (the managed
   * plugin, inside the host's dockerd). */
  readonly processPlugin?: boolean;
}

export interface Host {
  /** Host name (UTS), also the plugin's NODENAME: host1, host2, ... */
  readonly name: string;
  /** Address on the fabric. */
  readonly address: string;
  /** The fabric subnet it sits on ('a' or 'b') and that subnet's router address. */
  readonly subnet: 'a' | 'b';
  readonly gateway: string;
  /** `ip netns` name of its network namespace. */
  readonly netns: string;
  /** Its directory; `runDir` is what the host sees as /run. */
  readonly dir: string;
  readonly runDir: string;
  /** The host's Docker API socket (its /run/docker.sock) as the test process sees it. */
  readonly dockerSocket: string;
  readonly docker: Docker;
  /** The plugin process; undefined when the cluster was started with `processPlugin: false`. */
  readonly plugin: HostPlugin | undefined;
  /** Pid of the process holding the host's mount and UTS namespaces. */
  readonly holderPid: number;
  readonly dockerdPid: number | undefined;
  /** Runs argv inside the host (its network, mount and UTS namespaces; working directory: its
   * directory); resolves with the outcome whatever the exit status. */
  exec(argv: readonly string[], opts?: NsExecOptions): Promise<NsExecResult>;
  /** Like exec, but rejects unless the command exits 0. */
  run(argv: readonly string[], opts?: NsExecOptions): Promise<NsExecResult>;
  /** Starts a long-running process inside the host (the caller owns it; kill() and the cluster's
   * stop() end it at the latest). */
  spawn(argv: readonly string[], opts?: { env?: Record<string, string>; stdio?: 'ignore' | 'pipe' }): ChildProcess;
  /** A dead host: SIGKILL for the plugin, dockerd, containerd, shims, containers and anything
   * started in the host. Its namespaces, addresses, routes and iptables stay; its fabric link
   * stays up unless `disconnect()` is called too. */
  kill(): Promise<void>;
  /** Stops dockerd with SIGTERM (as `systemctl restart docker` does: it stops its containers and
   * managed plugins; SIGKILL after `graceMs`) and starts it again with the same arguments;
   * resolves once it answers /_ping. The plugin process (if any) is not touched. */
  restartDockerd(graceMs?: number): Promise<void>;
  /** Pull the host's cable (its port on the fabric bridge goes down; the host sees no carrier),
   * and plug it back in. */
  disconnect(): Promise<void>;
  reconnect(): Promise<void>;
}

/** Unmounts the holder's copies of namespace bind mounts. Some may vanish meanwhile: an `ip netns
 * del` in the root namespace propagates to our (slave) copy, so umount's complaint about those
 * is fine; what counts is that none of the copies is left. */
async function unmountCopies(holderPid: number, enter: readonly string[], env: Readonly<Record<string, string>>, host: string): Promise<void> {
  const copies = nsfsMounts(holderPid);
  if (copies.length === 0) return;
  const r = await nsExec(enter, ['umount', '-l', ...copies], env);
  const left = new Set(nsfsMounts(holderPid));
  const stuck = copies.filter((m) => left.has(m));
  if (stuck.length > 0) throw new Error(`${host}: cannot unmount copies of ${stuck.join(', ')}: ${r.stderr.trim()}`);
}

/** Mount points of nsfs mounts (bind-mounted namespace files) in a process's mount namespace. */
function nsfsMounts(pid: number): string[] {
  const out: string[] = [];
  for (const line of readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n')) {
    const [pre, post] = line.split(' - ');
    const point = pre?.split(' ')[4];
    if (post?.startsWith('nsfs ') === true && point !== undefined) out.push(decodeMountPath(point));
  }
  return out;
}

function mntInodeOf(pid: number): number | undefined {
  try {
    const m = /\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/ns/mnt`));
    return m?.[1] === undefined ? undefined : Number(m[1]);
  } catch {
    return undefined;
  }
}

/** The holder: spawned, then waited for until it has its own mount namespace and runs sleep. */
async function startHolder(netns: string, state: HostState): Promise<{ holder: ChildProcess; pid: number }> {
  const holder = nsSpawn(
    [`--net=/run/netns/${netns}`],
    ['unshare', '--mount', '--propagation', 'slave', '--uts', 'setpriv', '--pdeathsig', 'SIGKILL', 'sleep', 'infinity'],
    { PATH: HOST_PATH },
  );
  state.holder = holder;
  if (holder.pid !== undefined) state.pids.push(holder.pid);
  let failed: string | undefined;
  holder.once('error', (err) => (failed = err.message));
  holder.once('exit', (code, sig) => (failed ??= `exited (${sig ?? code})`));
  const ownMnt = mntInodeOf(process.pid);
  const deadline = Date.now() + HOLDER_START_TIMEOUT_MS;
  for (;;) {
    const pid = holder.pid;
    if (failed !== undefined) throw new Error(`holder for ${netns}: ${failed}`);
    if (pid !== undefined) {
      let comm = '';
      try {
        comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
      } catch {
        // not yet
      }
      const mnt = mntInodeOf(pid);
      if (comm === 'sleep' && mnt !== undefined && mnt !== ownMnt) return { holder, pid };
    }
    if (Date.now() > deadline) {
      holder.kill('SIGKILL');
      throw new Error(`holder for ${netns} did not start within ${HOLDER_START_TIMEOUT_MS} ms`);
    }
    await sleep(5);
  }
}

/**
 * What to sweep. The host's network namespace stays bound under /run/netns until the cluster
 * deletes it, so its inode is ours throughout; the mount namespace's inode is ours only while the
 * holder lives (once freed, the number goes to the next new namespace, maybe another run's
 * container). The holder itself is spared: it goes last.
 */
export function sweepSet(state: HostState, holderAlive: boolean): Membership {
  const holder = state.holder?.pid;
  const withMnt = holderAlive && isAlive(holder);
  return {
    netInodes: state.membership.netInodes,
    mntInodes: withMnt ? state.membership.mntInodes : new Set(),
    cgroupDirs: state.membership.cgroupDirs,
    ...(holder !== undefined && { spare: new Set([holder]) }),
  };
}

/** The state a Host keeps for teardown; filled in as bring-up proceeds. */
export interface HostState {
  holder?: ChildProcess;
  dockerd?: ChildProcess;
  plugin?: HostPlugin;
  readonly membership: { netInodes: Set<number>; mntInodes: Set<number>; cgroupDirs: string[] };
  /** Every process the harness started for the host (holder, dockerd, each plugin run). */
  readonly pids: number[];
  stopped: boolean;
}

export function newHostState(cgroupParent: string): HostState {
  return { membership: { netInodes: new Set(), mntInodes: new Set(), cgroupDirs: cgroupDirsFor(cgroupParent) }, pids: [], stopped: false };
}

/**
 * Brings the host up: holder and mounts, then in parallel dockerd (answering /_ping) followed by
 * the test image, and the plugin (once `pluginEnv` resolves). `state` records each piece as it
 * appears so that teardownHost() can remove a half-built host. `timings`: milliseconds from the
 * start to the namespaces, then from there to each of dockerd, image and plugin.
 */
export async function startHost(
  opts: HostOptions,
  state: HostState,
  /** Resolves with the plugin's environment once the datastore is up (dockerd does not wait). */
  pluginEnv: Promise<Readonly<Record<string, string>>>,
  importImage: (socketPath: string) => Promise<string>,
): Promise<{ host: Host; image: string; timings: Record<string, number> }> {
  const { placement: p, dir } = opts;
  const timings: Record<string, number> = {};
  let since = Date.now();
  const mark = (stage: string): void => {
    const now = Date.now();
    timings[stage] = now - since;
    since = now;
  };
  const runDir = join(dir, 'run');
  const cgDir = join(dir, 'cg');
  const home = join(dir, 'home');
  const dataRoot = join(dir, 'data');
  await Promise.all([runDir, cgDir, home, dataRoot].map((d) => mkdir(d, { recursive: true })));
  await writeFile(join(dir, 'daemon.json'), '{}\n');
  const netIno = nsInode(`/run/netns/${p.netns}`);
  if (netIno === undefined) throw new Error(`netns ${p.netns} is missing`);
  state.membership.netInodes.add(netIno);

  mark('dirs');
  const { pid: holderPid } = await startHolder(p.netns, state);
  mark('holder');
  const mntIno = mntInodeOf(holderPid);
  if (mntIno !== undefined) state.membership.mntInodes.add(mntIno);

  const baseEnv = { PATH: HOST_PATH, HOME: home };
  const enter = [`--target=${holderPid}`, '--mount', '--net', '--uts', `--wd=${dir}`];
  const setup = (argv: string[]): Promise<NsExecResult> => nsRun(`${p.name} (setup)`, enter, argv, baseEnv);
  // The mounts one after another: mount(8) keeps its own records under /run (utab), and a mount
  // racing the bind of /run failed once after mounting ("filesystem was mounted, but any
  // subsequent operation failed: No such file or directory"). The copies (under /run/netns) go
  // before /run is covered.
  await allSettledOrThrow([
    (async () => {
      await setup(['mount', '--move', '/sys/fs/cgroup', cgDir]);
      await setup(['mount', '-t', 'sysfs', 'sysfs', '/sys']);
      await setup(['mount', '--move', cgDir, '/sys/fs/cgroup']);
      await unmountCopies(holderPid, enter, baseEnv, p.name);
      await setup(['mount', '--bind', runDir, '/run']);
    })(),
    setup(['hostname', p.name]),
  ] as const);
  mark('namespaces');

  const startPlugin = async (): Promise<HostPlugin> => {
    const plugin = hostPlugin({
      hostName: p.name,
      nsenterArgs: enter,
      baseEnv,
      runDir,
      env: { ...(await pluginEnv), NODENAME: p.name },
      onSpawn: (pid) => state.pids.push(pid),
    });
    state.plugin = plugin;
    await plugin.start();
    timings['plugin'] = Date.now() - since;
    return plugin;
  };
  const dockerSocket = join(runDir, 'docker.sock');
  // The plugin needs neither dockerd nor the image to start (Docker finds it by its socket when
  // a network is created), so the three overlap.
  const [plugin, { dockerd: firstDockerd, image }] = await allSettledOrThrow([
    opts.processPlugin === false ? Promise.resolve(undefined) : startPlugin(),
    (async () => {
      const d = await startDockerd(opts, state, enter, baseEnv, dockerSocket);
      timings['dockerd'] = Date.now() - since;
      const ref = await importImage(dockerSocket);
      timings['image'] = Date.now() - since;
      return { dockerd: d, image: ref };
    })(),
  ] as const);
  let dockerd = firstDockerd;

  const host: Host = {
    name: p.name,
    address: p.address,
    subnet: p.subnet.name,
    gateway: p.subnet.router,
    netns: p.netns,
    dir,
    runDir,
    dockerSocket,
    docker: new Docker({ socketPath: dockerSocket }),
    plugin,
    holderPid,
    get dockerdPid() {
      return isAlive(dockerd.pid) ? dockerd.pid : undefined;
    },
    exec: (argv, o) => nsExec(enter, argv, baseEnv, o),
    run: (argv, o) => nsRun(p.name, enter, argv, baseEnv, o),
    spawn: (argv, o) => nsSpawn(enter, argv, baseEnv, { ...(o?.env !== undefined && { env: o.env }), stdio: o?.stdio ?? 'ignore' }),
    kill: async () => {
      await plugin?.kill('SIGKILL');
      const left = await killMembers(sweepSet(state, true), SWEEP_TIMEOUT_MS);
      if (left.length > 0) throw new Error(`${p.name}: processes ${left.join(', ')} survived SIGKILL`);
    },
    restartDockerd: async (graceMs = 45_000) => {
      if (!(await terminate(dockerd.pid, graceMs))) throw new Error(`${p.name}: dockerd ${dockerd.pid} survived SIGKILL`);
      dockerd = await startDockerd(opts, state, enter, baseEnv, dockerSocket);
    },
    disconnect: () => setPort(opts.fabricNs, p.fabricPort, 'down'),
    reconnect: () => setPort(opts.fabricNs, p.fabricPort, 'up'),
  };
  return { host, image, timings };
}

async function setPort(fabricNs: string, port: string, state: 'up' | 'down'): Promise<void> {
  await run('ip', ['-n', fabricNs, 'link', 'set', 'dev', port, state], `set fabric port ${port} ${state}`);
}

/** dockerd with everything of its own, in the host's /run where the defaults would put it
 * anyway; resolves once it answers /_ping. */
async function startDockerd(
  opts: HostOptions,
  state: HostState,
  enter: readonly string[],
  baseEnv: Readonly<Record<string, string>>,
  dockerSocket: string,
): Promise<ChildProcess> {
  const { placement: p, dir } = opts;
  const logPath = join(dir, 'dockerd.log');
  const logFd = openSync(logPath, 'a');
  let dockerd: ChildProcess;
  try {
    dockerd = nsSpawn(enter, [
      'setpriv', '--pdeathsig', 'SIGKILL',
      'dockerd',
      '-H', 'unix:///run/docker.sock',
      '--data-root', join(dir, 'data'),
      '--exec-root', '/run/docker',
      '--pidfile', '/run/docker.pid',
      '--config-file', join(dir, 'daemon.json'),
      '--cgroup-parent', opts.cgroupParent,
      '--storage-driver', opts.storageDriver,
      ...opts.dockerdArgs,
    ], baseEnv, { stdio: ['ignore', logFd, logFd] });
  } finally {
    closeSync(logFd);
  }
  state.dockerd = dockerd;
  if (dockerd.pid !== undefined) state.pids.push(dockerd.pid);
  let dockerdExit: string | undefined;
  dockerd.once('error', (err) => (dockerdExit = err.message));
  dockerd.once('exit', (code, sig) => (dockerdExit ??= `exited (${sig ?? code})`));
  const deadline = Date.now() + DOCKERD_START_TIMEOUT_MS;
  while (!(await pingOk(dockerSocket))) {
    if (dockerdExit !== undefined || Date.now() > deadline) {
      const log = (await readFile(logPath, 'utf8').catch(() => '')).split('\n').slice(-30).join('\n');
      throw new Error(`dockerd on ${p.name}: ${dockerdExit ?? 'no answer to /_ping in time'}\n--- dockerd log ---\n${log}`);
    }
    await sleep(50);
  }
  return dockerd;
}

/** DELETE every container (force: SIGKILL, no 10 s stop timeout), in parallel, bounded. */
async function removeAllContainers(socketPath: string): Promise<void> {
  const api = (method: string, path: string): Promise<string> => new Promise((resolve, reject) => {
    const req = http.request({ socketPath, path, method, timeout: CONTAINER_REMOVE_TIMEOUT_MS }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (c: string) => (body += c));
      res.on('end', () => resolve(body));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: timeout`)));
    req.on('error', reject);
    req.end();
  });
  const list = JSON.parse(await api('GET', '/containers/json?all=1')) as { Id: string }[];
  await Promise.all(list.map((c) => api('DELETE', `/containers/${encodeURIComponent(c.Id)}?force=1&v=1`).catch(() => '')));
}

/**
 * Takes the host down, bounded throughout. Graceful: containers removed through the API (the
 * plugin answers Leave/DeleteEndpoint and releases their addresses), then plugin and dockerd
 * stopped with SIGTERM. Either way, every process left in the host's namespaces or cgroups is
 * then SIGKILLed, the holder last (its exit destroys the mount namespace and everything mounted
 * in it), and the cgroup directories are removed. Errors are collected, never stop the rest.
 */
export async function teardownHost(
  state: HostState,
  dockerSocket: string,
  opts: { readonly graceful: boolean; readonly timings?: Record<string, number> },
): Promise<void> {
  if (state.stopped) return;
  state.stopped = true;
  const timings = opts.timings ?? {};
  let since = Date.now();
  const mark = (stage: string): void => {
    const now = Date.now();
    timings[stage] = now - since;
    since = now;
  };
  const errors: string[] = [];
  const dockerdPid = state.dockerd?.pid;
  if (opts.graceful) {
    if (isAlive(dockerdPid) && (await pingOk(dockerSocket))) {
      await removeAllContainers(dockerSocket).catch((err: unknown) => errors.push(`remove containers: ${String(err)}`));
    }
    mark('containers');
    await Promise.all([
      state.plugin?.stop().catch((err: unknown) => errors.push(`stop plugin: ${String(err)}`)),
      terminate(dockerdPid, DOCKERD_STOP_GRACE_MS),
    ]);
    mark('daemons');
  }
  const left = await killMembers(sweepSet(state, true), SWEEP_TIMEOUT_MS);
  if (left.length > 0) errors.push(`processes ${left.join(', ')} survived SIGKILL`);
  if (!(await terminate(state.holder?.pid, 0))) errors.push(`holder ${state.holder?.pid} survived SIGKILL`);
  // Processes that were between their fork and their namespace switch when we looked.
  const late = await killMembers(sweepSet(state, false), SWEEP_TIMEOUT_MS);
  if (late.length > 0) errors.push(`processes ${late.join(', ')} survived SIGKILL`);
  mark('sweep');
  const cg = await removeCgroupTreesWithin(state.membership.cgroupDirs, CGROUP_REMOVE_TIMEOUT_MS);
  if (cg.length > 0) errors.push(`cgroups not removed: ${cg.join(', ')}`);
  if (errors.length > 0) throw new Error(errors.join('; '));
}
