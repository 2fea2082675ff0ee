// EndpointService's choice of a workload's interface number (and so its gateways) against the
// real embedded datastore, with a fake EndpointDataplane that records what it was asked: the
// kernel side is tested in dataplane.test.ts. Each test has its own store directory.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { workloadGateways } from '../../dataplane/veth';
import { EmbeddedStore } from '../../datastore/embedded-store';
import { Keys } from '../../datastore/keys';
import { Allocator } from '../../ipam/allocator';
import { DataplaneError, InvalidRequestError } from '../../lib/errors';
import { EndpointService } from '../../workload/endpoint-service';
import { FakeDataplane, waitForNaming } from '../harness/endpoint-fakes';
import { openTempStore } from '../harness/temp-store';

const keys = new Keys('/test');
const SANDBOX_1 = '/var/run/docker/netns/1f2e3d4c5b6a';
const SANDBOX_2 = '/var/run/docker/netns/6a5b4c3d2e1f';

interface Host {
  readonly service: EndpointService;
  readonly dataplane: FakeDataplane;
  readonly allocator: Allocator;
  readonly node: string;
}

async function host(store: EmbeddedStore, node: string): Promise<Host> {
  const allocator = new Allocator({ store, keys, node });
  await allocator.addPool({ cidr: '10.66.0.0/24' });
  await allocator.addPool({ cidr: 'fd66::/112' });
  const dataplane = new FakeDataplane();
  const service = new EndpointService({
    store,
    keys,
    allocator,
    dataplane,
    node,
    hostIfPrefix: 'cali',
    mtu: 1500,
    labelEndpoints: false,
    policy: { resolveLabelsLater: () => undefined, waitProgrammed: () => Promise.resolve(true) },
  });
  return { service, dataplane, allocator, node };
}

/** Creates an endpoint with a freshly assigned IPv4 and IPv6 address; returns its ID. */
async function endpoint(h: Host, networkId = 'net1'): Promise<string> {
  const id = randomBytes(32).toString('hex');
  const owner = { handle: id, kind: 'container' } as const;
  const v4 = await h.allocator.autoAssign({ family: 4, owner });
  const v6 = await h.allocator.autoAssign({ family: 6, owner });
  await h.service.create({ id, networkId, ipv4: [`${v4.ip}/32`], ipv6: [`${v6.ip}/128`], mac: 'ee:ee:ee:00:00:01', profiles: [networkId] });
  await waitForNaming(h.allocator, id, [v4.ip, v6.ip]);
  return id;
}

/** Attaches and returns what the workload is told and what the dataplane was asked. */
async function attach(h: Host, id: string, sandbox?: string): Promise<{ index: number | undefined; v4: string | undefined; v6: string | undefined }> {
  const res = await h.service.attach(id, `tmp${id.slice(0, 11)}`, sandbox);
  return { index: h.dataplane.attached.at(-1)?.gatewayIndex, v4: res.ipv4Gateway, v6: res.ipv6Gateway };
}

const gw = (index: number) => ({ index, v4: workloadGateways(index).v4, v6: workloadGateways(index).v6 });

test('endpoints of one sandbox get the lowest free interface number; another sandbox starts at 0', async (t) => {
  const h = await host(await openTempStore(t, 'endpoints'), 'node-a');
  const [e1, e2, e3, e4, e5, e6] = [await endpoint(h, 'net1'), await endpoint(h, 'net2'), await endpoint(h, 'net3'), await endpoint(h, 'net1'), await endpoint(h, 'net1'), await endpoint(h, 'net4')];
  if (e1 === undefined || e2 === undefined || e3 === undefined || e4 === undefined || e5 === undefined || e6 === undefined) throw new Error('unreachable');

  t.deepEqual(await attach(h, e1, SANDBOX_1), { index: 0, v4: '169.254.1.1', v6: 'fe80::ecee:eeff:feee:eeee' });
  t.deepEqual(await attach(h, e2, SANDBOX_1), { index: 1, v4: '169.254.1.2', v6: 'fe80::ecee:eeff:fe00:1' });
  t.like(await h.service.get(e1), { sandbox: SANDBOX_1, gatewayIndex: 0 });
  t.like(await h.service.get(e2), { sandbox: SANDBOX_1, gatewayIndex: 1 });

  // The first leaves (docker network disconnect): its number is free again.
  await h.service.startDetach(e1);
  await h.service.remove(e1);
  t.deepEqual(await attach(h, e3, SANDBOX_1), gw(0));
  t.like(await h.service.get(e3), { sandbox: SANDBOX_1, gatewayIndex: 0 });

  // Another container's namespace counts its own.
  t.deepEqual(await attach(h, e4, SANDBOX_2), gw(0));
  // No namespace given (a front end that does not know it): the first interface's gateways.
  t.deepEqual(await attach(h, e5), gw(0));
  t.is((await h.service.get(e5)).sandbox, undefined);
  // Both 0 and 1 taken in SANDBOX_1 now: the next is 2.
  t.deepEqual(await attach(h, e6, SANDBOX_1), gw(2));

  // Attaching again (a retried Join) keeps the number it has.
  t.deepEqual(await attach(h, e2, SANDBOX_1), gw(1));
  t.like(await h.service.get(e2), { sandbox: SANDBOX_1, gatewayIndex: 1 });
  t.deepEqual(h.dataplane.attached.map((s) => s.gatewayIndex), [0, 1, 0, 0, 0, 2, 1]);
});

