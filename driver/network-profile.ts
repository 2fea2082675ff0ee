// A network's profile is named after the Docker network, because the name is what ties one
// network together across hosts (a network ID differs on every engine). Recording it: the profile
// with the defaults if nobody wrote one, and the name on the network record. Forgetting it: the
// record, and the profile if the plugin made it and no other network uses it.
//
// Whether the plugin made a profile is read from the profile itself (its created-by annotation),
// not remembered on the network record: two hosts recording the same network's first endpoints
// at once race, and the record the winner writes cannot know whether the loser's create was the
// one that made the profile (a flag on the record once left swarm networks' profiles behind).
import { RETRY, casLoop } from '../datastore/cas';
import type { Datastore } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import { parseStored, serialize } from '../model/codec';
import { Network } from '../model/network';
import { decodeProfile, encodeProfile } from '../model/profile';
import { CREATED_BY_ANNOTATION, defaultProfile } from '../policy/profile-resource';

/** Ensures `name`'s profile exists (defaults, created by `node`) and records it on the network.
 * A network that is gone (a swarm network freed while a label lookup was still pending) gets no
 * profile: one created for it would be left behind with nobody to delete it. A lost race on the
 * network record means another endpoint recorded it first: nothing to do. */
export async function recordNetworkProfile(store: Datastore, keys: Keys, node: string, networkId: string, name: string): Promise<string> {
  const kv = await store.get(keys.network(networkId));
  if (kv === undefined) return name;
  const network = parseStored(Network, kv);
  if (network.profile !== '') return network.profile;
  const created = await store.create(keys.profile(name), encodeProfile(defaultProfile(name, node)));
  const updated: Network = { ...network, profile: name, name };
  if ((await store.update(kv.key, serialize(updated), kv.revision)) === undefined && created !== undefined && (await store.get(kv.key)) === undefined) {
    // The network went away between the two reads: take back the profile just made for it.
    await store.delete(created.key, created.revision);
  }
  return name;
}

/** Deletes the network's record, then its profile if the plugin made it and no other network
 * (another host's network of the same name) uses it; a profile an operator wrote stays. The
 * delete is conditional on the record as read: an endpoint that records the profile meanwhile
 * makes it read again, so a profile recorded late still goes with the network. */
export async function forgetNetworkRecord(store: Datastore, keys: Keys, networkId: string): Promise<void> {
  const key = keys.network(networkId);
  const network = await casLoop(`forget network ${networkId.slice(0, 12)}`, async () => {
    const kv = await store.get(key);
    if (kv === undefined) return undefined;
    return (await store.delete(key, kv.revision)) ? parseStored(Network, kv) : RETRY;
  });
  if (network === undefined || network.profile === '') return;
  const { items } = await store.list(keys.networksPrefix());
  if (items.some((kv) => parseStored(Network, kv).profile === network.profile)) return;
  const kv = await store.get(keys.profile(network.profile));
  if (kv === undefined || decodeProfile(kv).annotations[CREATED_BY_ANNOTATION] === undefined) return;
  await store.delete(kv.key, kv.revision);
}
