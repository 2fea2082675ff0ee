// IpamDriver.ReleaseAddress for an address a local endpoint record still names (Docker 20.10
// restoring after a restart releases the old endpoints' addresses without deleting them): the
// record, its veth and its route go before the address is freed. Real embedded store, the real
// IPAM driver and endpoint service, and the Linux endpoint dataplane in a throwaway "host"
// namespace (the workload end of each veth stays there: no container is needed to see them go).
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import type { EndpointDataplane } from '../../dataplane/endpoint-dataplane';
import { LinuxEndpointDataplane } from '../../dataplane/linux-endpoint-dataplane';
import { linkExists, routesFor } from '../../dataplane/veth';
import { EmbeddedStore } from '../../datastore/embedded-store';
import { Keys } from '../../datastore/keys';
import { ANY_POOL_ID, IpamDriver, SWARM_OWNER_NODE } from '../../driver/ipam-driver';
import { Allocator } from '../../ipam/allocator';
import { addressPart } from '../../ipam/cidr';
import { ConflictError, DataplaneError, NotFoundError } from '../../lib/errors';
import { serialize } from '../../model/codec';
import type { Network } from '../../model/network';
import { EndpointService } from '../../workload/endpoint-service';
import { makeRoutedHost, netnsRegistry } from '../harness/netns';
import { reserveTestSubnet } from '../harness/test-subnets';
import { openTempStore } from '../harness/temp-store';

const keys = new Keys('/stale');
const NODE = 'node-a';

interface Host {
  readonly ns: string;
  readonly pool: string;
  readonly allocator: Allocator;
  readonly service: EndpointService;
  readonly ipam: IpamDriver;
  readonly store: EmbeddedStore;
  /** While set, the dataplane fails to remove veths (as a kernel refusing would). */
  failDetach: boolean;
}

async function host(t: ExecutionContext): Promise<Host> {
  const ns = await makeRoutedHost(netnsRegistry(t), 'stale');
  const store = await openTempStore(t, 'stale');
  const pool = await reserveTestSubnet();
  const allocator = new Allocator({ store, keys, node: NODE });
  await allocator.addPool({ cidr: pool });
  const real = new LinuxEndpointDataplane({ netns: ns });
  const h: Host = { ns, pool, allocator, store, failDetach: false } as Host;
  const dataplane: EndpointDataplane = {
    attach: (spec) => real.attach(spec),
    detach: (hostIf) => (h.failDetach ? Promise.reject(new DataplaneError(`delete link ${hostIf}: refused by the test`)) : real.detach(hostIf)),
    startDetach: (hostIf) => real.startDetach(hostIf),
    settled: () => real.settled(),
  };
  const service = new EndpointService({
    store,
    keys,
    allocator,
    dataplane,
    node: NODE,
    hostIfPrefix: 'cali',
    mtu: 1500,
    labelEndpoints: false,
    policy: { resolveLabelsLater: () => undefined, waitProgrammed: () => Promise.resolve(true) },
  });
  return Object.assign(h, { service, ipam: new IpamDriver(allocator, NODE, 'calico-ipam', service) });
}

/** The network record CreateNetwork writes, with the pool Docker was given. */
async function network(h: Host, pool: string): Promise<string> {
  const id = randomBytes(32).toString('hex');
  const record: Network = { id, ipv4Pools: [pool], ipv6Pools: [], profile: 'p', options: {}, createdBy: NODE, createdAt: new Date().toISOString() };
  await h.store.create(keys.network(id), serialize(record));
  return id;
}

/** What Docker does for a container: RequestAddress, CreateEndpoint, Join (the veth and route);
 * waits until the allocation names the endpoint (recorded in the background). */
