// Clusters of test processes that died without cleaning up. A SIGKILLed (or SIGTERMed: no 'exit'
// event then) test process takes its holders, dockerds, plugins and etcd with it (setpriv
// --pdeathsig), but not what those had started as daemons: containerd shims and the containers
// under them live on, and with them the namespaces, cgroups and directories. Each cluster's
// directory names its owner (pid and start time); startCluster() first reaps every cluster whose
// owner is gone. Only names carrying a dead owner's cluster id are touched.
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { cgroupMounts, isAlive, killMembers, nsInode, removeCgroupTreesWithin, startTicks } from './procs.js';

const execFileP = promisify(execFile);
const OWNER_FILE = 'owner';
const ETCD_DIR_FILE = 'etcd-dir';
/** A directory without an owner file is being created right now (the file is written right after
 * mkdir), unless it is older than this. */
const UNOWNED_GRACE_MS = 10_000;
const SWEEP_TIMEOUT_MS = 10_000;
export const CLUSTER_ID_RE = /^mh-[0-9a-f]{6}$/;

export function writeOwner(dir: string): void {
  writeFileSync(join(dir, OWNER_FILE), `${process.pid} ${startTicks(process.pid) ?? 0}\n`);
}

export function recordEtcdDir(dir: string, etcdDir: string): void {
  writeFileSync(join(dir, ETCD_DIR_FILE), `${etcdDir}\n`);
}

/** Whether the process named in `dir`'s owner file (writeOwner) still runs; a directory without
 * one counts as being created for UNOWNED_GRACE_MS. Shared with the single-host reapers. */
export function ownerAlive(dir: string): boolean {
  let text: string;
  try {
    text = readFileSync(join(dir, OWNER_FILE), 'utf8');
  } catch {
    try {
      return Date.now() - statSync(dir).mtimeMs < UNOWNED_GRACE_MS;
    } catch {
      return true; // gone meanwhile: nothing to reap
    }
  }
  const [pid, ticks] = text.trim().split(' ').map(Number);
  return pid !== undefined && isAlive(pid) && startTicks(pid) === ticks;
}

/** Reaps every cluster under `base` whose owner process is gone; resolves with their ids. */
export async function reapOrphans(base: string): Promise<string[]> {
  let names: string[];
  try {
    names = readdirSync(base).filter((n) => CLUSTER_ID_RE.test(n));
  } catch {
    return [];
  }
  const orphans = names.filter((id) => !ownerAlive(join(base, id)));
  await Promise.all(orphans.map((id) => reap(base, id)));
  return orphans;
}

async function reap(base: string, id: string): Promise<void> {
  const dir = join(base, id);
  const prefix = `${id}-`;
  let netnsNames: string[] = [];
  try {
    netnsNames = readdirSync('/run/netns').filter((n) => n.startsWith(prefix));
  } catch {
    // no /run/netns
  }
  const cgroupDirs = cgroupMounts().flatMap((m) => {
    try {
      return readdirSync(m).filter((n) => n.startsWith(prefix)).map((n) => join(m, n));
    } catch {
      return [];
    }
  });
  // The namespaces are still bound under /run/netns, so their inodes are still theirs.
  const netInodes = new Set(netnsNames.map((n) => nsInode(`/run/netns/${n}`)).filter((i): i is number => i !== undefined));
  await killMembers({ netInodes, mntInodes: new Set(), cgroupDirs }, SWEEP_TIMEOUT_MS);
  await removeCgroupTreesWithin(cgroupDirs, SWEEP_TIMEOUT_MS);
  await Promise.all(netnsNames.map((n) => execFileP('ip', ['netns', 'del', n]).catch(() => undefined)));
  try {
    const etcdDir = readFileSync(join(dir, ETCD_DIR_FILE), 'utf8').trim();
    if (/\/calico-test-etcd-[^/]+$/.test(etcdDir)) await rm(etcdDir, { recursive: true, force: true });
  } catch {
    // etcd never started
  }
  await rm(dir, { recursive: true, force: true });
}

/** What is left anywhere of cluster `id` (found by name alone): namespaces, its directory,
 * cgroups, processes in those cgroups, mounts naming it in any mount namespace. */
export function leftoversOf(base: string, id: string): string[] {
  const out: string[] = [];
  const prefix = `${id}-`;
  try {
    for (const n of readdirSync('/run/netns')) if (n.startsWith(prefix)) out.push(`netns ${n}`);
  } catch {
    // no /run/netns
  }
  if (nsInode(join(base, id)) !== undefined) out.push(`${join(base, id)} exists`);
  for (const m of cgroupMounts()) {
    try {
      for (const n of readdirSync(m)) if (n.startsWith(prefix)) out.push(`cgroup ${join(m, n)}`);
    } catch {
      // unreadable hierarchy
    }
  }
  const mntSeen = new Set<string>();
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      // A zombie (killed, not yet reaped by its new parent, init) still names its cgroup.
      if (isAlive(Number(pid)) && readFileSync(`/proc/${pid}/cgroup`, 'utf8').includes(`/${prefix}`)) out.push(`process ${pid} in a cgroup of ${id}`);
      const mnt = readlinkSync(`/proc/${pid}/ns/mnt`);
      if (mntSeen.has(mnt)) continue;
      mntSeen.add(mnt);
      for (const line of readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n')) {
        if (line.includes(id)) out.push(`mount in the mount namespace of ${pid}: ${line}`);
      }
    } catch {
      // exited
    }
  }
  return out;
}
