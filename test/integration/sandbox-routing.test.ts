// The sandbox routing dataplane (rules and routes inside a workload's namespace) against a real
// kernel, in throwaway namespaces entered by path (/run/netns/<name>), as Docker's SandboxKey is.
// The "workload" has two interfaces (veth pairs, both ends inside: only the addresses matter),
// each with an IPv4 and an IPv6 address, and what Docker and an operator put there: a default
// route and a static route of other protocols, a rule at another priority.
//
// Tests that count spawned processes (spawnCount is per process) are serial.
import test, { type ExecutionContext } from 'ava';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { spawnCount } from '../../dataplane/exec';
import { type SandboxPlan, type SandboxRoute, type SandboxRule, SandboxRoutingDataplane } from '../../dataplane/sandbox-routing';
import { InvalidRequestError } from '../../lib/errors';
import { createNetns, deleteNetns, ipIn } from '../harness/netns';

const PROTO = 201;
const GW0_V4 = '169.254.1.1';
const GW1_V4 = '169.254.1.2';
const GW0_V6 = 'fe80::ecee:eeff:feee:eeee';
const GW1_V6 = 'fe80::ecee:eeff:fe00:1';

interface Workload {
  readonly ns: string;
  readonly path: string;
}

/** A namespace with e0 (10.70.0.2, fd70::2) and e1 (10.71.0.2, fd71::2), Docker's default routes
 * through e0, and an operator's route and rules that are not ours. Deleted when the test ends. */
async function workload(t: ExecutionContext): Promise<Workload> {
  const ns = await createNetns('csbx');
  t.teardown(() => deleteNetns(ns));
  const ip = (...args: string[]) => ipIn(ns, args);
  for (const dev of ['e0', 'e1']) {
    await ip('link', 'add', dev, 'type', 'veth', 'peer', 'name', `${dev}p`);
    await ip('link', 'set', dev, 'up');
    await ip('link', 'set', `${dev}p`, 'up');
  }
  await ip('addr', 'add', '10.70.0.2/32', 'dev', 'e0');
  await ip('addr', 'add', '10.71.0.2/32', 'dev', 'e1');
  await ip('-6', 'addr', 'add', 'fd70::2/128', 'dev', 'e0', 'nodad');
  await ip('-6', 'addr', 'add', 'fd71::2/128', 'dev', 'e1', 'nodad');
  // Docker's (proto boot) ...
  await ip('route', 'add', GW0_V4, 'dev', 'e0', 'scope', 'link');
  await ip('route', 'add', 'default', 'via', GW0_V4, 'dev', 'e0');
  await ip('-6', 'route', 'add', 'default', 'via', GW0_V6, 'dev', 'e0');
  // ... and an operator's, in the main table and in one of "our" tables, plus rules elsewhere.
  await ip('route', 'add', '10.9.0.0/16', 'via', GW1_V4, 'dev', 'e1', 'onlink', 'proto', 'static');
  await ip('route', 'add', '10.8.0.0/16', 'via', GW1_V4, 'dev', 'e1', 'onlink', 'table', '101', 'proto', 'static');
  await ip('-6', 'route', 'add', 'fd09::/64', 'via', GW1_V6, 'dev', 'e1', 'proto', 'static');
  await ip('rule', 'add', 'from', '10.70.0.2/32', 'table', '200', 'priority', '200');
  await ip('-6', 'rule', 'add', 'from', 'fd70::2/128', 'table', '200', 'priority', '99');
  return { ns, path: `/run/netns/${ns}` };
}

interface RuleJson { priority?: number; src?: string; srclen?: number; table?: string }
interface RouteJson { type?: string; dst?: string; gateway?: string; dev?: string; prefsrc?: string; table?: string; protocol?: string }

async function json<T>(ns: string, args: string[]): Promise<T[]> {
  const { stdout } = await ipIn(ns, ['-j', ...args]);
  return stdout.trim() === '' ? [] : (JSON.parse(stdout) as T[]);
}