async function container(h: Host, networkId: string, poolId: string, address = ''): Promise<{ id: string; ip: string; hostIf: string }> {
  const { Address } = await h.ipam.requestAddress({ PoolID: poolId, Address: address, Options: {} });
  const ip = addressPart(Address);
  const id = randomBytes(32).toString('hex');
  const ep = await h.service.create({ id, networkId, ipv4: [`${ip}/32`], ipv6: [], mac: 'ee:ee:ee:00:00:01', profiles: ['p'] });
  await h.service.attach(id, `tmp${id.slice(0, 11)}`);
  const deadline = Date.now() + 5_000;
  while ((await h.allocator.findAllocation(ip))?.owner.endpointId !== id && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  return { id, ip, hostIf: ep.hostInterface };
}

async function present(h: Host, ep: { id: string; ip: string; hostIf: string }): Promise<{ record: boolean; veth: boolean; route: boolean; allocated: boolean }> {
  const record = await h.service.get(ep.id).then(() => true, (err: unknown) => {
    if (err instanceof NotFoundError) return false;
    throw err;
  });
  const veth = await linkExists(ep.hostIf, { netns: h.ns });
  const route = veth && (await routesFor(ep.hostIf, { netns: h.ns })).some((r) => r.dst === ep.ip || r.dst === `${ep.ip}/32`);
  return { record, veth, route, allocated: (await h.allocator.findAllocation(ep.ip)) !== undefined };
}

const all = { record: true, veth: true, route: true, allocated: true };
const none = { record: false, veth: false, route: false, allocated: false };

test('ReleaseAddress for an address a stale record names removes the record, veth and route, then frees it; the normal order and other endpoints are unchanged', async (t) => {
  const h = await host(t);
  const net = await network(h, h.pool);
  const [stale, normal, other] = [await container(h, net, h.pool), await container(h, net, h.pool), await container(h, net, h.pool)];
  for (const ep of [stale, normal, other]) t.deepEqual(await present(h, ep), all);

  // Docker restoring after a restart: ReleaseAddress, no Leave, no DeleteEndpoint.
  await h.ipam.releaseAddress({ PoolID: h.pool, Address: stale.ip });
  t.deepEqual(await present(h, stale), none);

  // The normal order: Leave, DeleteEndpoint (record gone), then ReleaseAddress frees the address.
  await h.service.startDetach(normal.id);
  await h.service.remove(normal.id);
  t.deepEqual(await present(h, normal), { ...none, allocated: true });
  await h.ipam.releaseAddress({ PoolID: h.pool, Address: normal.ip });
  t.deepEqual(await present(h, normal), none);
  // A second release (Docker retrying) is harmless.
  await h.ipam.releaseAddress({ PoolID: h.pool, Address: normal.ip });

  t.deepEqual(await present(h, other), all, 'an endpoint whose address was not released is untouched');
});

test('when the stale endpoint cannot be removed, ReleaseAddress fails and the address stays allocated', async (t) => {
  const h = await host(t);
  const net = await network(h, '0.0.0.0/0');
  const ep = await container(h, net, ANY_POOL_ID[4]);
  h.failDetach = true;
  const err = await t.throwsAsync(h.ipam.releaseAddress({ PoolID: ANY_POOL_ID[4], Address: ep.ip }), { instanceOf: ConflictError });
  t.regex(err?.message ?? '', /still used by endpoint .*removing that endpoint failed: .*refused by the test/);
  t.deepEqual(await present(h, ep), all);
  // Once it can be removed, Docker's retry (or the reconciler) completes it.
  h.failDetach = false;
  await h.ipam.releaseAddress({ PoolID: ANY_POOL_ID[4], Address: ep.ip });
  t.deepEqual(await present(h, ep), none);
});

test('a swarm node releasing the manager\'s address leaves the live task endpoint that names it: the release frees nothing', async (t) => {
  const h = await host(t);
  // The manager allocates in the global space; the node asks again in the local space for the
  // same address and runs the task here, then releases its view of it (README, Swarm).
  const { Address } = await h.ipam.requestAddress({ PoolID: `global:${h.pool}`, Address: '', Options: {} });
  const managerIp = addressPart(Address);
  const net = await network(h, h.pool);
  const task = await container(h, net, h.pool, managerIp);
  await h.ipam.releaseAddress({ PoolID: h.pool, Address: managerIp });
  t.deepEqual(await present(h, task), all);
  t.is((await h.allocator.findAllocation(managerIp))?.owner.node, SWARM_OWNER_NODE);
  // The task's normal end: the node deletes the endpoint, the manager frees the address.
  await h.service.remove(task.id);
  await h.ipam.releaseAddress({ PoolID: `global:${h.pool}`, Address: managerIp });
  t.deepEqual(await present(h, task), none);
});
