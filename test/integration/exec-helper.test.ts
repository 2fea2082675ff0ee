// Commands started through the exec helper (the daemon's way) give exactly what starting them
// directly gives: output, exit status, stderr, timeouts, missing tools, output limits; they run
// concurrently and each gets its own answer; a helper that dies fails what it had in flight, and
// commands then start directly.
import test from 'ava';
import { CommandError, run, spawnCount, startCommandsNatively, startCommandsThrough, type ExecOptions } from '../../dataplane/exec';
import { ExecHelper } from '../../dataplane/exec-helper';
import { ipIn, netnsRegistry } from '../harness/netns';

interface Outcome {
  stdout?: string;
  error?: { message: string; stderr: string; exitCode: number | null };
}

async function outcome(file: string, args: string[], options: ExecOptions = {}): Promise<Outcome> {
  try {
    return { stdout: (await run(file, args, 'test op', options)).stdout };
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
    return { error: { message: err.message, stderr: err.stderr, exitCode: err.exitCode } };
  }
}

const big = 'x'.repeat(1 << 20);
const cases: [string, string, string[], ExecOptions][] = [
  ['exits 0', 'true', [], {}],
  ['stdin to stdout, 1 MiB', 'cat', [], { input: big }],
  ['exit status 1', 'false', [], {}],
  ['stderr and status 2', 'ls', ['/nonexistent-calico-test'], {}],
  ['not installed', 'calico-no-such-tool', [], {}],
  ['timeout', 'sleep', ['5'], { timeoutMs: 200 }],
  ['output over the limit', 'cat', [], { input: 'y'.repeat(2000), maxBufferBytes: 100 }],
];

async function withHelper<T>(f: (h: ExecHelper) => Promise<T>, onExit?: (why: string) => void): Promise<T> {
  const h = await ExecHelper.start(onExit);
  startCommandsThrough(h);
  try {
    return await f(h);
  } finally {
    startCommandsThrough(undefined);
    await h.close();
  }
}

test.serial('through the helper, every outcome is the one a direct start gives', async (t) => {
  t.timeout(60_000);
  const direct: Outcome[] = [];
  for (const [, file, args, options] of cases) direct.push(await outcome(file, args, options));
  const before = spawnCount();
  const helped = await withHelper(async () => {
    const out: Outcome[] = [];
    for (const [, file, args, options] of cases) out.push(await outcome(file, args, options));
    return out;
  });
  t.is(spawnCount() - before, cases.length, 'each command is counted once');
  for (const [i, [name]] of cases.entries()) t.deepEqual(helped[i], direct[i], name);
  // And the outcomes are the expected ones, not merely equal.
  t.is(helped[1]?.stdout, big);
  t.is(helped[2]?.error?.exitCode, 1);
  t.regex(helped[3]?.error?.stderr ?? '', /nonexistent-calico-test/);
  t.regex(helped[4]?.error?.message ?? '', /not found/);
  t.regex(helped[5]?.error?.message ?? '', /did not finish within 200 ms/);
  t.regex(helped[6]?.error?.message ?? '', /more output than allowed/);
});

test.serial('started natively (posix_spawn, no fork), every outcome is the one a direct start gives', async (t) => {
  t.timeout(60_000);
  const direct: Outcome[] = [];
  for (const [, file, args, options] of cases) direct.push(await outcome(file, args, options));
  t.true(startCommandsNatively(true), 'the native addon is built');
  const before = spawnCount();
  const native: Outcome[] = [];
  try {
    for (const [, file, args, options] of cases) native.push(await outcome(file, args, options));
  } finally {
    startCommandsNatively(false);
  }
  t.is(spawnCount() - before, cases.length, 'each command is counted once');
  for (const [i, [name]] of cases.entries()) t.deepEqual(native[i], direct[i], name);
  t.is(native[1]?.stdout, big);
  t.is(native[2]?.error?.exitCode, 1);
  t.regex(native[5]?.error?.message ?? '', /did not finish within 200 ms/);
  t.regex(native[6]?.error?.message ?? '', /more output than allowed/);
});