function routeText(family: 4 | 6, r: RouteJson): string {
  const type = r.type === undefined || r.type === 'unicast' ? '' : `${r.type} `;
  const via = r.gateway === undefined ? '' : ` via ${r.gateway}`;
  const dev = r.dev === undefined ? '' : ` dev ${r.dev}`;
  const src = r.prefsrc === undefined ? '' : ` src ${r.prefsrc}`;
  return `${family} ${r.table ?? 'main'} ${type}${r.dst ?? '?'}${via}${dev}${src}`;
}

/** Everything of ours in the namespace: rules at priority 100, routes with our protocol. */
async function ours(ns: string): Promise<string[]> {
  const out: string[] = [];
  for (const family of [4, 6] as const) {
    const full = family === 4 ? 32 : 128;
    for (const r of await json<RuleJson>(ns, [`-${family}`, 'rule', 'show'])) {
      if (r.priority === 100) out.push(`${family} rule from ${r.src ?? '?'}/${r.srclen ?? full} table ${r.table ?? '?'}`);
    }
    for (const r of await json<RouteJson>(ns, [`-${family}`, 'route', 'show', 'table', 'all', 'proto', String(PROTO)])) out.push(routeText(family, r));
  }
  return out.sort();
}

/** Everything that is not ours and not the kernel's own: Docker's and the operator's. */
async function foreign(ns: string): Promise<string[]> {
  const out: string[] = [];
  for (const family of [4, 6] as const) {
    for (const r of await json<RuleJson>(ns, [`-${family}`, 'rule', 'show'])) {
      if (![0, 100, 32766, 32767].includes(r.priority ?? -1)) out.push(`${family} rule ${r.priority ?? '?'} from ${r.src ?? '?'} table ${r.table ?? '?'}`);
    }
    for (const r of await json<RouteJson>(ns, [`-${family}`, 'route', 'show', 'table', 'all'])) {
      if (r.table === 'local' || r.protocol === 'kernel' || r.protocol === String(PROTO)) continue;
      out.push(`${routeText(family, r)} proto ${r.protocol ?? 'boot'}`);
    }
  }
  return out.sort();
}

const rule = (family: 4 | 6, from: string, table: number): SandboxRule => ({ family, from, table });
const tableDefault = (family: 4 | 6, table: number, via: string, deviceAddress: string): SandboxRoute => ({ family, table, dst: 'default', via, deviceAddress });
const member = (family: 4 | 6, dst: string, via: string, src: string): SandboxRoute => ({ family, table: 'main', dst, via, src, deviceAddress: src });

/** What the agent plans for a workload on two networks: network 0 on e0, network 1 on e1, each
 * with one other member. */
function planA(path: string): SandboxPlan {
  return {
    sandbox: path,
    rules: [rule(4, '10.70.0.2/32', 100), rule(4, '10.71.0.2/32', 101), rule(6, 'fd70::2/128', 100), rule(6, 'fd71::2/128', 101)],
    routes: [
      tableDefault(4, 100, GW0_V4, '10.70.0.2'),
      tableDefault(4, 101, GW1_V4, '10.71.0.2'),
      tableDefault(6, 100, GW0_V6, 'fd70::2'),
      tableDefault(6, 101, GW1_V6, 'fd71::2'),
      member(4, '10.70.0.9/32', GW0_V4, '10.70.0.2'),
      member(4, '10.71.0.9/32', GW1_V4, '10.71.0.2'),
      member(6, 'fd70::9/128', GW0_V6, 'fd70::2'),
      member(6, 'fd71::9/128', GW1_V6, 'fd71::2'),
    ],
  };
}

