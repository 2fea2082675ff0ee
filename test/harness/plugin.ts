// Runs the real daemon binary (dist/bin/calico-libnetwork.js) as a child process under unique
// driver names, data directory and iptables chain prefix, so concurrent test files and runs never
// share a socket in /run/docker/plugins, a store, or a chain.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { run } from '../../dataplane/exec';
import { hostVethName } from '../../dataplane/names';
import { PolicyDataplane } from '../../dataplane/policy-dataplane';
import { removeEndpointVeth } from '../../dataplane/veth';
import { ownerAlive, writeOwner } from './multihost/reap';

const DAEMON = resolve(__dirname, '../../bin/calico-libnetwork.js');
const CTL = resolve(__dirname, '../../bin/calicoctl.js');
const START_TIMEOUT_MS = 20_000;

export interface PluginOptions {
  readonly dockerSocket: string;
  /** Use etcd at these endpoints; omitted: the embedded store. */
  readonly etcdEndpoints?: string[];
  readonly ipv4Pool?: string;
  readonly ipv6Pool?: string;
  readonly env?: Record<string, string>;
  /** How long the daemon may take to serve (default 20 s; a machine busy with iptables writes of
   * others can take longer to let it program its chains). */
  readonly startTimeoutMs?: number;
}

export interface Plugin {
  readonly networkDriver: string;
  readonly ipamDriver: string;
  readonly env: Record<string, string>;
  readonly node: string;
  /** Prefix of this instance's iptables chains and ipsets. */
  readonly chainPrefix: string;
  /** Prefix of this instance's host-side interfaces. */
  readonly ifPrefix: string;
  /** The host end of an endpoint's veth. */
  hostIf(endpointId: string): string;
  /** Everything the daemon printed so far (for failure messages). */
  output(): string;
  /** SIGTERM and wait; resolves with the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL (a crash: sockets, veths and records stay as they are) and wait for the exit. */
  kill(): Promise<void>;
  /** SIGTERM (unless it is not running, e.g. after kill()), then start again with the same
   * names, store and chains. */
  restart(): Promise<void>;
  /** Deletes this instance's kernel state (chains, ipsets, routes, veths) as a reboot would, the
   * daemon being down; the datastore stays. */
  wipeKernel(): Promise<void>;
  /** Stop if running and remove every trace (data dir, chains). Idempotent. */
  cleanup(): Promise<void>;
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

/** An instance's data directory: its id (and so its chain prefix and socket names) is in the name;
 * its owner file (writeOwner) names the test process. */
const DATA_DIR_RE = /^calico-test-([0-9a-f]{6})-\w{6}$/;
const POLICY_MARK_BIT = 0x100000;
const PLUGIN_DIR = '/run/docker/plugins';

/**
 * Reaps what instances of test processes that were killed (ava's timeout: no teardown, no exit
 * hook) left: their chains and ipsets (the prefix is the instance's own), sockets and data
 * directories. The
 * daemon itself is stopped by its parent-death signal; one still running is left alone. Veths go
 * with their containers (the dockerd reaper); routes are not touched, since instances may share a
 * route protocol. Resolves with the directories reaped.
 */
export async function reapOrphanPlugins(): Promise<string[]> {
  const reaped: string[] = [];
  let names: string[];
  try {
    names = readdirSync(tmpdir()).filter((n) => DATA_DIR_RE.test(n));
  } catch {
    return reaped;
  }
  const environs = new Set<string>();
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      for (const kv of readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0')) if (kv.startsWith('CALICO_DATA_DIR=')) environs.add(kv.slice('CALICO_DATA_DIR='.length));
    } catch {
      // gone meanwhile
    }
  }
  for (const name of names) {
    const dir = join(tmpdir(), name);
    const id = DATA_DIR_RE.exec(name)?.[1] ?? '';
    if (ownerAlive(dir) || environs.has(dir)) continue;
    await new PolicyDataplane({ prefix: `t${id}`, markBit: POLICY_MARK_BIT }).removeAll();
    // A daemon that died before it could remove its sockets (this one is not running) left them.
    for (const n of [`calico-t${id}`, `calico-ipam-t${id}`]) await rm(join(PLUGIN_DIR, `${n}.sock`), { force: true });
    await rm(dir, { recursive: true, force: true });
    reaped.push(dir);
  }
  return reaped;
}

