// Names of the chains and ipsets policy owns, and the checks on the parameters they are built from
// (prefix, mark bit, interface prefix). Everything starts with `<prefix>-` and fits the kernel's
// name limits; a name derived from content (a profile list, a selector, a set of nets) is a hash
// of it, so the same content always gets the same name and teardown needs no stored state.

import { createHash } from 'node:crypto';
import { InvalidRequestError } from '../lib/errors.js';
import type { Family } from './render-types.js';

/** iptables' limit on chain names (XT_EXTENSION_MAXNAMELEN 29 including the NUL). */
export const MAX_CHAIN_NAME_LENGTH = 28;
/** ipset's limit on set names (IPSET_MAXNAMELEN 32 including the NUL). */
export const MAX_SET_NAME_LENGTH = 31;
/** Hex characters of a hash in a chain or set name. */
const CHAIN_HASH_CHARS = 14;
const SET_HASH_CHARS = 16;

/** Default host interface prefix: the host ends of the veths are `cali<11 of endpoint ID>`. */
export const HOST_IF_PREFIX = 'cali';

const PREFIX_RE = /^[a-z][a-z0-9]{0,7}$/;
const IF_PREFIX_RE = /^[A-Za-z0-9_.-]{1,14}$/;
/** Profile names that may appear literally in a chain name; others are hashed. A literal name
 * never starts with '_', which is how hashed names start, so the two cannot collide. */
const LITERAL_PROFILE_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
/** L of the endpoint chains for "no profile" (see endpointChainName). */
const NO_PROFILES_TAG = '_none';

export function assertPolicyPrefix(prefix: string): string {
  if (typeof prefix !== 'string' || !PREFIX_RE.test(prefix)) {
    throw new InvalidRequestError(
      `invalid policy chain prefix ${JSON.stringify(prefix)}: expected 1-8 characters, a lower-case letter then letters or digits`,
    );
  }
  return prefix;
}

/** A single bit (a power of two up to 2^31). Returns its hex spelling (`0x100000`). */
export function assertMarkBit(bit: number): string {
  if (!Number.isInteger(bit) || bit < 1 || bit > 0x80000000 || !Number.isInteger(Math.log2(bit))) {
    throw new InvalidRequestError(`invalid policy mark bit ${String(bit)}: expected a single bit such as 0x100000`);
  }
  return `0x${bit.toString(16)}`;
}

export function assertIfPrefix(ifPrefix: string): string {
  if (typeof ifPrefix !== 'string' || !IF_PREFIX_RE.test(ifPrefix)) {
    throw new InvalidRequestError(`invalid interface prefix ${JSON.stringify(ifPrefix)}`);
  }
  return ifPrefix;
}

export interface TopChainNames {
  readonly forward: string;
  readonly input: string;
  readonly postrouting: string;
  readonly fromDispatch: string;
  readonly toDispatch: string;
}

export function topChainNames(prefix: string): TopChainNames {
  assertPolicyPrefix(prefix);
  return {
    forward: `${prefix}-FORWARD`,
    input: `${prefix}-INPUT`,
    postrouting: `${prefix}-POSTROUTING`,
    fromDispatch: `${prefix}-from-wl-dispatch`,
    toDispatch: `${prefix}-to-wl-dispatch`,
  };
}

/**
 * The endpoint policy chain for a profile list (the profiles that exist, in evaluation order, no
 * repeats): `<p>-fw-<L>` (from the workload: its egress) or `<p>-tw-<L>` (to it: its ingress).
 * Its rules depend only on that list, so endpoints with the same list share it. L is the profile's
 * own name for a single profile whose name is literal and fits; `_none` for the empty list;
 * otherwise `_<14 hex of sha256(JSON of the list)>`. Literal names never start with '_' and
 * `_none` is not hex, so the three kinds cannot collide.
 */
export function endpointChainName(prefix: string, dir: 'fw' | 'tw', profiles: readonly string[]): string {
  assertPolicyPrefix(prefix);
  return `${prefix}-${dir}-${profileListTag(prefix, profiles)}`;
}

/** L of endpointChainName (the same for both directions); the prefix must be valid. */
function profileListTag(prefix: string, profiles: readonly string[]): string {
  if (profiles.length === 0) return NO_PROFILES_TAG;
  const only = profiles.length === 1 ? profiles[0] : undefined;
  // `<p>-fw-` and `<p>-tw-` have the same length.
  if (only !== undefined && LITERAL_PROFILE_RE.test(only) && prefix.length + 4 + only.length <= MAX_CHAIN_NAME_LENGTH) {
    return only;
  }
  return `_${sha256(JSON.stringify(profiles)).slice(0, CHAIN_HASH_CHARS)}`;
}

/** `<p>-pri-<name>` (ingress) / `<p>-pro-<name>` (egress); names that are too long or contain
 * other characters become `<p>-pri-_<14 hex of sha256(name)>`. */
export function profileChainName(prefix: string, direction: 'ingress' | 'egress', profile: string): string {
  assertPolicyPrefix(prefix);
  const head = `${prefix}-${direction === 'ingress' ? 'pri' : 'pro'}-`;
  if (LITERAL_PROFILE_RE.test(profile) && head.length + profile.length <= MAX_CHAIN_NAME_LENGTH) {
    return head + profile;
  }
  return `${head}_${sha256(profile).slice(0, CHAIN_HASH_CHARS)}`;
}

/** Chains this prefix owns: `<p>-...`. The prefix has no '-', so prefixes never overlap. */
export function ownsChain(prefix: string, chain: string): boolean {
  return chain.startsWith(`${prefix}-`);
}

/** Sets this prefix owns: `<p>-4...` / `<p>-6...`. */
export function ownsSet(prefix: string, name: string): boolean {
  return name.startsWith(`${prefix}-4`) || name.startsWith(`${prefix}-6`);
}

const SELECTOR_HASH_CACHE_MAX = 4096;
/** Canonical selector text -> its hash in set names: rendering names the same selectors on every
 * apply. */
const selectorHashes = new Map<string, string>();

/** `<p>-<family>s-<16 hex of sha256(canonical selector text)>`; the one place this name is made. */
export function selectorSetName(prefix: string, family: Family, canonicalSelector: string): string {
  let hash = selectorHashes.get(canonicalSelector);
  if (hash === undefined) {
    hash = sha256(canonicalSelector).slice(0, SET_HASH_CHARS);
    if (selectorHashes.size >= SELECTOR_HASH_CACHE_MAX) selectorHashes.clear();
    selectorHashes.set(canonicalSelector, hash);
  }
  return `${prefix}-${family}s-${hash}`;
}

export function netSetName(prefix: string, family: Family, members: readonly string[]): string {
  return `${prefix}-${family}n-${sha256(members.join(',')).slice(0, SET_HASH_CHARS)}`;
}

export function natSetNames(prefix: string, family: Family): { masq: string; pools: string } {
  return { masq: `${prefix}-${family}-masq`, pools: `${prefix}-${family}-pools` };
}

export function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}