const EXPECTED_A = [
  '4 rule from 10.70.0.2/32 table 100',
  '4 rule from 10.71.0.2/32 table 101',
  '6 rule from fd70::2/128 table 100',
  '6 rule from fd71::2/128 table 101',
  `4 100 default via ${GW0_V4} dev e0`,
  `4 101 default via ${GW1_V4} dev e1`,
  `6 100 default via ${GW0_V6} dev e0`,
  `6 101 default via ${GW1_V6} dev e1`,
  `4 main 10.70.0.9 via ${GW0_V4} dev e0 src 10.70.0.2`,
  `4 main 10.71.0.9 via ${GW1_V4} dev e1 src 10.71.0.2`,
  `6 main fd70::9 via ${GW0_V6} dev e0 src fd70::2`,
  `6 main fd71::9 via ${GW1_V6} dev e1 src fd71::2`,
].sort();

function dataplane(warnings: string[] = []): SandboxRoutingDataplane {
  return new SandboxRoutingDataplane({ protocol: PROTO, warn: (m) => warnings.push(m) });
}

/** Applies and counts the processes the apply spawned (callers are serial tests). */
async function counted(dp: SandboxRoutingDataplane, plan: SandboxPlan): Promise<{ outcome: string; spawns: number }> {
  const before = spawnCount();
  const outcome = await dp.apply(plan);
  return { outcome, spawns: spawnCount() - before };
}

/** `ip monitor route rule` in the namespace: the routing changes the kernel actually made between
 * start() and stop(), ours only (marker routes in table 250 fence the window). */
class Monitor {
  private child: ChildProcess | undefined;
  private out = '';
  private marks = 0;

  constructor(private readonly ns: string, t: ExecutionContext) {
    t.teardown(() => {
      this.child?.kill();
    });
  }

