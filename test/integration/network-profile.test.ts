// A network's record and its profile against the real embedded store: hosts racing to record the
// profile, and a network forgotten while an endpoint records it, never leave the plugin's profile
// behind; an operator's profile, and one another network uses, stay.
import test from 'ava';
import type { Datastore } from '../../datastore/datastore';
import { Keys } from '../../datastore/keys';
import { forgetNetworkRecord, recordNetworkProfile } from '../../driver/network-profile';
import { serialize } from '../../model/codec';
import type { Network } from '../../model/network';
import { encodeProfile } from '../../model/profile';
import { defaultProfile } from '../../policy/profile-resource';
import { openTempStore } from '../harness/temp-store';

const keys = new Keys('/profiles');
const SWARM_ID = 'x7k2mq9w4rt5zp3nvb8ch6dfy';

function record(id: string): string {
  const network: Network = { id, ipv4Pools: ['0.0.0.0/0'], ipv6Pools: [], profile: '', options: {}, createdBy: 'manager', createdAt: new Date().toISOString() };
  return serialize(network);
}

/** The store as one host sees it, with a hook run before each call of one kind. */
function hooked(real: Datastore, on: { afterCreate?: () => Promise<void>; beforeDelete?: () => Promise<void> }): Datastore {
  return {
    description: real.description,
    get: (k) => real.get(k),
    list: (p) => real.list(p),
    create: async (k, v) => {
      const created = await real.create(k, v);
      await on.afterCreate?.();
      return created;
    },
    update: (k, v, r) => real.update(k, v, r),
    delete: async (k, r) => {
      await on.beforeDelete?.();
      return real.delete(k, r);
    },
    commit: (ops) => real.commit(ops),
    watch: (p, h, o) => real.watch(p, h, o),
    close: () => real.close(),
  };
}

/** `run` the first time the hook is called, nothing after. */
function once(run: () => Promise<unknown>): () => Promise<void> {
  let done = false;
  return async () => {
    if (done) return;
    done = true;
    await run();
  };
}

test('two hosts record a network\'s profile at once: it still goes with the network', async (t) => {
  const store = await openTempStore(t, 'profiles');
  await store.create(keys.network(SWARM_ID), record(SWARM_ID));
  // host-a creates the profile; host-b, finding it there, records it on the network first, so
  // host-a's write of the record loses.
  const hostA = hooked(store, {
    afterCreate: once(async () => t.is(await recordNetworkProfile(store, keys, 'host-b', SWARM_ID, 'snet'), 'snet')),
  });
  t.is(await recordNetworkProfile(hostA, keys, 'host-a', SWARM_ID, 'snet'), 'snet');
  t.truthy(await store.get(keys.profile('snet')));
  await forgetNetworkRecord(store, keys, SWARM_ID);
  t.is(await store.get(keys.network(SWARM_ID)), undefined);
  t.is(await store.get(keys.profile('snet')), undefined, 'the profile host-a made went with the network');
});

test('a profile recorded while the network is being forgotten still goes with it', async (t) => {
  const store = await openTempStore(t, 'profiles');
  await store.create(keys.network(SWARM_ID), record(SWARM_ID));
  // Between the manager's read of the record and its delete, a node's endpoint records the profile.
  const manager = hooked(store, { beforeDelete: once(() => recordNetworkProfile(store, keys, 'host-b', SWARM_ID, 'snet')) });
  await forgetNetworkRecord(manager, keys, SWARM_ID);
  t.is(await store.get(keys.network(SWARM_ID)), undefined);
  t.is(await store.get(keys.profile('snet')), undefined);
});

test('an operator\'s profile stays, and so does one another network uses', async (t) => {
  const store = await openTempStore(t, 'profiles');
  const operators = { ...defaultProfile('front', 'x'), annotations: {} };
  await store.create(keys.profile('front'), encodeProfile(operators));
  const local = ['a'.repeat(64), 'b'.repeat(64), 'c'.repeat(64)] as const;
  for (const id of local) await store.create(keys.network(id), record(id));
  t.is(await recordNetworkProfile(store, keys, 'host-a', local[0], 'front'), 'front');
  await forgetNetworkRecord(store, keys, local[0]);
  t.truthy(await store.get(keys.profile('front')), 'written by the operator: stays');
  // Two hosts' networks of one name share its profile: it goes with the last of them.
  await recordNetworkProfile(store, keys, 'host-a', local[1], 'back');
  await recordNetworkProfile(store, keys, 'host-b', local[2], 'back');
  await forgetNetworkRecord(store, keys, local[1]);
  t.truthy(await store.get(keys.profile('back')), 'still used by host-b\'s network');
  await forgetNetworkRecord(store, keys, local[2]);
  t.is(await store.get(keys.profile('back')), undefined);
  await t.notThrowsAsync(forgetNetworkRecord(store, keys, local[2]), 'forgetting a network twice is harmless');
});
