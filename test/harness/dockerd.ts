// An isolated, throwaway dockerd for e2e tests: its own socket, data root, exec root, pidfile and
// (empty) config file under one temp directory, no bridge, no iptables/ip6tables/masquerade/
// forwarding changes, the vfs storage driver. It never uses the host's /var/lib/docker,
// /etc/docker/daemon.json or /var/run/docker.sock.
//
// stop() removes the containers through the API, stops dockerd (which stops its containerd), kills
// by pid whatever is left that belongs to this instance (dockerd, its containerd, shims whose
// command line names our directory, and their children), lazily unmounts everything mounted under
// the directory (dockerd bind-mounts the data root onto itself; network namespaces are bind mounts
// under the exec root), then deletes the directory. A process 'exit' hook does the same
// synchronously as a last resort.

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { run } from '../../dataplane/exec.js';
import { isAlive } from './multihost/procs';
import { ownerAlive, writeOwner } from './multihost/reap';

export const DOCKERD = '/usr/sbin/dockerd';
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 20_000;
const POLL_MS = 100;
const TMP_BASE = '/tmp';
const DIR_PREFIX = 'cd-';

export interface DockerdOptions {
  /** Default 'vfs': works on any backing filesystem and the test image is tiny. */
  storageDriver?: string;
  /** Extra dockerd flags (e.g. '--debug'). */
  extraArgs?: string[];
  startTimeoutMs?: number;
}

export interface TestDockerd {
  /** Unix socket of the API (dockerode: `new Docker({ socketPath })`). */
  socketPath: string;
  dataRoot: string;
  execRoot: string;
  /** Everything of this instance lives under here. */
  baseDir: string;
  logPath: string;
  /** Of the dockerd running now (a new one after crash() and start()). */
  readonly pid: number;
  /** Idempotent. */
  stop(): Promise<void>;
  /** A simulated reboot's first half: SIGKILL dockerd, containerd, shims and containers, unmount
   * their namespaces, empty the exec root. The data root stays (it is on disk). */
  crash(): Promise<void>;
  /** Starts dockerd again on the same directories (after crash()) and waits for /_ping. */
  start(): Promise<void>;
}

interface Instance {
  baseDir: string;
  execRoot: string;
  /** The dockerd running now; undefined only before the first spawn. */
  child: ChildProcess | undefined;
  stopped: boolean;
}

const instances = new Set<Instance>();
let exitHookInstalled = false;

export async function startDockerd(opts: DockerdOptions = {}): Promise<TestDockerd> {
  installExitHook();
  await reapOrphanDockerds();
  // Short paths: containerd's sockets live under the exec root and unix socket paths are limited
  // to 107 bytes.
  const baseDir = mkdtempSync(path.join(TMP_BASE, DIR_PREFIX));
  writeOwner(baseDir);
  const dataRoot = path.join(baseDir, 'data');
  const execRoot = path.join(baseDir, 'x');
  const socketPath = path.join(baseDir, 'docker.sock');
  const pidfile = path.join(baseDir, 'docker.pid');
  const configFile = path.join(baseDir, 'daemon.json');
  const logPath = path.join(baseDir, 'dockerd.log');
  await mkdir(dataRoot);
  await mkdir(execRoot);
  // An explicit empty config: no registry mirrors, no settings from /etc/docker/daemon.json.
  writeFileSync(configFile, '{}\n');
  const suffix = randomBytes(4).toString('hex');

  const args = [
    '-H', `unix://${socketPath}`,
    '--data-root', dataRoot,
    '--exec-root', execRoot,
    '--pidfile', pidfile,
    '--config-file', configFile,
    '--storage-driver', opts.storageDriver ?? 'vfs',
    '--bridge=none',
    '--iptables=false',
    '--ip6tables=false',
    '--ip-masq=false',
    '--ip-forward=false',
    // Only used if a system containerd is running (dockerd then connects to it instead of starting
    // its own): keeps this instance's objects apart from anything else there.
    '--containerd-namespace', `ctest-${suffix}`,
    '--containerd-plugins-namespace', `ctest-plugins-${suffix}`,
    ...(opts.extraArgs ?? []),
  ];
  const inst: Instance = { baseDir, execRoot, child: undefined, stopped: false };
  instances.add(inst);
  const stop = () => stopInstance(inst);
  const launch = async (): Promise<void> => {
    const logFd = openSync(logPath, 'a');
    try {
      inst.child = spawn(DOCKERD, args, {
        stdio: ['ignore', logFd, logFd],
        env: { ...process.env, PATH: `/usr/sbin:/usr/bin:/sbin:/bin:${process.env['PATH'] ?? ''}` },
      });
    } finally {
      closeSync(logFd);
    }
    const child = inst.child;
    let exited: string | undefined;
    child.once('exit', (code, signal) => {
      exited = `dockerd exited (${signal ?? `status ${code}`})`;
    });
    child.once('error', (err) => {
      exited = `dockerd failed to start: ${err.message}`;
    });
    const deadline = Date.now() + (opts.startTimeoutMs ?? START_TIMEOUT_MS);
    for (;;) {
      if (exited !== undefined) throw new Error(exited);
      if (await pingOk(socketPath)) break;
      if (Date.now() > deadline) throw new Error('dockerd did not answer /_ping in time');
      await sleep(POLL_MS);
    }
  };
  const launchOrStop = async (): Promise<void> => {
    try {
      await launch();
    } catch (err) {
      const log = await tail(logPath, 40);
      await stop().catch(() => undefined);
      throw new Error(`${(err as Error).message}\n--- dockerd log (last lines) ---\n${log}`, { cause: err });
    }
  };
  await launchOrStop();
  return {
    socketPath, dataRoot, execRoot, baseDir, logPath, stop,
    get pid() {
      return inst.child?.pid ?? -1;
    },
    async crash() {
      // As a power cut: dockerd, containerd, shims and every container process die at once, and
      // what lived in memory and under /run goes: the exec root (network namespace mounts, so the
      // containers' veths with them, containerd's state) is emptied.
      const containerdPid = readPid(path.join(execRoot, 'containerd', 'containerd.pid'));
      const dockerdPid = inst.child?.pid;
      for (const pid of [dockerdPid, containerdPid]) if (pid !== undefined) signal(pid, 'SIGKILL');
      killLeftovers(baseDir);
      const deadline = Date.now() + STOP_TIMEOUT_MS;
      while ([dockerdPid, containerdPid].some((pid) => isAlive(pid)) && Date.now() < deadline) await sleep(POLL_MS);
      await unmountUnder(baseDir);
      await rm(execRoot, { recursive: true, force: true });
      await mkdir(execRoot);
    },
    start: launchOrStop,
  };
}