  async start(): Promise<void> {
    const child = spawn('ip', ['-n', this.ns, 'monitor', 'route', 'rule'], { stdio: ['ignore', 'pipe', 'ignore'] });
    this.child = child;
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (chunk: string) => {
      this.out += chunk;
    });
    await this.mark();
    this.out = '';
  }

  /** Ends the window and returns the changes to our routes and rules in it. */
  async stop(): Promise<string[]> {
    await this.mark();
    this.child?.kill();
    this.child = undefined;
    return this.out
      .split('\n')
      .map((l) => l.trim().replace(/\s+/g, ' '))
      .filter((l) => / proto 201\b/.test(l) || /^(Deleted )?100:/.test(l))
      .sort();
  }

  /** Adds and deletes a marker route, and waits until the monitor has printed the deletion. */
  private async mark(): Promise<void> {
    const dst = `192.0.2.${++this.marks}`;
    const deadline = Date.now() + 5_000;
    await ipIn(this.ns, ['route', 'add', `${dst}/32`, 'dev', 'e0', 'table', '250']);
    await ipIn(this.ns, ['route', 'del', `${dst}/32`, 'dev', 'e0', 'table', '250']);
    while (!new RegExp(`^Deleted ${dst.replaceAll('.', '\\.')} `, 'm').test(this.out)) {
      if (Date.now() > deadline) throw new Error(`ip monitor in ${this.ns} did not report marker ${dst}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

test.serial('applies a plan exactly, both families; applying it again only reads', async (t) => {
  const w = await workload(t);
  const before = await foreign(w.ns);
  const dp = dataplane();
  t.deepEqual(await counted(dp, planA(w.path)), { outcome: 'done', spawns: 4 }, 'one read and one batch per family');
  t.deepEqual(await ours(w.ns), EXPECTED_A);
  t.deepEqual(await foreign(w.ns), before, "Docker's and the operator's routes and rules untouched");

  const monitor = new Monitor(w.ns, t);
  await monitor.start();
  t.deepEqual(await counted(dp, planA(w.path)), { outcome: 'done', spawns: 2 }, 'only the two reads');
  t.deepEqual(await monitor.stop(), [], 'the kernel saw no change');
  // A fresh dataplane (the daemon restarted) reads the kernel too: nothing to write.
  t.deepEqual(await counted(dataplane(), planA(w.path)), { outcome: 'done', spawns: 2 });
  t.deepEqual(await ours(w.ns), EXPECTED_A);
});

test.serial('a changed plan writes only the difference', async (t) => {
  const w = await workload(t);
  const before = await foreign(w.ns);
  const dp = dataplane();
  t.is(await dp.apply(planA(w.path)), 'done');

  // Network 1's IPv4 member 10.71.0.9 left and 10.71.0.10 joined; its gateway moved; the IPv6
  // member fd71::9 left, and network 0 lost IPv6 altogether.
  const a = planA(w.path);
  const changed: SandboxPlan = {
    sandbox: w.path,
    rules: a.rules.filter((r) => r.from !== 'fd70::2/128'),
    routes: [
      ...a.routes.filter((r) => r.dst !== '10.71.0.9/32' && r.dst !== 'fd71::9/128' && !(r.family === 6 && r.table === 100) && r.dst !== 'fd70::9/128' && !(r.family === 4 && r.table === 101)),
      tableDefault(4, 101, '169.254.1.3', '10.71.0.2'),
      member(4, '10.71.0.10/32', GW1_V4, '10.71.0.2'),
    ],
  };
  const monitor = new Monitor(w.ns, t);
  await monitor.start();
  t.deepEqual(await counted(dp, changed), { outcome: 'done', spawns: 4 });
  const events = await monitor.stop();
  t.deepEqual(events, [
    `10.71.0.10 via ${GW1_V4} dev e1 proto 201 src 10.71.0.2 onlink`,
    'Deleted 10.71.0.9 via 169.254.1.2 dev e1 proto 201 src 10.71.0.2 onlink',
    'Deleted 100: from fd70::2 lookup 100 proto 201',
    `Deleted default via ${GW0_V6} dev e0 table 100 proto 201 metric 1024 pref medium`,
    `Deleted fd70::9 via ${GW0_V6} dev e0 proto 201 src fd70::2 metric 1024 pref medium`,
    `Deleted fd71::9 via ${GW1_V6} dev e1 proto 201 src fd71::2 metric 1024 pref medium`,
    'default via 169.254.1.3 dev e1 table 101 proto 201 onlink',
  ].sort(), 'exactly the changes, nothing unchanged rewritten');
  t.deepEqual(await ours(w.ns), [
    '4 rule from 10.70.0.2/32 table 100',
    '4 rule from 10.71.0.2/32 table 101',
    '6 rule from fd71::2/128 table 101',
    `4 100 default via ${GW0_V4} dev e0`,
    '4 101 default via 169.254.1.3 dev e1',
    `6 101 default via ${GW1_V6} dev e1`,
    `4 main 10.70.0.9 via ${GW0_V4} dev e0 src 10.70.0.2`,
    `4 main 10.71.0.10 via ${GW1_V4} dev e1 src 10.71.0.2`,
  ].sort());
  t.deepEqual(await foreign(w.ns), before);

  // Only IPv4 changes now: one read per family, one batch for IPv4.
  t.deepEqual(await counted(dp, { ...changed, routes: changed.routes.filter((r) => r.dst !== '10.70.0.9/32') }), { outcome: 'done', spawns: 3 });
  t.false((await ours(w.ns)).some((l) => l.includes('10.70.0.9')));
});

test("removes strays of ours and repairs what was changed by hand; others' routes and rules stay", async (t) => {
  const w = await workload(t);
  const before = await foreign(w.ns);
  const dp = dataplane();
  t.is(await dp.apply(planA(w.path)), 'done');
  const ip = (...args: string[]) => ipIn(w.ns, args);
  const proto = ['proto', String(PROTO)];
  // Strays: ours by protocol or priority, in no plan.
  await ip('route', 'add', '10.79.0.0/24', 'via', GW0_V4, 'dev', 'e0', 'onlink', ...proto);
  await ip('route', 'add', 'blackhole', '10.78.0.0/24', ...proto);
  await ip('route', 'add', 'default', 'via', GW1_V4, 'dev', 'e1', 'onlink', 'table', '105', ...proto);
  await ip('route', 'add', '10.77.0.0/24', 'dev', 'e1', 'table', '101', ...proto);
  await ip('rule', 'add', 'from', '10.77.0.2/32', 'table', '107', 'priority', '100');
  await ip('rule', 'add', 'from', '10.70.0.0/24', 'table', '100', 'priority', '100');
  await ip('-6', 'route', 'add', 'fd79::/64', 'via', GW1_V6, 'dev', 'e1', ...proto);
  await ip('-6', 'route', 'add', 'unreachable', 'fd78::/64', ...proto);
  await ip('-6', 'rule', 'add', 'from', 'fd77::2/128', 'table', '107', 'priority', '100');
  // Changed by hand: a member route through the wrong interface, a table default removed.
  await ip('route', 'replace', '10.70.0.9/32', 'via', GW1_V4, 'dev', 'e1', 'onlink', 'src', '10.71.0.2', ...proto);
  await ip('-6', 'route', 'del', 'default', 'table', '101', ...proto);

  t.is(await dp.apply(planA(w.path)), 'done');
  t.deepEqual(await ours(w.ns), EXPECTED_A);
  t.deepEqual(await foreign(w.ns), before, "Docker's routes, the operator's route in table 101 and the rules at 99 and 200 stay");
});

test('a rule at our priority of a shape we never write is not ours: left alone, no stand-in for ours', async (t) => {
  const w = await workload(t);
  const ip = (...args: string[]) => ipIn(w.ns, args);
  // Someone else's, at priority 100: rules for all sources, by mark, by incoming interface, and
  // one with our source and table but a mark, which must not pass for our plain rule.
  await ip('rule', 'add', 'from', 'all', 'table', '300', 'priority', '100');
  await ip('rule', 'add', 'fwmark', '7', 'table', '301', 'priority', '100');
  await ip('-6', 'rule', 'add', 'iif', 'lo', 'table', '302', 'priority', '100');
  await ip('rule', 'add', 'from', '10.71.0.2/32', 'fwmark', '9', 'table', '101', 'priority', '100');
  const foreignAt100 = async (): Promise<string[]> => {
    const out: string[] = [];
    for (const family of [4, 6] as const) {
      for (const r of await json<RuleJson & Record<string, unknown>>(w.ns, [`-${family}`, 'rule', 'show'])) {
        if (r.priority === 100 && (r.src === 'all' || r.fwmark !== undefined)) out.push(JSON.stringify(r));
      }
    }
    return out.sort();
  };
  const before = await foreignAt100();
  t.is(before.length, 4);
  const warnings: string[] = [];
  const dp = dataplane(warnings);
  t.is(await dp.apply(planA(w.path)), 'done');
  t.deepEqual(warnings, []);
  const { stdout } = await ipIn(w.ns, ['-4', 'rule', 'show', 'priority', '100']);
  t.regex(stdout, /^100:\s+from 10\.71\.0\.2 lookup 101 proto 201\s*$/m, 'our plain rule is there beside the marked one, with our protocol');
  t.deepEqual(await foreignAt100(), before);
  t.is(await dp.apply({ sandbox: w.path, rules: [], routes: [] }), 'done');
  t.deepEqual(await foreignAt100(), before, 'an empty plan leaves them too');
  t.deepEqual(await ours(w.ns), [
    '4 rule from 10.71.0.2/32 table 101', // the marked one
    '4 rule from all/32 table 300',
    '4 rule from all/32 table 301',
    '6 rule from all/128 table 302',
  ], 'nothing else at priority 100, no routes of ours');
});

test('rules written without our protocol (before rules carried it) still count as ours', async (t) => {
  const w = await workload(t);
  await ipIn(w.ns, ['rule', 'add', 'from', '10.70.0.2/32', 'table', '100', 'priority', '100']);
  await ipIn(w.ns, ['-6', 'rule', 'add', 'from', 'fd77::2/128', 'table', '107', 'priority', '100']);
  const dp = dataplane();
  t.is(await dp.apply(planA(w.path)), 'done');
  t.deepEqual(await ours(w.ns), EXPECTED_A, 'the planned one kept (not doubled), the stray one deleted');
  t.is(await dp.apply({ sandbox: w.path, rules: [], routes: [] }), 'done');
  t.deepEqual(await ours(w.ns), []);
});

test("'pending' while an interface is missing, with the rest applied; 'done' once it is there", async (t) => {
  const w = await workload(t);
  const warnings: string[] = [];
  const dp = dataplane(warnings);
  // A third network whose interface (10.72.0.2) Docker has not moved in yet.
  const a = planA(w.path);
  const withThird: SandboxPlan = {
    sandbox: w.path,
    rules: [...a.rules, rule(4, '10.72.0.2/32', 102)],
    routes: [...a.routes, tableDefault(4, 102, '169.254.1.3', '10.72.0.2'), member(4, '10.72.0.9/32', '169.254.1.3', '10.72.0.2')],
  };
  t.is(await dp.apply(withThird), 'pending');
  t.deepEqual(await ours(w.ns), [...EXPECTED_A, '4 rule from 10.72.0.2/32 table 102'].sort(), 'everything else, and the rule (it needs no device)');
  t.is(await dp.apply(withThird), 'pending', 'still missing');

  await ipIn(w.ns, ['link', 'add', 'e2', 'type', 'veth', 'peer', 'name', 'e2p']);
  await ipIn(w.ns, ['link', 'set', 'e2', 'up']);
  await ipIn(w.ns, ['link', 'set', 'e2p', 'up']);
  await ipIn(w.ns, ['addr', 'add', '10.72.0.2/32', 'dev', 'e2']);
  t.is(await dp.apply(withThird), 'done');
  t.deepEqual(await ours(w.ns), [
    ...EXPECTED_A,
    '4 rule from 10.72.0.2/32 table 102',
    '4 102 default via 169.254.1.3 dev e2',
    '4 main 10.72.0.9 via 169.254.1.3 dev e2 src 10.72.0.2',
  ].sort());
  t.deepEqual(warnings, []);
});

test("'pending' when a write fails, with a warning; the rest of the batch is applied", async (t) => {
  const w = await workload(t);
  const warnings: string[] = [];
  const dp = dataplane(warnings);
  const a = planA(w.path);
  // A global IPv6 next hop that no route reaches: the kernel refuses this one route.
  const bad: SandboxPlan = { ...a, routes: [...a.routes, member(6, 'fd71::10/128', 'fd99::1', 'fd71::2')] };
  t.is(await dp.apply(bad), 'pending');
  t.deepEqual(await ours(w.ns), EXPECTED_A);
  t.is(warnings.length, 1);
  t.regex(warnings[0] ?? '', new RegExp(`routing in ${w.path}: `));
  t.is(await dp.apply(a), 'done');
});

test('an empty plan removes everything of ours and nothing else', async (t) => {
  const w = await workload(t);
  const before = await foreign(w.ns);
  const dp = dataplane();
  t.is(await dp.apply(planA(w.path)), 'done');
  t.is((await ours(w.ns)).length, EXPECTED_A.length);
  t.is(await dp.apply({ sandbox: w.path, rules: [], routes: [] }), 'done');
  t.deepEqual(await ours(w.ns), []);
  t.deepEqual(await foreign(w.ns), before);
  t.is(await dp.apply({ sandbox: w.path, rules: [], routes: [] }), 'done');
});

test("'gone' for a namespace that does not exist, or no longer does; invalid paths are refused", async (t) => {
  const dp = dataplane();
  const missing = `/run/netns/csbx-missing-${process.pid}-${randomBytes(3).toString('hex')}`;
  t.is(await dp.apply({ ...planA(missing), sandbox: missing }), 'gone');
  t.is(await dp.apply({ sandbox: missing, rules: [], routes: [] }), 'gone');

  const ns = await createNetns('csbx');
  t.teardown(() => deleteNetns(ns));
  const path = `/run/netns/${ns}`;
  t.is(await dp.apply({ sandbox: path, rules: [], routes: [] }), 'done');
  await deleteNetns(ns);
  t.is(await dp.apply(planA(path)), 'gone');

  // Docker unmounts a sandbox's namespace and leaves the file behind for a while: a plain file.
  const unmounted = join(await mkdtemp(join(tmpdir(), 'csbx-')), 'a1b2c3d4e5f6');
  t.teardown(() => rm(dirname(unmounted), { recursive: true, force: true }));
  await writeFile(unmounted, '');
  const warned: string[] = [];
  t.is(await dataplane(warned).apply(planA(unmounted)), 'gone');
  t.deepEqual(warned, [], 'no warning for a sandbox being torn down');

  for (const bad of ['', 'run/netns/x', '/run/netns/../x', '/run/netns/x y', '/run/netns/x;true']) {
    await t.throwsAsync(dp.apply({ sandbox: bad, rules: [], routes: [] }), { instanceOf: InvalidRequestError }, bad);
  }
});

interface RouteGetJson { dst?: string; gateway?: string; dev?: string; prefsrc?: string; table?: string }

async function routeGet(ns: string, family: 4 | 6, dst: string, from?: string): Promise<string> {
  const [r] = await json<RouteGetJson>(ns, [`-${family}`, 'route', 'get', dst, ...(from === undefined ? [] : ['from', from])]);
  return `dev ${r?.dev ?? '?'} via ${r?.gateway ?? '-'} src ${r?.prefsrc ?? '-'}`;
}

test('the kernel routes by them: members through their network, replies by the interface of their source', async (t) => {
  const w = await workload(t);
  // Before: everything leaves through Docker's gateway network (e0), whatever the source.
  t.is(await routeGet(w.ns, 4, '10.71.0.9'), `dev e0 via ${GW0_V4} src 10.70.0.2`);
  t.is(await routeGet(w.ns, 4, '198.51.100.7', '10.71.0.2'), `dev e0 via ${GW0_V4} src -`);
  t.is(await routeGet(w.ns, 6, 'fd71::9'), `dev e0 via ${GW0_V6} src fd70::2`);

  t.is(await dataplane().apply(planA(w.path)), 'done');
  t.is(await routeGet(w.ns, 4, '10.70.0.9'), `dev e0 via ${GW0_V4} src 10.70.0.2`);
  t.is(await routeGet(w.ns, 4, '10.71.0.9'), `dev e1 via ${GW1_V4} src 10.71.0.2`);
  t.is(await routeGet(w.ns, 6, 'fd70::9'), `dev e0 via ${GW0_V6} src fd70::2`);
  t.is(await routeGet(w.ns, 6, 'fd71::9'), `dev e1 via ${GW1_V6} src fd71::2`);
  // Source routing: a reply from network 1's address leaves by e1, network 0's by e0.
  t.is(await routeGet(w.ns, 4, '198.51.100.7', '10.71.0.2'), `dev e1 via ${GW1_V4} src -`);
  t.is(await routeGet(w.ns, 4, '198.51.100.7', '10.70.0.2'), `dev e0 via ${GW0_V4} src -`);
  t.is(await routeGet(w.ns, 6, '2001:db8::7', 'fd71::2'), `dev e1 via ${GW1_V6} src fd71::2`);
  t.is(await routeGet(w.ns, 6, '2001:db8::7', 'fd70::2'), `dev e0 via ${GW0_V6} src fd70::2`);
  // Anything else without a source still takes Docker's default route.
  t.is(await routeGet(w.ns, 4, '198.51.100.7'), `dev e0 via ${GW0_V4} src 10.70.0.2`);
});
