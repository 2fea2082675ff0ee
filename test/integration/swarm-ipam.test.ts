// The IpamDriver under swarm's two kinds of caller, against the real embedded store shared by two
// hosts: the manager allocates in the global address space (with com.docker.network.ipam.serial),
// then each node asks again in the local space for the pool and explicit addresses, and releases
// them on teardown. The sequence follows test/fixtures' swarm request log (Docker 20.10), with our
// answers: pool 0.0.0.0/0 and no gateway address.
import test, { type ExecutionContext } from 'ava';
import { Keys } from '../../datastore/keys';
import { ANY_POOL_ID, GLOBAL_ADDRESS_SPACE, GLOBAL_ANY_POOL_ID, IpamDriver, LOCAL_ADDRESS_SPACE, SWARM_NODE_POOL_ID, SWARM_OWNER_NODE } from '../../driver/ipam-driver';
import { Allocator } from '../../ipam/allocator';
import { ConflictError, InvalidRequestError } from '../../lib/errors';
import { openTempStore } from '../harness/temp-store';

const keys = new Keys('/swarm');
const POOL = '10.50.0.0/24';
const SERIAL = { 'com.docker.network.ipam.serial': 'true' };
const GATEWAY = { RequestAddressType: 'com.docker.network.gateway' };

interface Cluster {
  readonly manager: IpamDriver;
  readonly worker: IpamDriver;
  readonly allocator: Allocator;
}

async function cluster(t: ExecutionContext): Promise<Cluster> {
  const store = await openTempStore(t, 'swarm-ipam');
  const allocator = new Allocator({ store, keys, node: 'host1' });
  await allocator.addPool({ cidr: POOL, blockSize: 28 });
  return {
    manager: new IpamDriver(allocator, 'host1', 'calico', noEndpoints),
    worker: new IpamDriver(new Allocator({ store, keys, node: 'host2' }), 'host2', 'calico', noEndpoints),
    allocator,
  };
}

/** Swarm's releases here never free an address a local record names. */
const noEndpoints = { removeStaleNaming: (): Promise<string[]> => Promise.resolve([]) };

const bare = (cidr: string): string => cidr.split('/')[0] ?? '';

