// The reconciler against the real embedded datastore, with a fake dataplane and a scripted
// Docker: an endpoint record is removed (and its addresses released) only if Docker does not know
// it when asked twice; if the second question gets no answer, nothing is removed that pass.
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { Keys } from '../../datastore/keys';
import { Allocator } from '../../ipam/allocator';
import { EndpointService } from '../../workload/endpoint-service';
import { Reconciler } from '../../workload/reconciler';
import { FakeDataplane, waitForNaming } from '../harness/endpoint-fakes';
import { openTempStore } from '../harness/temp-store';

const keys = new Keys('/rtest');
const NODE = 'node-r';

interface World {
  readonly allocator: Allocator;
  readonly endpoints: EndpointService;
  readonly dataplane: FakeDataplane;
  /** Answers Docker gives, in turn; an Error is thrown instead of answering. */
  readonly answers: (ReadonlySet<string> | Error)[];
  readonly reconciler: Reconciler;
}

async function world(t: ExecutionContext): Promise<World> {
  const store = await openTempStore(t, 'reconciler');
  const allocator = new Allocator({ store, keys, node: NODE });
  await allocator.addPool({ cidr: '10.67.0.0/24' });
  const dataplane = new FakeDataplane();
  const endpoints = new EndpointService({
    store, keys, allocator, dataplane, node: NODE, hostIfPrefix: 'cali', mtu: 1500, labelEndpoints: false,
    policy: { resolveLabelsLater: () => undefined, waitProgrammed: () => Promise.resolve(true) },
  });
  const answers: (ReadonlySet<string> | Error)[] = [];
  const reconciler = new Reconciler({
    store, keys, node: NODE, allocator, endpoints,
    knownEndpoints: () => {
      const next = answers.shift();
      if (next === undefined) throw new Error('the test gave Docker no answer for this question');
      return next instanceof Error ? Promise.reject(next) : Promise.resolve(next);
    },
    frontEndReady: () => Promise.resolve(true),
    listLinks: () => Promise.resolve([]),
    removeLink: () => Promise.resolve(),
    ownsHandle: () => true,
    hostIfPrefix: 'cali',
    intervalMs: 60_000,
    graceMs: 0,
  });
  return { allocator, endpoints, dataplane, answers, reconciler };
}

/** An endpoint with an address, named on its allocation; returns its ID and address. */
async function endpoint(w: World): Promise<{ id: string; ip: string }> {
  const id = randomBytes(32).toString('hex');
  const { ip } = await w.allocator.autoAssign({ family: 4, owner: { handle: id, kind: 'container' } });
  await w.endpoints.create({ id, networkId: 'net1', ipv4: [`${ip}/32`], ipv6: [], mac: 'ee:ee:ee:00:00:01', profiles: ['net1'] });
  await waitForNaming(w.allocator, id, [ip]);
  return { id, ip };
}

const exists = async (w: World, id: string): Promise<boolean> => w.endpoints.get(id).then(() => true, () => false);

test('an endpoint missing from the first answer but in the second is left alone, with its address', async (t) => {
  const w = await world(t);
  const [live, gone] = [await endpoint(w), await endpoint(w)];
  // Docker's first answer misses both (say, a container list taken mid-start); the second knows
  // the live one.
  w.answers.push(new Set(), new Set([live.id]));
  const r = await w.reconciler.reconcileOnce();
  t.deepEqual(r.plan.staleEndpoints.map((s) => s.endpoint.id).sort(), [live.id, gone.id].sort(), 'both looked stale at first');
  t.is(r.removedEndpoints, 1);
  t.true(await exists(w, live.id), 'the live endpoint keeps its record');
  t.false(await exists(w, gone.id), 'the gone one is removed');
  t.not(await w.allocator.findAllocation(live.ip), undefined, 'the live endpoint keeps its address');
  t.is(await w.allocator.findAllocation(gone.ip), undefined, 'the gone one\'s address is released');
  t.deepEqual(w.dataplane.detached, [`cali${gone.id.slice(0, 11)}`], 'only the gone one\'s veth is removed');
  t.is(w.answers.length, 0, 'Docker was asked exactly twice');
});

test('when Docker cannot be asked the second time, nothing is removed this pass', async (t) => {
  const w = await world(t);
  const e = await endpoint(w);
  w.answers.push(new Set(), new Error('connect ENOENT /run/docker.sock'));
  const r = await w.reconciler.reconcileOnce();
  t.is(r.plan.staleEndpoints.length, 1);
  t.is(r.removedEndpoints, 0);
  t.is(r.released, 0);
  t.true(await exists(w, e.id));
  t.not(await w.allocator.findAllocation(e.ip), undefined);
  t.deepEqual(w.dataplane.detached, []);
  // The next pass, with two answers that agree, removes it.
  w.answers.push(new Set(), new Set());
  const next = await w.reconciler.reconcileOnce();
  t.is(next.removedEndpoints, 1);
  t.false(await exists(w, e.id));
  t.is(await w.allocator.findAllocation(e.ip), undefined);
});

test('nothing stale: Docker is asked once', async (t) => {
  const w = await world(t);
  const e = await endpoint(w);
  w.answers.push(new Set([e.id]), new Set());
  const r = await w.reconciler.reconcileOnce();
  t.is(r.removedEndpoints, 0);
  t.is(w.answers.length, 1, 'no second question');
  t.true(await exists(w, e.id));
});
