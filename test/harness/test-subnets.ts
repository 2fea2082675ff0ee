// IPv4 pools for tests that run plugins in this machine's root network namespace. Their routes
// (/32s to veths, block blackholes) share one routing table, so two test files running at once,
// or two runs on the machine, must never pick the same /24: a random pick alone collided (1 in 256
// per pair, seen as "route add ...: File exists"). A pick is reserved by creating a lock file
// (exclusive create) named after it; a lock whose process is gone is taken over, and a /24 that
// is routed right now is skipped whoever holds it.
import { randomInt } from 'node:crypto';
import { mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../../dataplane/exec';

const LOCK_DIR = '/run/calico-test-subnets';
/** 198.18.0.0/15 (RFC 2544 benchmarking), never routed beyond this machine: its /24s but the
 * last, 198.19.255.0/24, where tests put host addresses. */
const SPACE = 511;
const held = new Set<string>();

process.on('exit', () => {
  for (const lock of held) {
    try {
      unlinkSync(lock);
    } catch {
      // already gone
    }
  }
});

function subnetOf(index: number): string {
  return `198.${18 + (index >> 8)}.${index & 255}.0/24`;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function tryLock(index: number): boolean {
  const lock = join(LOCK_DIR, String(index));
  try {
    writeFileSync(lock, String(process.pid), { flag: 'wx' });
  } catch {
    let owner = NaN;
    try {
      owner = Number(readFileSync(lock, 'utf8'));
    } catch {
      return false;
    }
    if (Number.isInteger(owner) && alive(owner)) return false;
    // Its process is gone: take it over (a racing taker loses on the write below).
    try {
      unlinkSync(lock);
      writeFileSync(lock, String(process.pid), { flag: 'wx' });
    } catch {
      return false;
    }
  }
  held.add(lock);
  return true;
}

async function routedPrefixes(): Promise<Set<string>> {
  const { stdout } = await run('ip', ['-j', '-4', 'route', 'show', 'table', 'all'], 'list routes');
  const prefixes = new Set<string>();
  for (const r of JSON.parse(stdout || '[]') as { dst?: string }[]) {
    const m = /^198\.(18|19)\.(\d+)\./.exec(r.dst ?? '');
    if (m !== null) prefixes.add(`198.${m[1]}.${m[2]}.0/24`);
  }
  return prefixes;
}

/** `count` consecutive /24s (e.g. two pools side by side), reserved for this process. */
export async function reserveTestSubnets(count = 1): Promise<string[]> {
  mkdirSync(LOCK_DIR, { recursive: true });
  const routed = await routedPrefixes();
  for (let attempt = 0; attempt < 200; attempt++) {
    const first = randomInt(0, SPACE - count + 1);
    const picks = Array.from({ length: count }, (_, i) => first + i);
    if (picks.some((i) => routed.has(subnetOf(i)))) continue;
    const locked: number[] = [];
    for (const i of picks) {
      if (!tryLock(i)) break;
      locked.push(i);
    }
    if (locked.length === count) return picks.map(subnetOf);
    for (const i of locked) releaseLock(i);
  }
  throw new Error('no free /24 in 198.18.0.0/15 for a test pool');
}

function releaseLock(index: number): void {
  const lock = join(LOCK_DIR, String(index));
  held.delete(lock);
  try {
    unlinkSync(lock);
  } catch {
    // already gone
  }
}

/** One /24 for a test pool. */
export async function reserveTestSubnet(): Promise<string> {
  const [subnet] = await reserveTestSubnets(1);
  if (subnet === undefined) throw new Error('unreachable');
  return subnet;
}