test.serial('started natively: concurrent commands each get their own answer; the tool starts with no signal ignored or blocked', async (t) => {
  t.true(startCommandsNatively(true));
  try {
    const answers = await Promise.all(Array.from({ length: 30 }, (_, i) => run('cat', [], 'cat', { input: `answer ${i}\n` })));
    t.deepEqual(answers.map((a) => a.stdout), Array.from({ length: 30 }, (_, i) => `answer ${i}\n`));
    // Node ignores SIGPIPE and SIGXFSZ; a tool must not inherit that, nor a blocked signal. (Only
    // the standard signals 1-31: glibc's posix_spawn ignores its own internal real-time signals
    // in the child, and the program's glibc sets them up again.)
    const { stdout } = await run('grep', ['-E', '^Sig(Ign|Blk):', '/proc/self/status'], 'signals');
    const masks = Object.fromEntries(stdout.trim().split('\n').map((l) => l.split(/:\s+/)).map(([k, v]) => [k, BigInt(`0x${v}`) & 0x7fffffffn]));
    t.deepEqual(masks, { SigBlk: 0n, SigIgn: 0n });
  } finally {
    startCommandsNatively(false);
  }
});

test.serial('netnsPath: the tool runs in that namespace, entered natively or through nsenter alike; a missing or non-namespace path fails clearly', async (t) => {
  const reg = netnsRegistry(t);
  const ns = await reg.create('cxn');
  await ipIn(ns, ['link', 'add', 'cxn0', 'type', 'veth', 'peer', 'name', 'cxn1']);
  const links = async (): Promise<string[]> =>
    (JSON.parse((await run('ip', ['-j', 'link', 'show'], 'links', { netnsPath: `/run/netns/${ns}` })).stdout) as Array<{ ifname: string }>).map((l) => l.ifname).sort();
  for (const natively of [true, false]) {
    t.is(startCommandsNatively(natively), natively);
    try {
      t.deepEqual(await links(), ['cxn0', 'cxn1', 'lo'], natively ? 'native' : 'nsenter');
      await t.throwsAsync(run('true', [], 'enter', { netnsPath: `/run/netns/${ns}-missing` }), { instanceOf: CommandError, message: /^enter: .*No such file or directory/ });
      await t.throwsAsync(run('true', [], 'enter', { netnsPath: '/etc/hostname' }), { instanceOf: CommandError, message: /^enter: .*(Invalid argument)/ });
      await t.throwsAsync(run('true', [], 'enter', { netnsPath: 'relative/path' }), { message: /invalid network namespace path/ });
    } finally {
      startCommandsNatively(false);
    }
  }
});

test.serial('concurrent commands each get their own answer', async (t) => {
  const answers = await withHelper(() => Promise.all(Array.from({ length: 30 }, (_, i) => run('cat', [], 'cat', { input: `answer ${i}\n` }))));
  t.deepEqual(answers.map((a) => a.stdout), Array.from({ length: 30 }, (_, i) => `answer ${i}\n`));
});

test.serial('a helper that dies fails what it had in flight, says so once, and commands start directly after', async (t) => {
  const told: string[] = [];
  await withHelper(async (h) => {
    const inFlight = run('sleep', ['3'], 'sleep in the helper');
    const pid = h.pid ?? 0;
    await new Promise((resolve) => setTimeout(resolve, 200));
    process.kill(pid, 'SIGKILL');
    const err = await t.throwsAsync(inFlight, { instanceOf: CommandError });
    t.regex(err?.message ?? '', /sleep in the helper: exec helper \d+ exited \(SIGKILL\) before the command's outcome was known/);
    t.false(h.running);
    t.is((await run('echo', ['direct'], 'echo')).stdout, 'direct\n');
  }, (why) => told.push(why));
  t.is(told.length, 1);
});

test.serial('close stops the helper process', async (t) => {
  const h = await ExecHelper.start();
  const pid = h.pid ?? 0;
  t.notThrows(() => process.kill(pid, 0));
  await h.close();
  t.false(h.running);
  t.throws(() => process.kill(pid, 0), { code: 'ESRCH' });
});
