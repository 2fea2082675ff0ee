// RestoreSession against the real iptables-restore (nf_tables), in throwaway namespaces: batches
// land in the kernel before apply() resolves, one process serves many batches, a failed line is
// reported as a fresh tool would (line counted in the batch) and commits nothing of its table,
// and changes made by another process between batches do not mislead the tool's cache.

import test from 'ava';
import { spawn } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CommandError } from '../../dataplane/exec.js';
import { netnsPathOf } from '../../dataplane/names.js';
import { RestoreSession } from '../../dataplane/restore-session.js';
import { execInNetns, netnsRegistry } from '../harness/netns.js';

const TIMEOUT_MS = 20_000;

async function chain(ns: string, name: string, family: 4 | 6 = 4): Promise<string[]> {
  const { stdout } = await execInNetns(ns, family === 4 ? 'iptables' : 'ip6tables', ['-w', '-S', name]);
  return stdout.split('\n').filter((l) => l.startsWith('-A '));
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function chains(ns: string): Promise<string[]> {
  const { stdout } = await execInNetns(ns, 'iptables', ['-w', '-S']);
  return stdout.split('\n').filter((l) => l.startsWith('-N '));
}

test('batches are in the kernel when apply resolves, all through one process', async (t) => {
  const ns = await netnsRegistry(t).create('rss');
  const s = new RestoreSession('iptables-restore', netnsPathOf(ns));
  t.teardown(() => s.close());
  await s.apply('*filter\n:rs-a - [0:0]\n-A rs-a -s 10.0.0.1/32 -j RETURN\nCOMMIT\n', 'first', TIMEOUT_MS);
  t.deepEqual(await chain(ns, 'rs-a'), ['-A rs-a -s 10.0.0.1/32 -j RETURN']);
  const pid = s.pid;
  t.truthy(pid);
  for (let i = 2; i <= 5; i++) await s.apply(`*filter\n-A rs-a -s 10.0.0.${i}/32 -j RETURN\nCOMMIT\n`, `batch ${i}`, TIMEOUT_MS);
  t.is(s.pid, pid);
  t.is((await chain(ns, 'rs-a')).length, 5);
  // Two tables in one batch: both committed before it resolves.
  await s.apply('*filter\n-F rs-a\nCOMMIT\n*nat\n:rs-n - [0:0]\n-A rs-n -j RETURN\nCOMMIT\n', 'two tables', TIMEOUT_MS);
  t.deepEqual(await chain(ns, 'rs-a'), []);
  const { stdout } = await execInNetns(ns, 'iptables', ['-w', '-t', 'nat', '-S', 'rs-n']);
  t.true(stdout.includes('-A rs-n -j RETURN'));

  await s.close();
  t.is(s.pid, undefined);
  t.false(alive(pid ?? 0), 'the tool exited at close');
});

test('a failed line fails the batch with its own line number, commits nothing of it, and the next batch gets a new tool', async (t) => {
  const ns = await netnsRegistry(t).create('rss');
  const s = new RestoreSession('ip6tables-restore', netnsPathOf(ns));
  t.teardown(() => s.close());
  // Lines before the failure move the tool's own count on: the error must still say line 3.
  await s.apply('*filter\n:rs-b - [0:0]\n-A rs-b -s fd00::1/128 -j RETURN\nCOMMIT\n', 'setup', TIMEOUT_MS);
  const pid = s.pid;
  const err = await t.throwsAsync(
    s.apply('*filter\n-A rs-b -s fd00::2/128 -j RETURN\n-A rs-missing -j DROP\nCOMMIT\n', 'write IPv6 policy chains', TIMEOUT_MS),
    { instanceOf: CommandError },
  );
  t.regex(err?.message ?? '', /^write IPv6 policy chains: .*line 3 failed/);
  t.regex(err?.stderr ?? '', /line 3 failed/);
  t.deepEqual(await chain(ns, 'rs-b', 6), ['-A rs-b -s fd00::1/128 -j RETURN'], 'nothing of the failed table is in');

  await s.apply('*filter\n-A rs-b -s fd00::3/128 -j RETURN\nCOMMIT\n', 'after', TIMEOUT_MS);
  t.not(s.pid, pid);
  t.deepEqual(await chain(ns, 'rs-b', 6), ['-A rs-b -s fd00::1/128 -j RETURN', '-A rs-b -s fd00::3/128 -j RETURN']);
});

test('changes by another process between batches: positions, deletions and new chains are right', async (t) => {
  const ns = await netnsRegistry(t).create('rss');
  const s = new RestoreSession('iptables-restore', netnsPathOf(ns));
  t.teardown(() => s.close());
  await s.apply('*filter\n:rs-d - [0:0]\n-A rs-d -s 10.1.0.1/32 -j RETURN\n-A rs-d -s 10.1.0.3/32 -j RETURN\nCOMMIT\n', 'setup', TIMEOUT_MS);
  // The tool's cache now holds rs-d; someone else inserts at the top and makes a chain.
  await execInNetns(ns, 'iptables', ['-w', '-I', 'rs-d', '1', '-s', '10.9.9.9/32', '-j', 'RETURN']);
  await execInNetns(ns, 'iptables', ['-w', '-N', 'rs-other']);
  await s.apply(
    '*filter\n-I rs-d 2 -s 10.1.0.2/32 -j RETURN\n-D rs-d -s 10.1.0.3/32 -j RETURN\n-A rs-d -s 10.1.0.4/32 -j rs-other\nCOMMIT\n',
    'after a change',
    TIMEOUT_MS,
  );
  t.deepEqual(await chain(ns, 'rs-d'), [
    '-A rs-d -s 10.9.9.9/32 -j RETURN',
    '-A rs-d -s 10.1.0.2/32 -j RETURN',
    '-A rs-d -s 10.1.0.1/32 -j RETURN',
    '-A rs-d -s 10.1.0.4/32 -j rs-other',
  ]);
  // Someone else deletes a chain the tool saw: a batch using it fails as it should.
  await s.apply('*filter\n:rs-gone - [0:0]\nCOMMIT\n', 'make', TIMEOUT_MS);
  await execInNetns(ns, 'iptables', ['-w', '-X', 'rs-gone']);
  await t.throwsAsync(s.apply('*filter\n-A rs-gone -j DROP\nCOMMIT\n', 'use', TIMEOUT_MS), { message: /line 2 failed/ });
  t.false((await chains(ns)).includes('-N rs-gone'));
});

test('an idle session does not keep its process alive, and the tool exits with it', async (t) => {
  const ns = await netnsRegistry(t).create('rss');
  // A process that applies one batch and never closes the session must still end by itself.
  const script = [
    `const { RestoreSession } = require(${JSON.stringify(join(__dirname, '../../dataplane/restore-session.js'))});`,
    `const s = new RestoreSession('iptables-restore', ${JSON.stringify(netnsPathOf(ns))});`,
    `s.apply('*filter\\n:rs-idle - [0:0]\\nCOMMIT\\n', 'idle', 20000).then(() => console.log(s.pid));`,
  ].join('\n');
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number | null>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error('the process did not exit by itself'));
    }, TIMEOUT_MS);
    child.on('exit', (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  t.is(code, 0);
  t.true((await chains(ns)).includes('-N rs-idle'));
  const toolPid = Number(out.trim());
  t.true(toolPid > 0);
  // Its stdin closed with its parent: it reads end-of-file and exits.
  let running = true;
  for (let i = 0; i < 100 && running; i++) {
    running = alive(toolPid);
    if (running) await new Promise((r) => setTimeout(r, 50));
  }
  t.false(running, 'the tool exited');
});

