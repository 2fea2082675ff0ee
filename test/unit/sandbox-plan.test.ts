// Routing inside workloads on several networks: the pure plan, and the manager that feeds it from
// the datastore to a fake applier.
import test from 'ava';
import { type PlanWorkloadEndpoint, planSandboxes } from '../../agent/sandbox-plan';
import { SandboxManager } from '../../agent/sandbox-manager';
import type { KeyValue } from '../../datastore/datastore';
import { Keys } from '../../datastore/keys';
import type { SandboxOutcome, SandboxPlan } from '../../dataplane/sandbox-routing';
import { logger } from '../../lib/log';

const SB = '/var/run/docker/netns/aaaa';
const ep = (id: string, networkId: string, addresses: string[], extra: Partial<PlanWorkloadEndpoint> = {}): PlanWorkloadEndpoint => ({ id, node: 'h1', networkId, addresses, gatewayIndex: 0, ...extra });

test('a workload on one network gets no plan', (t) => {
  t.deepEqual(planSandboxes('h1', [ep('a', 'front', ['10.0.0.1/32'], { sandbox: SB }), ep('b', 'front', ['10.0.0.2/32'])]), []);
});

test('two networks: a rule and a default per interface, a route per member through its network', (t) => {
  const plans = planSandboxes('h1', [
    ep('web-f', 'front', ['10.0.0.1/32'], { sandbox: SB }),
    ep('web-b', 'back', ['10.0.0.2/32', 'fd00::2/128'], { sandbox: SB, gatewayIndex: 1 }),
    ep('client', 'front', ['10.0.0.3/32']),
    ep('db', 'back', ['10.0.0.4/32', 'fd00::4/128'], { node: 'h2' }),
    ep('other', 'elsewhere', ['10.0.0.5/32']),
  ]);
  t.is(plans.length, 1);
  const [plan] = plans as [SandboxPlan];
  t.is(plan.sandbox, SB);
  t.deepEqual(plan.rules, [
    { family: 4, from: '10.0.0.1/32', table: 100 },
    { family: 4, from: '10.0.0.2/32', table: 101 },
    { family: 6, from: 'fd00::2/128', table: 101 },
  ]);
  t.deepEqual([...plan.routes].sort((a, b) => `${a.table}${a.dst}`.localeCompare(`${b.table}${b.dst}`)), [
    { family: 4, table: 100, dst: 'default', via: '169.254.1.1', deviceAddress: '10.0.0.1' },
    { family: 4, table: 101, dst: 'default', via: '169.254.1.2', deviceAddress: '10.0.0.2' },
    { family: 6, table: 101, dst: 'default', via: 'fe80::ecee:eeff:fe00:1', deviceAddress: 'fd00::2' },
    { family: 4, table: 'main', dst: '10.0.0.3/32', via: '169.254.1.1', src: '10.0.0.1', deviceAddress: '10.0.0.1' },
    { family: 4, table: 'main', dst: '10.0.0.4/32', via: '169.254.1.2', src: '10.0.0.2', deviceAddress: '10.0.0.2' },
    { family: 6, table: 'main', dst: 'fd00::4/128', via: 'fe80::ecee:eeff:fe00:1', src: 'fd00::2', deviceAddress: 'fd00::2' },
  ], 'members on other hosts too; nothing for networks the workload is not on, nor for its own addresses');
});

test('only this host\'s namespaces are planned; an endpoint without a namespace is only a member', (t) => {
  const endpoints = [
    ep('x1', 'n1', ['10.0.0.1/32'], { sandbox: SB, node: 'h2' }),
    ep('x2', 'n2', ['10.0.0.2/32'], { sandbox: SB, node: 'h2', gatewayIndex: 1 }),
    ep('y1', 'n1', ['10.0.0.3/32']),
  ];
  t.deepEqual(planSandboxes('h1', endpoints), []);
  t.is(planSandboxes('h2', endpoints).length, 1);
});

const keys = new Keys('/sbx-test');
const record = (id: string, networkId: string, ipv4: string, sandbox: string | undefined, gatewayIndex: number): KeyValue => ({
  key: keys.endpoint('h1', id),
  revision: '1',
  value: JSON.stringify({ id, networkId, node: 'h1', hostInterface: `cali${id}`, ipv4: [ipv4], createdAt: 'x', gatewayIndex, ...(sandbox !== undefined && { sandbox }) }),
});

