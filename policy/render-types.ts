// What renderPolicy takes (the model of local endpoints, every endpoint's labels, profiles and
// pools, plus the dataplane's parameters) and what it gives (chains, top-level jumps and ipsets per
// family). Types only, and the one list of families: every other policy render file builds on these.

import type { Labels, Profile } from './types.js';

export type Family = 4 | 6;
export const FAMILIES: readonly Family[] = [4, 6];
export type Table = 'filter' | 'nat';
export type SetType = 'hash:ip' | 'hash:net';

export interface PolicyEndpoint {
  /** Endpoint ID (for messages only). */
  readonly id: string;
  /** Host end of the veth (`cali` + 11 characters of the ID). */
  readonly hostIf: string;
  /** Bare addresses (a /32 or /128 suffix is tolerated). */
  readonly ipv4: readonly string[];
  readonly ipv6: readonly string[];
  /** Profile names, in the order they are evaluated. */
  readonly profiles: readonly string[];
  /** False until the endpoint's labels are resolved: such an endpoint gets no dispatch rules (the
   * shared profile-list chains it would use may still exist for other endpoints), so its interface
   * falls through to the dispatch DROP (fail closed). */
  readonly ready: boolean;
}

export interface LabelledEndpoint {
  readonly ipv4: readonly string[];
  readonly ipv6: readonly string[];
  /** Effective labels (the endpoint's own plus its profiles' labelsToApply). */
  readonly labels: Labels;
}

/** The policy model without the dataplane parameters (what PolicyDataplane.apply takes). */
export interface PolicyModel {
  readonly localEndpoints: readonly PolicyEndpoint[];
  /** Every endpoint of every host, local ones included: selector membership. */
  readonly remoteAndLocalEndpoints: readonly LabelledEndpoint[];
  readonly profiles: ReadonlyMap<string, Profile>;
  /** CIDRs of pools with natOutgoing. */
  readonly natOutgoingPools: readonly string[];
  /** CIDRs of all pools (masquerade stops at these). Should include natOutgoingPools; render
   * adds them anyway, so a natOutgoing pool missing here is still never masqueraded to itself. */
  readonly allPools: readonly string[];
}

export interface PolicyParams {
  /** Chain and set name prefix, `[a-z][a-z0-9]{0,7}` (e.g. `cali`). */
  readonly prefix: string;
  /** The one mark bit policy may use (e.g. 0x100000). */
  readonly markBit: number;
  /** Host interface prefix (default `cali`); `+` is appended. */
  readonly ifPrefix?: string;
  /** Render IPv6 too (default true). */
  readonly ipv6?: boolean;
}

export interface PolicyInput extends PolicyModel, PolicyParams {}

export interface IpSetSpec {
  readonly family: Family;
  readonly type: SetType;
  /** Canonical, sorted, unique (hash:net members with a full-length prefix are bare addresses,
   * which is how ipset prints them). */
  readonly members: readonly string[];
}

/** chain → rule specs (the text after `-A <chain> `), in order. */
export type ChainMap = ReadonlyMap<string, readonly string[]>;

export interface TopLevelJump {
  readonly table: Table;
  /** Built-in chain that jumps to ours at position 1. */
  readonly from: 'FORWARD' | 'INPUT' | 'POSTROUTING';
  readonly to: string;
}

export interface DesiredState {
  readonly prefix: string;
  readonly filter: Readonly<Record<Family, ChainMap>>;
  readonly nat: Readonly<Record<Family, ChainMap>>;
  readonly jumps: Readonly<Record<Family, readonly TopLevelJump[]>>;
  readonly sets: ReadonlyMap<string, IpSetSpec>;
  /** Things skipped rather than written (e.g. an invalid address of a remote endpoint, which can
   * match no packet anyway). */
  readonly warnings: readonly string[];
}