// Serial (ava runs these before the others): they point PATH at a stand-in for a while.
test.serial('a tool that never answers is killed at the timeout, one that is missing is named; the next batch starts the real tool', async (t) => {
  const ns = await netnsRegistry(t).create('rss');
  const dir = await mkdtemp(join(tmpdir(), 'calico-restore-'));
  const path = process.env['PATH'];
  t.teardown(async () => {
    process.env['PATH'] = path;
    await rm(dir, { recursive: true, force: true });
  });
  const s = new RestoreSession('iptables-restore', netnsPathOf(ns));
  t.teardown(() => s.close());

  // nsenter is found first in /usr/bin, then the stand-in before the real tool.
  await writeFile(join(dir, 'iptables-restore'), '#!/bin/sh\nexec sleep 600\n');
  await chmod(join(dir, 'iptables-restore'), 0o755);
  process.env['PATH'] = `${dir}:${path ?? ''}`;
  const started = Date.now();
  await t.throwsAsync(s.apply('*filter\n:rs-hang - [0:0]\nCOMMIT\n', 'hang', 500), { instanceOf: CommandError, message: /^hang: iptables-restore did not finish within 500 ms/ });
  t.true(Date.now() - started < 5_000);
  t.is(s.pid, undefined);

  await rm(join(dir, 'iptables-restore'));
  process.env['PATH'] = dir; // no nsenter, no tool
  await t.throwsAsync(s.apply('*filter\n:rs-none - [0:0]\nCOMMIT\n', 'missing', TIMEOUT_MS), { instanceOf: CommandError, message: /not found/ });

  process.env['PATH'] = path;
  await s.apply('*filter\n:rs-back - [0:0]\nCOMMIT\n', 'back', TIMEOUT_MS);
  t.true((await chains(ns)).includes('-N rs-back'));
  t.false((await chains(ns)).includes('-N rs-hang'));
});