test('a network without --subnet: the manager allocates, nodes ask again, a node release frees nothing of the manager\'s', async (t) => {
  const c = await cluster(t);
  // Manager: pool, gateway (if Docker asks), a task address and a VIP.
  const gpool = await c.manager.requestPool({ AddressSpace: GLOBAL_ADDRESS_SPACE, Pool: '', SubPool: '', Options: {}, V6: false });
  t.deepEqual(gpool, { PoolID: GLOBAL_ANY_POOL_ID[4], Pool: '0.0.0.0/0', Data: { 'com.docker.network.gateway': '0.0.0.0/0' } });
  const ggw = await c.manager.requestAddress({ PoolID: gpool.PoolID, Address: '', Options: { ...GATEWAY, ...SERIAL } });
  t.is(ggw.Address, '0.0.0.0/0', 'no gateway address is taken');
  const task = bare((await c.manager.requestAddress({ PoolID: gpool.PoolID, Address: '', Options: SERIAL })).Address);
  const vip = bare((await c.manager.requestAddress({ PoolID: gpool.PoolID, Address: '', Options: SERIAL })).Address);
  t.not(task, vip);
  t.like(await c.allocator.findAllocation(task), { owner: { node: SWARM_OWNER_NODE } });

  // The manager restoring its state asks again for what it holds: a replay, not a conflict.
  t.is((await c.manager.requestAddress({ PoolID: gpool.PoolID, Address: task, Options: SERIAL })).Address, `${task}/32`);

  // Node (another host): the pool the manager stored, its gateway, the task's address.
  const lpool = await c.worker.requestPool({ AddressSpace: LOCAL_ADDRESS_SPACE, Pool: '0.0.0.0/0', SubPool: '', Options: {}, V6: false });
  t.is(lpool.PoolID, SWARM_NODE_POOL_ID[4]);
  t.is((await c.worker.requestAddress({ PoolID: lpool.PoolID, Address: '0.0.0.0', Options: GATEWAY })).Address, '0.0.0.0/0');
  t.is((await c.worker.requestAddress({ PoolID: lpool.PoolID, Address: task, Options: {} })).Address, `${task}/32`);
  t.is((await c.worker.requestAddress({ PoolID: lpool.PoolID, Address: task, Options: {} })).Address, `${task}/32`, 'asking twice is fine');

  // Teardown on the node: its releases leave the manager's addresses held.
  await c.worker.releaseAddress({ PoolID: lpool.PoolID, Address: task });
  await c.worker.releaseAddress({ PoolID: lpool.PoolID, Address: vip });
  await c.worker.releaseAddress({ PoolID: lpool.PoolID, Address: '0.0.0.0' });
  await c.worker.releasePool({ PoolID: lpool.PoolID });
  t.like(await c.allocator.findAllocation(task), { owner: { node: SWARM_OWNER_NODE } }, 'still the manager\'s');
  t.like(await c.allocator.findAllocation(vip), { owner: { node: SWARM_OWNER_NODE } });

  // Nothing of the manager's is handed out again while it holds it, to the manager or to anyone.
  const handed = new Set<string>();
  for (let i = 0; i < 8; i++) handed.add(bare((await c.manager.requestAddress({ PoolID: gpool.PoolID, Address: '', Options: SERIAL })).Address));
  for (let i = 0; i < 4; i++) handed.add(bare((await c.worker.requestAddress({ PoolID: ANY_POOL_ID[4], Address: '', Options: {} })).Address));
  t.false(handed.has(task) || handed.has(vip));
  // A local container cannot take it with --ip on an engine's own network either.
  await t.throwsAsync(c.worker.requestAddress({ PoolID: ANY_POOL_ID[4], Address: task, Options: {} }), { instanceOf: ConflictError });

  // The manager's release frees it, from whichever host leads.
  await c.worker.releaseAddress({ PoolID: gpool.PoolID, Address: task });
  t.is(await c.allocator.findAllocation(task), undefined);
  await c.manager.releaseAddress({ PoolID: gpool.PoolID, Address: '0.0.0.0' });
  await c.manager.releasePool({ PoolID: gpool.PoolID });
});

test('a --subnet network: the global PoolID names the pool; the node\'s is the pool itself', async (t) => {
  const c = await cluster(t);
  const gpool = await c.manager.requestPool({ AddressSpace: GLOBAL_ADDRESS_SPACE, Pool: POOL, SubPool: '', Options: {}, V6: false });
  t.deepEqual(gpool, { PoolID: `global:${POOL}`, Pool: POOL, Data: { 'com.docker.network.gateway': '0.0.0.0/0' } });
  const task = bare((await c.manager.requestAddress({ PoolID: gpool.PoolID, Address: '', Options: SERIAL })).Address);
  t.true(task.startsWith('10.50.0.'));
  const lpool = await c.worker.requestPool({ AddressSpace: LOCAL_ADDRESS_SPACE, Pool: POOL, SubPool: '', Options: {}, V6: false });
  t.is(lpool.PoolID, POOL);
  t.is((await c.worker.requestAddress({ PoolID: lpool.PoolID, Address: task, Options: {} })).Address, `${task}/32`);
  await c.worker.releaseAddress({ PoolID: lpool.PoolID, Address: task });
  t.like(await c.allocator.findAllocation(task), { owner: { node: SWARM_OWNER_NODE } });
});

test('a real --gateway is still refused, and swarm PoolIDs are validated', async (t) => {
  const c = await cluster(t);
  await t.throwsAsync(c.manager.requestAddress({ PoolID: GLOBAL_ANY_POOL_ID[4], Address: '10.50.0.1', Options: GATEWAY }), { instanceOf: InvalidRequestError, message: /--gateway is not supported/ });
  await t.throwsAsync(c.manager.requestAddress({ PoolID: 'global:not-a-cidr', Address: '', Options: {} }), { instanceOf: InvalidRequestError, message: /unknown PoolID/ });
  await t.throwsAsync(c.worker.requestAddress({ PoolID: SWARM_NODE_POOL_ID[4], Address: 'fd00::1', Options: {} }), { instanceOf: InvalidRequestError });
});