/** GET /_ping over the unix socket: true on 200. */
export function pingOk(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.request({ socketPath, path: '/_ping', method: 'GET', timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
    req.end();
  });
}

async function stopInstance(inst: Instance): Promise<void> {
  if (inst.stopped) return;
  inst.stopped = true;
  const socketPath = path.join(inst.baseDir, 'docker.sock');
  const containerdPid = readPid(path.join(inst.execRoot, 'containerd', 'containerd.pid'));

  const dockerdPid = inst.child?.pid;
  // 1. Let dockerd remove containers (kills their processes and unmounts their namespaces).
  if (isAlive(dockerdPid) && (await pingOk(socketPath))) {
    await removeAllContainers(socketPath).catch(() => undefined);
  }
  // 2. Stop dockerd; it stops its containerd on the way out.
  await terminate(dockerdPid, STOP_TIMEOUT_MS);
  await terminate(containerdPid, STOP_TIMEOUT_MS / 2);
  // 3. Whatever is left of this instance: shims (their command line names our directory) and their
  //    children (container processes).
  killLeftovers(inst.baseDir);
  // 4. Unmount, then delete.
  await unmountUnder(inst.baseDir);
  try {
    await rm(inst.baseDir, { recursive: true, force: true });
  } catch {
    await unmountUnder(inst.baseDir);
    await rm(inst.baseDir, { recursive: true, force: true });
  }
  instances.delete(inst);
}

/** Reaps every instance under /tmp whose owning test process is gone (killed without stop() or
 * its exit hook): its dockerd, containerd, shims and containers, mounts and directory. Resolves
 * with the directories reaped. */
export async function reapOrphanDockerds(): Promise<string[]> {
  let names: string[];
  try {
    names = readdirSync(TMP_BASE).filter((n) => n.startsWith(DIR_PREFIX) && n.length === DIR_PREFIX.length + 6);
  } catch {
    return [];
  }
  const orphans = names.map((n) => path.join(TMP_BASE, n)).filter((dir) => existsSync(path.join(dir, 'x')) && !ownerAlive(dir));
  for (const dir of orphans) {
    // Only processes whose command line names the directory (dockerd, its containerd, the shims)
    // and their descendants (the containers): never a pid from a pidfile, which may be reused.
    killLeftovers(dir);
    await unmountUnder(dir);
    await rm(dir, { recursive: true, force: true }).catch(async () => {
      await unmountUnder(dir);
      await rm(dir, { recursive: true, force: true });
    });
  }
  return orphans;
}

function removeAllContainers(socketPath: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, path: '/containers/json?all=1', method: 'GET', timeout: 10_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        let ids: string[] = [];
        try {
          ids = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as Array<{ Id: string }>).map((c) => c.Id);
        } catch (err) {
          reject(err);
          return;
        }
        Promise.all(ids.map((id) => deleteContainer(socketPath, id))).then(() => resolve(), reject);
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout listing containers')));
    req.on('error', reject);
    req.end();
  });
}

