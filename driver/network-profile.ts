// A network's profile is named after the Docker network, because the name is what ties one
// network together across hosts (a network ID differs on every engine). Recording it: the profile
// with the defaults if nobody wrote one, and the name on the network record.
import type { Datastore } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import { parseStored, serialize } from '../model/codec';
import { Network } from '../model/network';
import { encodeProfile } from '../model/profile';
import { defaultProfile } from '../policy/profile-resource';

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
  const updated: Network = { ...network, profile: name, profileCreated: created !== undefined, name };
  if ((await store.update(kv.key, serialize(updated), kv.revision)) === undefined && created !== undefined && (await store.get(kv.key)) === undefined) {
    // The network went away between the two reads: take back the profile just made for it.
    await store.delete(created.key, created.revision);
  }
  return name;
}