function manager(outcomes: SandboxOutcome[] = []): { m: SandboxManager; applied: SandboxPlan[]; wakes: () => number } {
  const applied: SandboxPlan[] = [];
  let wakes = 0;
  const m = new SandboxManager(keys, 'h1', {
    apply: async (plan) => {
      applied.push(plan);
      return outcomes.shift() ?? 'done';
    },
  }, logger('sbx-test'));
  m.setWake(() => wakes++);
  return { m, applied, wakes: () => wakes };
}

test('manager: writes a plan once, again only when it changes, and clears a namespace that drops to one network', async (t) => {
  const { m, applied } = manager();
  t.false(m.update(keys.pool('10.0.0.0/16'), undefined), 'pools do not concern it');
  for (const kv of [record('a', 'n1', '10.0.0.1/32', SB, 0), record('b', 'n2', '10.0.0.2/32', SB, 1)]) t.true(m.update(kv.key, kv));
  await m.apply();
  t.is(applied.length, 1);
  t.is(applied[0]?.rules.length, 2);
  await m.apply();
  t.is(applied.length, 1, 'unchanged: nothing written');
  const peer = record('c', 'n2', '10.0.0.3/32', undefined, 0);
  m.update(peer.key, peer);
  await m.apply();
  t.true(applied.at(-1)?.routes.some((r) => r.dst === '10.0.0.3/32'), 'a new member gets its route');
  m.update(keys.endpoint('h1', 'b'), undefined);
  await m.apply();
  t.deepEqual(applied.at(-1), { sandbox: SB, rules: [], routes: [] }, 'emptied');
  const before = applied.length;
  await m.apply();
  t.is(applied.length, before, 'and then forgotten');
});

test('manager: an interface not there yet is retried by waking itself; a namespace gone is dropped', async (t) => {
  const { m, applied, wakes } = manager(['pending', 'done']);
  for (const kv of [record('a', 'n1', '10.0.0.1/32', SB, 0), record('b', 'n2', '10.0.0.2/32', SB, 1)]) m.update(kv.key, kv);
  await m.apply();
  t.is(applied.length, 1);
  await new Promise((r) => setTimeout(r, 120));
  t.is(wakes(), 1, 'woke itself to retry');
  await m.apply();
  t.is(applied.length, 2, 'retried');
  await m.apply();
  t.is(applied.length, 2, 'done: not again');

  const gone = manager(['gone']);
  for (const kv of [record('a', 'n1', '10.0.0.1/32', SB, 0), record('b', 'n2', '10.0.0.2/32', SB, 1)]) gone.m.update(kv.key, kv);
  await gone.m.apply();
  await new Promise((r) => setTimeout(r, 120));
  t.is(gone.wakes(), 0, 'a namespace that is gone is not retried');
});

test('manager: at start, every local namespace is checked once for what a previous run left', async (t) => {
  const { m, applied } = manager();
  const single = record('a', 'n1', '10.0.0.1/32', SB, 0);
  m.update(single.key, single);
  await m.apply();
  t.deepEqual(applied, [{ sandbox: SB, rules: [], routes: [] }]);
  const other = record('z', 'n1', '10.0.0.9/32', '/var/run/docker/netns/bbbb', 0);
  m.update(other.key, other);
  await m.apply();
  t.is(applied.length, 1, 'a namespace that appears later has nothing of ours to clear');
});

test('manager: an applier that throws is retried, not fatal', async (t) => {
  let calls = 0;
  let wakes = 0;
  const m = new SandboxManager(keys, 'h1', {
    apply: async () => {
      calls++;
      throw new Error('nsenter exploded');
    },
  }, logger('sbx-test'));
  m.setWake(() => wakes++);
  for (const kv of [record('a', 'n1', '10.0.0.1/32', SB, 0), record('b', 'n2', '10.0.0.2/32', SB, 1)]) m.update(kv.key, kv);
  await t.notThrowsAsync(m.apply());
  t.is(calls, 1);
  await new Promise((r) => setTimeout(r, 120));
  t.is(wakes, 1);
});
