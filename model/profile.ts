// A policy profile as stored: the Calico resource document (policy/profile-resource.ts) as JSON,
// so what `calicoctl get profile -o json` prints is exactly what the datastore holds, and every
// read goes through the same strict validation as `calicoctl apply`. Each Docker network gets one
// profile, named after the network.
import type { KeyValue } from '../datastore/datastore';
import { CorruptDataError, InvalidRequestError } from '../lib/errors';
import { parseProfileResource, profileToResource } from '../policy/profile-resource';
import type { Profile } from '../policy/types';

/** The stored value. Round-trips through the parser first, so nothing is ever written that a
 * reader would refuse (throws InvalidRequestError for a hand-built Profile that is invalid). */
export function encodeProfile(p: Profile): string {
  const resource = profileToResource(p);
  parseProfileResource(resource, `profile ${JSON.stringify(p.name)}`);
  return JSON.stringify(resource);
}

/** Reads a stored profile; anything malformed, or stored under another profile's key, is
 * CorruptDataError naming the key. */
export function decodeProfile(kv: KeyValue): Profile {
  let raw: unknown;
  try {
    raw = JSON.parse(kv.value) as unknown;
  } catch {
    throw new CorruptDataError(`datastore key ${kv.key} does not hold JSON`);
  }
  let profile: Profile;
  try {
    profile = parseProfileResource(raw);
  } catch (err) {
    if (err instanceof InvalidRequestError) throw new CorruptDataError(`datastore key ${kv.key} is malformed: ${err.message}`, { cause: err });
    throw err;
  }
  if (!kv.key.endsWith(`/${profile.name}`)) {
    throw new CorruptDataError(`datastore key ${kv.key} is malformed: it holds profile ${JSON.stringify(profile.name)}`);
  }
  return profile;
}
