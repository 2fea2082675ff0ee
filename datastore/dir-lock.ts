// Exclusive ownership of a directory between processes. Node has no flock(), so the lock is a file
// created with O_EXCL holding the owner's pid and kernel start time; the start time tells a dead
// owner from an unrelated process that later got the same pid.
import { open, readFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { errno, unlinkIfPresent } from './fs-util';
import { StoreLockedError } from './store-errors';

export interface DirLock {
  readonly path: string;
  release(): Promise<void>;
}

interface Owner {
  readonly pid: number;
  readonly start?: string;
}

const LOCK_FILE = 'store.lock';
const TAKEOVER_SUFFIX = '.takeover';
const ATTEMPTS = 50;
const RETRY_DELAY_MS = 20;
/** An owner writes its identity right after creating the file; give it that long. */
const UNWRITTEN_GRACE_MS = 200;

export async function acquireDirLock(dir: string): Promise<DirLock> {
  const path = join(dir, LOCK_FILE);
  const me: Owner = { pid: process.pid, ...optionalStart(process.pid) };
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    if (await tryCreate(path, me)) return lockHandle(path, me);
    const holder = await readOwner(path);
    if (holder === 'absent') continue;
    if (holder !== 'unreadable' && isAlive(holder)) throw new StoreLockedError(dir, holder.pid, path);
    // Two processes may both find the lock stale; only one at a time may replace it, or the
    // second would unlink the lock the first has just created.
    if (await withTakeoverGuard(path, async () => replaceIfStale(path, me))) return lockHandle(path, me);
    await sleep(RETRY_DELAY_MS);
  }
  const holder = await readOwner(path);
  throw new StoreLockedError(dir, typeof holder === 'object' ? holder.pid : 0, path);
}

async function replaceIfStale(path: string, me: Owner): Promise<boolean> {
  const holder = await readOwner(path);
  if (holder === 'unreadable') await sleep(UNWRITTEN_GRACE_MS);
  const again = holder === 'unreadable' ? await readOwner(path) : holder;
  if (typeof again === 'object' && isAlive(again)) return false;
  if (again !== 'absent') await unlinkIfPresent(path);
  return tryCreate(path, me);
}

async function withTakeoverGuard(path: string, fn: () => Promise<boolean>): Promise<boolean> {
  const guard = path + TAKEOVER_SUFFIX;
  // With the start time, a guard left by a dead process whose pid was reused is still seen as stale.
  const me: Owner = { pid: process.pid, ...optionalStart(process.pid) };
  if (!(await tryCreate(guard, me))) {
    const holder = await readOwner(guard);
    // A guard is held for microseconds; one left behind belongs to a process that died holding it.
    if (typeof holder === 'object' && !isAlive(holder)) await unlinkIfPresent(guard);
    return false;
  }
  try {
    return await fn();
  } finally {
    await unlinkIfPresent(guard);
  }
}

function lockHandle(path: string, me: Owner): DirLock {
  let released = false;
  return {
    path,
    async release() {
      if (released) return;
      released = true;
      const holder = await readOwner(path);
      if (typeof holder === 'object' && holder.pid === me.pid && holder.start === me.start) {
        await unlinkIfPresent(path);
      }
    },
  };
}

async function tryCreate(path: string, owner: Owner): Promise<boolean> {
  let fh;
  try {
    fh = await open(path, 'wx', 0o600);
  } catch (err) {
    if (errno(err) === 'EEXIST') return false;
    throw err;
  }
  try {
    await fh.writeFile(JSON.stringify(owner) + '\n');
  } catch (err) {
    // A lock file without its owner's identity would look held for the grace period, then stale.
    await fh.close().catch(() => undefined);
    await unlinkIfPresent(path);
    throw err;
  }
  try {
    await fh.close();
  } catch (err) {
    await unlinkIfPresent(path);
    throw err;
  }
  return true;
}

async function readOwner(path: string): Promise<Owner | 'absent' | 'unreadable'> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if (errno(err) === 'ENOENT') return 'absent';
    throw err;
  }
  try {
    const parsed: unknown = JSON.parse(text);
    if (typeof parsed !== 'object' || parsed === null) return 'unreadable';
    const pid: unknown = Reflect.get(parsed, 'pid');
    const start: unknown = Reflect.get(parsed, 'start');
    if (typeof pid !== 'number' || !Number.isInteger(pid) || pid <= 0) return 'unreadable';
    return typeof start === 'string' ? { pid, start } : { pid };
  } catch {
    return 'unreadable';
  }
}

function isAlive(owner: Owner): boolean {
  try {
    process.kill(owner.pid, 0);
  } catch (err) {
    if (errno(err) !== 'EPERM') return false;
  }
  const start = processStartTime(owner.pid);
  return owner.start === undefined || start === undefined || start === owner.start;
}

function optionalStart(pid: number): { start?: string } {
  const start = processStartTime(pid);
  return start === undefined ? {} : { start };
}

/** Field 22 of /proc/<pid>/stat; the command name before it may contain spaces and ')'. */
function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