export async function startPlugin(opts: PluginOptions): Promise<Plugin> {
  await reapOrphanPlugins();
  const id = randomBytes(3).toString('hex');
  const dataDir = await mkdtemp(join(tmpdir(), `calico-test-${id}-`));
  const chainPrefix = `t${id}`;
  writeOwner(dataDir);
  const networkDriver = `calico-t${id}`;
  const ipamDriver = `calico-ipam-t${id}`;
  const node = `node-${id}`;
  // Each instance has its own interface prefix: policy matches `<prefix>+`, and instances sharing
  // one would drop each other's (to them unknown) interfaces.
  const ifPrefix = `q${id.slice(0, 3)}`;
  // Likewise its own route protocol: the routes manager removes every route of its protocol that
  // it did not plan, so instances sharing one would delete each other's.
  const routeProtocol = 100 + (parseInt(id, 16) % 150);
  const env: Record<string, string> = {
    CALICO_ROUTE_PROTOCOL: String(routeProtocol),
    CALICO_NETWORK_DRIVER_NAME: networkDriver,
    CALICO_IPAM_DRIVER_NAME: ipamDriver,
    CALICO_DATA_DIR: dataDir,
    CALICO_DATASTORE_PREFIX: `/calico-test/${id}`,
    CALICO_IPTABLES_CHAIN_PREFIX: chainPrefix,
    CALICO_INTERFACE_PREFIX: ifPrefix,
    NODENAME: node,
    DOCKER_HOST: `unix://${opts.dockerSocket}`,
    CALICO_IPV4POOL_CIDR: opts.ipv4Pool ?? 'none',
    CALICO_IPV6POOL_CIDR: opts.ipv6Pool ?? 'none',
    // Instances run side by side: a test that wants the listener gives it a port of its own.
    CALICO_HEALTH_LISTEN: 'none',
    ...(opts.etcdEndpoints !== undefined && { ETCD_ENDPOINTS: opts.etcdEndpoints.join(',') }),
    ...opts.env,
  };
  let out = '';
  let child: ChildProcess;
  let exited: Promise<number | null>;
  const spawnDaemon = (): void => {
    // setpriv: the daemon is told to stop (SIGTERM: it removes its sockets) when the test process
    // dies, even by SIGKILL (ava's timeout), which runs no teardown.
    const c = spawn('setpriv', ['--pdeathsig', 'SIGTERM', process.execPath, DAEMON], { env: { PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(c);
    exited = new Promise<number | null>((res) => c.once('exit', (code) => {
      live.delete(c);
      res(code);
    }));
    c.stdout?.on('data', (b: Buffer) => (out += b.toString()));
    c.stderr?.on('data', (b: Buffer) => (out += b.toString()));
    child = c;
  };
  // A managed plugin's mode (CALICO_LIBNETWORK_SOCKETS=single) serves both interfaces on one.
  const single = env['CALICO_LIBNETWORK_SOCKETS'] === 'single';
  const sockets = (single ? [networkDriver] : [networkDriver, ipamDriver]).map((n) => join(PLUGIN_DIR, `${n}.sock`));
  const waitServing = async (): Promise<void> => {
    const deadline = Date.now() + (opts.startTimeoutMs ?? START_TIMEOUT_MS);
    const served = out.split('serving').length;
    while (!sockets.every((s) => existsSync(s)) || out.split('serving').length === served) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`plugin did not start (exit ${child.exitCode}):\n${out}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  let cleaned = false;
  const plugin: Plugin = {
    networkDriver,
    ipamDriver,
    env,
    node,
    chainPrefix,
    ifPrefix,
    hostIf: (endpointId) => hostVethName(ifPrefix, endpointId),
    output: () => out,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
    async restart() {
      if (child.exitCode === null && child.signalCode === null) {
        const code = await plugin.stop();
        if (code !== 0) throw new Error(`plugin exited with ${code} on SIGTERM:\n${out}`);
      }
      spawnDaemon();
      await waitServing();
    },
    async wipeKernel() {
      // Routes and veths go even when removing the rules fails (that failure is still reported).
      try {
        await new PolicyDataplane({ prefix: chainPrefix, markBit: POLICY_MARK_BIT, ifPrefix }).removeAll();
      } finally {
        for (const family of ['-4', '-6']) await run('ip', [family, 'route', 'flush', 'proto', String(routeProtocol)], 'flush test routes');
        for (const link of await linksWithPrefix(ifPrefix)) await removeEndpointVeth(link);
      }
    },
    async cleanup() {
      if (cleaned) return;
      cleaned = true;
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await plugin.stop();
      clearTimeout(timer);
      // Safety net: a test that removed its containers after stopping the plugin would leave
      // their veths behind (Docker moves them back to the host); the prefix is this instance's.
      await plugin.wipeKernel();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
  spawnDaemon();
  try {
    await waitServing();
  } catch (err) {
    await plugin.cleanup();
    throw err;
  }
  return plugin;
}

/** Runs calicoctl against a plugin's (or a cluster's) datastore; resolves with exit code and output. */
export function calicoctl(plugin: { readonly env: Readonly<Record<string, string>> }, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((res) => {
    const child = spawn(process.execPath, [CTL, ...args], { env: { PATH: process.env['PATH'] ?? '', ...plugin.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    child.once('exit', (code) => res({ code, stdout, stderr }));
  });
}

/** Waits until the agent has given the endpoint's interface its policy (a dispatch rule in the
 * kernel): from then on the container's traffic follows its profiles instead of the fail-closed
 * drop. Reads the kernel, so it proves the rules are really there. */
export async function waitProgrammed(plugin: Plugin, endpointId: string, timeoutMs = 10_000): Promise<void> {
  const hostIf = plugin.hostIf(endpointId);
  const deadline = Date.now() + timeoutMs;
  // The whole table: above DISPATCH_FLAT_MAX ready endpoints the rule sits in a leaf
  // (`<prefix>-from-wl-dispatch-<c>`), not in the root chain.
  const root = `-A ${plugin.chainPrefix}-from-wl-dispatch`;
  const inDispatch = (l: string): boolean => l.startsWith(`${root} `) || l.startsWith(`${root}-`);
  for (;;) {
    const { stdout } = await run('iptables', ['-S'], 'read dispatch chains');
    if (stdout.split('\n').some((l) => inDispatch(l) && l.includes(` -i ${hostIf} `))) return;
    if (Date.now() > deadline) throw new Error(`endpoint ${endpointId.slice(0, 12)} was not programmed within ${timeoutMs}ms:\n${plugin.output()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function linksWithPrefix(prefix: string): Promise<string[]> {
  const { stdout } = await run('ip', ['-j', 'link', 'show'], 'list links');
  return (JSON.parse(stdout) as { ifname: string }[]).map((l) => l.ifname).filter((n) => n.startsWith(prefix));
}