test('a gap in the middle is filled first', async (t) => {
  const h = await host(await openTempStore(t, 'endpoints'), 'node-a');
  const ids = [await endpoint(h, 'n0'), await endpoint(h, 'n1'), await endpoint(h, 'n2'), await endpoint(h, 'n3')];
  const [a, b, c, d] = ids;
  if (a === undefined || b === undefined || c === undefined || d === undefined) throw new Error('unreachable');
  t.deepEqual([(await attach(h, a, SANDBOX_1)).index, (await attach(h, b, SANDBOX_1)).index, (await attach(h, c, SANDBOX_1)).index], [0, 1, 2]);
  await h.service.remove(b);
  t.deepEqual(await attach(h, d, SANDBOX_1), gw(1));
});

test("another host's endpoints with the same namespace path do not count", async (t) => {
  const store = await openTempStore(t, 'endpoints');
  const a = await host(store, 'node-a');
  const b = await host(store, 'node-b');
  const onA = await endpoint(a);
  const onB = await endpoint(b);
  // Namespace paths are per host: the same SandboxKey on two hosts is two workloads.
  t.deepEqual(await attach(a, onA, SANDBOX_1), gw(0));
  t.deepEqual(await attach(b, onB, SANDBOX_1), gw(0));
});

test('an invalid namespace path is refused before anything is recorded or created', async (t) => {
  const h = await host(await openTempStore(t, 'endpoints'), 'node-a');
  const id = await endpoint(h);
  for (const bad of ['relative/netns', '/run/netns/../x', '/run/netns/x y', '/run/netns/x;true', '/run/netns/x\n']) {
    await t.throwsAsync(h.service.attach(id, `tmp${id.slice(0, 11)}`, bad), { instanceOf: InvalidRequestError }, JSON.stringify(bad));
  }
  t.deepEqual(h.dataplane.attached, []);
  t.like(await h.service.get(id), { sandbox: undefined, gatewayIndex: 0 });
});

// Found by the fuzzer (scripts/fuzz-plugin.ts): a second Join of an attached endpoint, with another
// SandboxKey, was refused (its veth exists) but left the record naming the new namespace and
// interface number, so the agent planned routing for a namespace the endpoint is not in.
test('a failed attach leaves the record as it was', async (t) => {
  const h = await host(await openTempStore(t, 'endpoints'), 'node-a');
  const inTwo = await endpoint(h);
  t.deepEqual(await attach(h, inTwo, SANDBOX_2), gw(0));
  const id = await endpoint(h);
  t.deepEqual(await attach(h, id, SANDBOX_1), gw(0));
  const exists = (): DataplaneError => new DataplaneError('create veth: RTNETLINK answers: File exists');
  h.dataplane.failNext = exists();
  await t.throwsAsync(h.service.attach(id, `tmp${id.slice(0, 11)}`, SANDBOX_2), { message: /File exists/ });
  t.like(await h.service.get(id), { sandbox: SANDBOX_1, gatewayIndex: 0 });

  // An endpoint in no namespace before is in none after.
  const fresh = await endpoint(h);
  h.dataplane.failNext = exists();
  await t.throwsAsync(h.service.attach(fresh, `tmp${fresh.slice(0, 11)}`, SANDBOX_2), { message: /File exists/ });
  const record = await h.service.get(fresh);
  t.is(record.sandbox, undefined);
  t.is(record.gatewayIndex, 0);
  // And the namespace's next endpoint still gets the number the failed one would have taken.
  t.deepEqual(await attach(h, fresh, SANDBOX_2), gw(1));
});
