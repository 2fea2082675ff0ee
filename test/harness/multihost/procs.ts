// Finding and ending every process that belongs to a simulated host, by what it is inside rather
// than by name: its network or mount namespace is one of the host's, it sits in one of the host's
// cgroups (containers: Docker puts them under the host's --cgroup-parent), or it descends from one
// of those (a container whose shim died is re-parented and keeps only its cgroup). Also the
// cgroup directories themselves, and the checks a test makes that nothing of a cluster is left.
import { readdirSync, readFileSync, readlinkSync, rmdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const POLL_MS = 20;

export interface ProcInfo {
  readonly pid: number;
  readonly ppid: number;
  readonly comm: string;
}

/** The inode of a namespace file (`/proc/<pid>/ns/net`, `/run/netns/<name>`), undefined if gone. */
export function nsInode(path: string): number | undefined {
  try {
    return statSync(path).ino;
  } catch {
    return undefined;
  }
}

/** Inode of `/proc/<pid>/ns/<kind>` from its link text ("net:[4026532008]"): works on processes
 * of other namespaces, where stat() needs more rights. */
function procNsInode(pid: number, kind: 'net' | 'mnt'): number | undefined {
  try {
    const m = /\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/ns/${kind}`));
    return m?.[1] === undefined ? undefined : Number(m[1]);
  } catch {
    return undefined;
  }
}

export function listProcesses(): ProcInfo[] {
  const out: ProcInfo[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const close = stat.lastIndexOf(')');
      const rest = stat.slice(close + 2).split(' ');
      if (rest[0] === 'Z' || rest[0] === 'X') continue; // exited, waiting to be reaped
      out.push({ pid: Number(name), ppid: Number(rest[1]), comm: stat.slice(stat.indexOf('(') + 1, close) });
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

export function isAlive(pid: number | undefined): boolean {
  if (pid === undefined || pid <= 0) return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** What marks a process as one of ours. */
export interface Membership {
  readonly netInodes: ReadonlySet<number>;
  readonly mntInodes: ReadonlySet<number>;
  /** cgroup directories whose processes (at any depth) are ours. */
  readonly cgroupDirs: readonly string[];
  /** Never these (a host's holder while the host is only being "killed"). */
  readonly spare?: ReadonlySet<number>;
}

function pidsInCgroups(dirs: readonly string[]): Set<number> {
  const pids = new Set<number>();
  const visit = (dir: string): void => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    try {
      for (const l of readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n')) if (l !== '') pids.add(Number(l));
    } catch {
      // removed meanwhile
    }
    for (const e of entries) if (e.isDirectory()) visit(join(dir, e.name));
  };
  for (const d of dirs) visit(d);
  return pids;
}

/** Pids of live processes that belong to `m`, with all their descendants. */
export function members(m: Membership): number[] {
  const procs = listProcesses();
  const found = pidsInCgroups(m.cgroupDirs);
  for (const p of procs) {
    const net = procNsInode(p.pid, 'net');
    const mnt = procNsInode(p.pid, 'mnt');
    if ((net !== undefined && m.netInodes.has(net)) || (mnt !== undefined && m.mntInodes.has(mnt))) found.add(p.pid);
  }
  const children = new Map<number, number[]>();
  for (const p of procs) children.set(p.ppid, [...(children.get(p.ppid) ?? []), p.pid]);
  const all = new Set<number>();
  const visit = (pid: number): void => {
    if (all.has(pid)) return;
    all.add(pid);
    for (const c of children.get(pid) ?? []) visit(c);
  };
  for (const pid of found) visit(pid);
  all.delete(process.pid);
  for (const s of m.spare ?? []) all.delete(s);
  return [...all].filter(isAlive);
}

/**
 * SIGKILL every member, again and again until none is left (a supervisor may start a child
 * between the scan and the kill; a dying shim re-parents its container). Resolves with the pids
 * still alive at the deadline (empty on success).
 */
export async function killMembers(m: Membership, timeoutMs: number): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pids = members(m);
    if (pids.length === 0) return [];
    if (Date.now() > deadline) return pids;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    await sleep(POLL_MS);
  }
}

/** SIGTERM, wait up to `graceMs`, then SIGKILL and wait a little more. True when it is gone. */
export async function terminate(pid: number | undefined, graceMs: number): Promise<boolean> {
  if (pid === undefined || !isAlive(pid)) return true;
  const send = (sig: NodeJS.Signals): void => {
    try {
      process.kill(pid, sig);
    } catch {
      // gone already
    }
  };
  send('SIGTERM');
  const deadline = Date.now() + graceMs;
  while (isAlive(pid) && Date.now() < deadline) await sleep(POLL_MS);
  if (!isAlive(pid)) return true;
  send('SIGKILL');
  const killDeadline = Date.now() + 5_000;
  while (isAlive(pid) && Date.now() < killDeadline) await sleep(POLL_MS);
  return !isAlive(pid);
}

/** Mount points of the cgroup hierarchies (v1 controllers and v2), from our mountinfo. */
export function cgroupMounts(): string[] {
  const out: string[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [pre, post] = line.split(' - ');
    const fstype = post?.split(' ')[0];
    const point = pre?.split(' ')[4];
    if ((fstype === 'cgroup' || fstype === 'cgroup2') && point !== undefined) out.push(decodeMountPath(point));
  }
  return out;
}

/** `<hierarchy>/<parent>` in every hierarchy (Docker's cgroupfs driver creates the parent in each). */
export function cgroupDirsFor(parent: string): string[] {
  return cgroupMounts().map((m) => join(m, parent));
}

/** rmdir the cgroup trees, deepest first (a cgroup goes only once it has no children and no
 * processes). Returns the directories that could not be removed. */
export function removeCgroupTrees(dirs: readonly string[]): string[] {
  const failed: string[] = [];
  const remove = (dir: string): void => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return; // not there
    }
    for (const e of entries) if (e.isDirectory()) remove(join(dir, e.name));
    try {
      rmdirSync(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') failed.push(dir);
    }
  };
  for (const d of dirs) remove(d);
  return failed;
}

/** removeCgroupTrees, retried for up to `timeoutMs`: a killed container process whose shim was
 * killed too is re-parented to init, and until init reaps it the cgroup may still count it. */
export async function removeCgroupTreesWithin(dirs: readonly string[], timeoutMs: number): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const failed = removeCgroupTrees(dirs);
    if (failed.length === 0 || Date.now() > deadline) return failed;
    await sleep(50);
  }
}

export function decodeMountPath(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Now, in the unit of a process's start time (/proc/<pid>/stat field 22): clock ticks since boot. */
export function ticksNow(): number {
  return Math.floor(Number.parseFloat(readFileSync('/proc/uptime', 'utf8').split(' ')[0] ?? '0') * CLOCK_TICKS_PER_S);
}

/** sysconf(_SC_CLK_TCK): 100 on every Linux architecture Node runs on. */
const CLOCK_TICKS_PER_S = 100;

export function startTicks(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const v = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
    return Number.isFinite(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

export interface Remnants {
  /** The cluster's id: in every namespace name, path and cgroup it creates. */
  readonly id: string;
  /** `ip netns` names to look for under /run/netns. */
  readonly netnsNames: readonly string[];
  /** Inodes of the cluster's network and mount namespaces. */
  readonly nsInodes: ReadonlySet<number>;
  /**
   * When teardown began, in ticksNow() units. A freed namespace's inode number is soon given to a
   * new namespace (another run's container, say), so a process in a namespace with one of our
   * inode numbers is ours only if it started before our teardown did: until then our namespace
   * existed and held the number.
   */
  readonly since: number;
  /** Paths that must not exist and under which nothing may be mounted or run. */
  readonly paths: readonly string[];
  readonly cgroupDirs: readonly string[];
  readonly pids: readonly number[];
}

/**
 * Everything of `r` still present, described for a failure message: processes (ours by pid, by
 * namespace, or naming one of the paths), namespaces still held open by a process or bind-mounted
 * in any mount namespace (either keeps the namespace, and so its interfaces, alive), mounts of or
 * under the paths in any mount namespace, the paths, cgroup directories.
 */
export function remnants(r: Remnants): string[] {
  const out: string[] = [];
  const ours = (text: string): boolean => text.includes(r.id) || r.paths.some((dir) => text.includes(dir));
  for (const name of r.netnsNames) {
    if (nsInode(`/run/netns/${name}`) !== undefined) out.push(`netns ${name} still listed`);
  }
  const old = (pid: number): boolean => (startTicks(pid) ?? Number.POSITIVE_INFINITY) <= r.since;
  for (const pid of r.pids) if (isAlive(pid) && old(pid)) out.push(`process ${pid} still running`);
  const seenMntNs = new Set<number>();
  for (const p of listProcesses()) {
    if (p.pid === process.pid) continue;
    if (old(p.pid)) {
      for (const kind of ['net', 'mnt'] as const) {
        const ino = procNsInode(p.pid, kind);
        if (ino !== undefined && r.nsInodes.has(ino)) out.push(`process ${p.pid} (${p.comm}) in our ${kind} namespace ${ino}`);
      }
      try {
        for (const fd of readdirSync(`/proc/${p.pid}/fd`)) {
          const m = /^(?:net|mnt):\[(\d+)\]$/.exec(readlinkSync(`/proc/${p.pid}/fd/${fd}`));
          if (m?.[1] !== undefined && r.nsInodes.has(Number(m[1]))) out.push(`process ${p.pid} (${p.comm}) holds our namespace ${m[1]} open`);
        }
      } catch {
        // exited, or no access
      }
    }
    try {
      const cmdline = readFileSync(`/proc/${p.pid}/cmdline`, 'utf8').replaceAll('\0', ' ').trim();
      if (ours(cmdline)) out.push(`process ${p.pid} (${p.comm}): ${cmdline}`);
    } catch {
      continue;
    }
    // Each mount namespace once. Bind mounts show their source in the "root" field: a host's
    // /run is `<cluster dir>/<host>/run`, a copy of one of our namespace files `/run/netns/<id>-…`.
    const mnt = procNsInode(p.pid, 'mnt');
    if (mnt === undefined || seenMntNs.has(mnt)) continue;
    seenMntNs.add(mnt);
    let info: string;
    try {
      info = readFileSync(`/proc/${p.pid}/mountinfo`, 'utf8');
    } catch {
      continue;
    }
    for (const line of info.split('\n')) {
      const fields = line.split(' ');
      const root = decodeMountPath(fields[3] ?? '');
      const point = decodeMountPath(fields[4] ?? '');
      if (ours(root) || ours(point)) out.push(`mount ${root} on ${point} (mount namespace of ${p.pid} ${p.comm})`);
    }
  }
  for (const dir of r.paths) if (nsInode(dir) !== undefined) out.push(`${dir} still exists`);
  for (const dir of r.cgroupDirs) if (nsInode(dir) !== undefined) out.push(`cgroup ${dir} still exists`);
  return out;
}