function deleteContainer(socketPath: string, id: string): Promise<void> {
  return new Promise((resolve) => {
    const req = http.request(
      { socketPath, path: `/containers/${encodeURIComponent(id)}?force=1&v=1`, method: 'DELETE', timeout: 20_000 },
      (res) => {
        res.resume();
        res.on('end', () => resolve());
      },
    );
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve());
    req.end();
  });
}


/** SIGTERM, wait, then SIGKILL. */
async function terminate(pid: number | undefined, timeoutMs: number): Promise<void> {
  if (!isAlive(pid) || pid === undefined) return;
  signal(pid, 'SIGTERM');
  const deadline = Date.now() + timeoutMs;
  while (isAlive(pid) && Date.now() < deadline) await sleep(POLL_MS);
  if (isAlive(pid)) {
    signal(pid, 'SIGKILL');
    const killDeadline = Date.now() + 5000;
    while (isAlive(pid) && Date.now() < killDeadline) await sleep(POLL_MS);
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

function readPid(file: string): number | undefined {
  try {
    const n = Number.parseInt(readFileSync(file, 'utf8').trim(), 10);
    return Number.isInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

interface ProcInfo {
  pid: number;
  ppid: number;
  cmdline: string;
}

function listProcesses(): ProcInfo[] {
  const out: ProcInfo[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const cmdline = readFileSync(`/proc/${name}/cmdline`, 'utf8').replaceAll('\0', ' ');
      out.push({ pid: Number(name), ppid: Number(rest[1]), cmdline });
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

/** Pids of live processes whose command line mentions `dir` (this instance's dockerd, containerd
 * and shims), for tests to assert nothing is left. */
export function processesUsing(dir: string): number[] {
  const needle = dir.endsWith('/') ? dir : `${dir}/`;
  return listProcesses()
    .filter((p) => p.pid !== process.pid && (p.cmdline.includes(needle) || p.cmdline.includes(`${dir} `)))
    .filter((p) => isAlive(p.pid))
    .map((p) => p.pid);
}

/** SIGKILL every process naming `dir` in its command line, and their descendants (children first). */
function killLeftovers(dir: string): void {
  const procs = listProcesses();
  const roots = new Set(processesUsing(dir));
  if (roots.size === 0) return;
  const children = new Map<number, number[]>();
  for (const p of procs) children.set(p.ppid, [...(children.get(p.ppid) ?? []), p.pid]);
  const order: number[] = [];
  const visit = (pid: number) => {
    for (const c of children.get(pid) ?? []) visit(c);
    order.push(pid);
  };
  for (const r of roots) visit(r);
  for (const pid of order) signal(pid, 'SIGKILL');
}

/** Mount points at or under `dir`, deepest first, from /proc/self/mountinfo (octal escapes decoded). */
export function mountsUnder(dir: string): string[] {
  let info: string;
  try {
    info = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  const found = new Set<string>();
  for (const line of info.split('\n')) {
    const mountPoint = line.split(' ')[4];
    if (mountPoint === undefined) continue;
    const decoded = mountPoint.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (decoded === dir || decoded.startsWith(`${dir}/`)) found.add(decoded);
  }
  return [...found].sort((a, b) => b.length - a.length);
}

async function unmountUnder(dir: string): Promise<void> {
  // Stacked mounts show up again after the top one goes; a few rounds cover them.
  for (let round = 0; round < 5; round++) {
    const mounts = mountsUnder(dir);
    if (mounts.length === 0) return;
    for (const m of mounts) {
      await run('umount', ['-l', m], `unmount ${m}`).catch(() => undefined);
    }
  }
}

async function tail(file: string, lines: number): Promise<string> {
  try {
    return (await readFile(file, 'utf8')).split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Last resort when a test process exits without stop(): synchronous kill, unmount, delete. */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const inst of instances) {
      if (inst.stopped) continue;
      const containerdPid = readPid(path.join(inst.execRoot, 'containerd', 'containerd.pid'));
      if (inst.child?.pid !== undefined) signal(inst.child.pid, 'SIGKILL');
      if (containerdPid !== undefined) signal(containerdPid, 'SIGKILL');
      try {
        killLeftovers(inst.baseDir);
      } catch {
        // best effort
      }
      for (let round = 0; round < 5; round++) {
        const mounts = mountsUnder(inst.baseDir);
        if (mounts.length === 0) break;
        for (const m of mounts) {
          try {
            execFileSync('umount', ['-l', m], { stdio: 'ignore' });
          } catch {
            // best effort
          }
        }
      }
      if (existsSync(inst.baseDir)) rmSync(inst.baseDir, { recursive: true, force: true });
    }
  });
}

/** Alias used by the e2e suites. */
export type Dockerd = TestDockerd;
