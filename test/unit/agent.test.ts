// The agent's sync loop and policy manager without a kernel: fake managers and a fake policy
// applier over a real (embedded, temporary) datastore.
import test from 'ava';
import { Agent } from '../../agent/agent';
import { SyncLoop } from '../../agent/sync-loop';
import { Keys } from '../../datastore/keys';
import { logger } from '../../lib/log';
import { FakeManager } from '../harness/fake-manager';
import type { PolicyModel } from '../../policy/render';
import { openTempStore } from '../harness/temp-store';

const keys = new Keys('/agent-test');
const log = logger('agent-test');

test('the loop lists, feeds each manager what it cares about, then follows the watch', async (t) => {
  const store = await openTempStore(t, 'agent');
  await store.create(`${keys.root}/a/1`, 'x');
  await store.create(`${keys.root}/b/1`, 'y');
  const a = new FakeManager('a', `${keys.root}/a/`);
  const b = new FakeManager('b', `${keys.root}/b/`);
  const loop = new SyncLoop(store, keys, [a, b], log);
  t.teardown(() => loop.stop());
  await loop.start();
  t.deepEqual(a.calls, ['clear', 'update 1', 'resync', 'apply x']);
  t.deepEqual(b.calls, ['clear', 'update 1', 'resync', 'apply y']);

  a.calls.length = 0;
  b.calls.length = 0;
  await store.create(`${keys.root}/a/2`, 'z');
  await a.appliedTimes(2);
  t.deepEqual(a.calls, ['update 2', 'apply x,z']);
  t.deepEqual(b.calls, [], 'a change no manager of b cares about leaves b alone');
});

test('a failed apply resyncs every manager from a fresh listing', async (t) => {
  const store = await openTempStore(t, 'agent');
  const a = new FakeManager('a', `${keys.root}/a/`);
  const loop = new SyncLoop(store, keys, [a], log);
  t.teardown(() => loop.stop());
  await loop.start();
  a.failNext = true;
  a.calls.length = 0;
  await store.create(`${keys.root}/a/1`, 'x');
  await a.appliedTimes(2);
  t.deepEqual(a.calls, ['update 1', 'apply x', 'clear', 'update 1', 'resync', 'apply x']);
});

test('policy: Join can wait until an endpoint is programmed', async (t) => {
  const store = await openTempStore(t, 'agent');
  const applied: PolicyModel[] = [];
  const agent = new Agent(store, keys, 'node-a', {
    policy: {
      apply: async (input) => {
        applied.push(input);
      },
      resync: () => undefined,
    },
  });
  t.teardown(() => agent.stop());
  await agent.start();
  t.false(await agent.waitProgrammed('ep1', 50), 'unknown endpoint: not programmed');
  const waiting = agent.waitProgrammed('ep1', 5_000);
  const endpoint = {
    id: 'ep1',
    networkId: 'net1',
    node: 'node-a',
    hostInterface: 'caliep1',
    ipv4: ['198.18.0.5/32'],
    profiles: [],
    ready: true,
    createdAt: '2026-11-30T00:00:00.000Z',
  };
  await store.create(keys.endpoint('node-a', 'ep1'), JSON.stringify(endpoint));
  t.true(await waiting);
  t.deepEqual(applied.at(-1)?.localEndpoints.map((e) => e.id), ['ep1']);
  t.true(await agent.waitProgrammed('ep1', 50), 'already programmed: at once');
});

test('the loop reports apply times and failures, and its sync status for readiness', async (t) => {
  const store = await openTempStore(t, 'agent');
  const a = new FakeManager('a', `${keys.root}/a/`);
  const applies: [string, boolean][] = [];
  const loop = new SyncLoop(store, keys, [a], log, { onApply: (m, seconds, ok) => {
    t.true(seconds >= 0);
    applies.push([m, ok]);
  } });
  t.teardown(() => loop.stop());
  t.deepEqual(loop.status(), { synced: false });
  await loop.start();
  t.deepEqual(loop.status(), { synced: true });
  t.deepEqual(applies, [['a', true]]);
  a.failNext = true;
  await store.create(`${keys.root}/a/1`, 'x');
  await a.appliedTimes(2);
  t.deepEqual(applies.slice(0, 2), [['a', true], ['a', false]]);
  // Failed, then repaired by the resync: the failure is cleared once the resync completes.
  const deadline = Date.now() + 5_000;
  while (loop.status().failure !== undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.deepEqual(loop.status(), { synced: true });
  t.deepEqual(applies.at(-1), ['a', true]);
});
