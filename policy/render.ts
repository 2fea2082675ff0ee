// Profile policy → the iptables chains and ipsets a host needs for its local endpoints. Pure: no
// I/O, no clock; the same input always renders the same text, in iptables-save's canonical
// spelling, so a resync can compare what the kernel prints with what is wanted line by line.
// A RenderCache (one per dataplane) remembers content-keyed pieces of earlier renders, so a render
// after one change costs little more than walking the model; it never changes the output.
//
// Layout (per family; every name starts with `<prefix>-`, at most 28 characters):
//
//   filter FORWARD → <p>-FORWARD                 (one jump, position 1)
//     -i|-o cali+ INVALID → DROP; RELATED,ESTABLISHED → ACCEPT
//     -i cali+ → <p>-from-wl-dispatch            (sender's egress)
//     -o cali+ → <p>-to-wl-dispatch              (receiver's ingress)
//     -i|-o cali+ → ACCEPT                       (whatever came back passed)
//   filter INPUT → <p>-INPUT                     (workload → host: the workload's egress)
//     -i cali+ INVALID → DROP; RELATED,ESTABLISHED → ACCEPT; [v6: ICMPv6 130-136 → ACCEPT]
//     -i cali+ → <p>-from-wl-dispatch; -i cali+ → ACCEPT
//   <p>-from-wl-dispatch: -s <ip> -i caliX -g <p>-fw-<L> per address of each READY endpoint,
//     then DROP, where L names the endpoint's profile list (below). The source check stops a
//     workload from borrowing a labelled peer's address (selectors are address sets); an unknown
//     or not-ready interface gets only the DROP.
//   <p>-to-wl-dispatch: -o caliX -g <p>-tw-<L> per ready endpoint, then DROP.
//     With more than DISPATCH_FLAT_MAX ready endpoints both become a root that branches on the
//     first character after the interface prefix (`-i cali3+ -g <p>-from-wl-dispatch-3`) to
//     leaves holding the rules above, so one endpoint changes one small leaf.
//   <p>-fw-<L> / <p>-tw-<L> (egress / ingress policy of a profile list, shared by every ready
//     endpoint whose existing profiles are that list, in that order): clear the mark bit; for each
//     profile: jump to its chain, RETURN if the mark bit is set; then DROP. L is the profile's name
//     for one profile whose name fits, `_none` for no profile (drops everything), else a hash of
//     the list (endpointChainName). Everything endpoint-specific (interface, addresses) is in the
//     dispatch rules, so these chains depend on the profile list alone.
//   <p>-pro-<profile> / <p>-pri-<profile> (egress / ingress rules): allow → set the mark bit and
//     RETURN; deny → DROP; log → LOG and go on. Falling off the end means "no verdict": the
//     endpoint chain tries the next profile, and drops after the last.
//   nat POSTROUTING → <p>-POSTROUTING: masquerade from natOutgoing pools to outside all pools.
//
// Host → workload traffic (OUTPUT) is not filtered, as in Calico, so host health checks work;
// the replies come back through INPUT as ESTABLISHED.

import { createHash } from 'node:crypto';
import { InvalidRequestError } from '../lib/errors.js';
import { assertIfName, HOST_IF_PREFIX, isValidIfName } from '../dataplane/names.js';
import { familyBits, formatCidr, parseCidr, tryParseIp, type Cidr } from '../ipam/cidr.js';
import { parseSelector, type Selector } from './selector.js';
import { PROTOCOL_NUMBERS, protocolNumber, type EntityRule, type IcmpMatch, type Labels, type PortRange, type Profile, type Rule } from './types.js';

export type Family = 4 | 6;
export const FAMILIES: readonly Family[] = [4, 6];
export type Table = 'filter' | 'nat';
export type SetType = 'hash:ip' | 'hash:net';

/** iptables' limit on chain names (XT_EXTENSION_MAXNAMELEN 29 including the NUL). */
export const MAX_CHAIN_NAME_LENGTH = 28;
/** ipset's limit on set names (IPSET_MAXNAMELEN 32 including the NUL). */
export const MAX_SET_NAME_LENGTH = 31;
/** multiport takes at most 15 ports; a range uses two of them. */
export const MULTIPORT_MAX_SLOTS = 15;
/** Hex characters of a hash in a chain or set name. */
const CHAIN_HASH_CHARS = 14;
/** Ready endpoints up to which dispatch is one flat chain per direction. */
export const DISPATCH_FLAT_MAX = 16;
const SET_HASH_CHARS = 16;

const PREFIX_RE = /^[a-z][a-z0-9]{0,7}$/;
const IF_PREFIX_RE = /^[A-Za-z0-9_.-]{1,14}$/;
/** Profile names that may appear literally in a chain name; others are hashed. A literal name
 * never starts with '_', which is how hashed names start, so the two cannot collide. */
const LITERAL_PROFILE_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
/** IPv6 neighbour discovery and MLD (130-136), accepted from workloads before policy. */
const ICMPV6_ND_TYPES = [130, 131, 132, 133, 134, 135, 136] as const;
/** L of the endpoint chains for "no profile" (see endpointChainName). */
const NO_PROFILES_TAG = '_none';

// ---------------------------------------------------------------------------------------------
// Input and output

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
  /** False until the endpoint's labels are resolved: such an endpoint gets no chains, so its
   * interface falls through to the dispatch DROP (fail closed). */
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
  /** CIDRs of all pools (masquerade stops at these). */
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

// ---------------------------------------------------------------------------------------------
// Names

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

export function selectorSetName(prefix: string, family: Family, canonicalSelector: string): string {
  return `${prefix}-${family}s-${sha256(canonicalSelector).slice(0, SET_HASH_CHARS)}`;
}

export function netSetName(prefix: string, family: Family, members: readonly string[]): string {
  return `${prefix}-${family}n-${sha256(members.join(',')).slice(0, SET_HASH_CHARS)}`;
}

export function natSetNames(prefix: string, family: Family): { masq: string; pools: string } {
  return { masq: `${prefix}-${family}-masq`, pools: `${prefix}-${family}-pools` };
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

// ---------------------------------------------------------------------------------------------
// Selectors (parsed once per text)

const SELECTOR_CACHE_MAX = 4096;
const selectorCache = new Map<string, Selector>();
const selectorHash = new Map<string, string>();

function selector(text: string): Selector {
  let s = selectorCache.get(text);
  if (s === undefined) {
    s = parseSelector(text);
    if (selectorCache.size >= SELECTOR_CACHE_MAX) selectorCache.clear();
    selectorCache.set(text, s);
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Rendering

/** A set named by a rendered rule: a net set (members known from the rule) or a selector set
 * (members are the addresses of the endpoints whose labels the selector matches). */
type SetRef =
  | { readonly kind: 'net'; readonly name: string; readonly spec: IpSetSpec }
  | { readonly kind: 'selector'; readonly name: string; readonly selector: Selector; readonly family: Family };

interface Ctx {
  readonly prefix: string;
  readonly mark: string;
  /** The sets named by the rules rendered so far, in order. */
  readonly refs: SetRef[];
}

interface CachedChain {
  epoch: number;
  /** The profile rules' JSON this was rendered from. */
  readonly json: string;
  readonly rules: readonly string[];
  readonly refs: readonly SetRef[];
}

interface LabelMatches {
  epoch: number;
  /** A frozen copy of the labels (parsed from the key, so later changes to the caller's object
   * cannot make the entry lie). */
  readonly labels: Labels;
  /** How many of RenderCache.selectors have been evaluated against these labels. */
  checked: number;
  /** Indexes into RenderCache.selectors of those that match. */
  readonly matches: number[];
}

interface EndpointRulesNode {
  readonly next: Map<string, EndpointRulesNode>;
  /** The shared endpoint chain for the profile list along this path: its name and rules. */
  chain?: { epoch: number; readonly name: string; readonly rules: readonly string[] };
}

interface CachedMembers {
  epoch: number;
  /** Addresses in endpoint order, as collected (may repeat). */
  readonly raw: readonly string[];
  readonly spec: IpSetSpec;
}

/** Entries beyond the ones a render used, kept for undo-like changes before a sweep. */
const CACHE_SLACK = 1024;
/** Known selectors beyond twice the ones a render uses before they are forgotten. */
const SELECTOR_SLACK = 64;

/**
 * What earlier renders worked out, so that a render after a small change (one endpoint added, one
 * profile edited) redoes only what that change touches: profile chains are keyed by their rules'
 * content, selector matches by the labels' content, set members by what was collected. Nothing is
 * keyed by object identity, so a render with a cache returns exactly what one without would.
 * Entries a render did not use are swept once they outnumber the used ones, so the cache stays
 * in proportion to the model. One cache per dataplane; renders are synchronous, so never
 * interleaved.
 */
export class RenderCache {
  /** Render counter: entries touched by the current render carry it. */
  epoch = 0;
  /** `<prefix> <mark> <family> <chain>` → rendered rules and the sets they name, with the JSON of
   * the profile rules they came from (a hit needs the same JSON). */
  readonly chains = new Map<string, CachedChain>();
  /** Selectors evaluated against cached labels, by index; selectorIds maps canonical text. */
  selectors: Selector[] = [];
  readonly selectorIds = new Map<string, number>();
  /** JSON of an endpoint's labels → which known selectors match. */
  readonly labels = new Map<string, LabelMatches>();
  /** Selector set name → its last members. */
  readonly members = new Map<string, CachedMembers>();
  /** `<prefix> <direction> <mark>`, then each profile chain in order → an endpoint chain's name
   * and rules. */
  readonly endpointRules = new Map<string, EndpointRulesNode>();
  /** Endpoint chains held in the endpointRules trie. */
  endpointRulesCount = 0;
}

const defaultCache = new RenderCache();

export function renderPolicy(input: PolicyInput, cache: RenderCache = defaultCache): DesiredState {
  const prefix = assertPolicyPrefix(input.prefix);
  const mark = assertMarkBit(input.markBit);
  const ifPrefix = assertIfPrefix(input.ifPrefix ?? HOST_IF_PREFIX);
  const families: Family[] = input.ipv6 === false ? [4] : [4, 6];
  const warnings: string[] = [];

  // Local endpoints: validated names, unique interfaces, canonical addresses.
  const seenIf = new Set<string>();
  const locals = input.localEndpoints.map((ep) => {
    // The message only when it is needed: this runs for every endpoint on every render.
    const hostIf =
      typeof ep.hostIf === 'string' && isValidIfName(ep.hostIf)
        ? ep.hostIf
        : assertIfName(ep.hostIf, `host interface name of endpoint ${JSON.stringify(ep.id)}`);
    if (!hostIf.startsWith(ifPrefix)) {
      throw new InvalidRequestError(`host interface ${hostIf} of endpoint ${ep.id} does not start with ${ifPrefix}`);
    }
    if (seenIf.has(hostIf)) throw new InvalidRequestError(`host interface ${hostIf} is used by two local endpoints`);
    seenIf.add(hostIf);
    return {
      ep,
      hostIf,
      v4: canonicalHostAddresses(ep.ipv4, 4, `endpoint ${ep.id}`),
      v6: canonicalHostAddresses(ep.ipv6, 6, `endpoint ${ep.id}`),
      profiles: [...new Set(ep.profiles)],
    };
  });
  locals.sort((a, b) => cmp(a.hostIf, b.hostIf));
  const ready = locals.filter((l) => l.ep.ready);

  const epoch = ++cache.epoch;
  const sets = new Map<string, IpSetSpec>();
  /** Selector sets wanted, by name: members are filled in after every chain is rendered. */
  const selectorSets = new Map<string, { readonly selector: Selector; readonly family: Family }>();

  // Profiles used by ready local endpoints, in name order.
  const used = new Set<string>();
  for (const l of ready) for (const p of l.profiles) if (input.profiles.has(p)) used.add(p);
  const usedProfiles = [...used].sort(cmp);

  // Endpoint chains are the same in both families: render them once.
  const profileChain = new Map<string, { ingress: string; egress: string }>();
  for (const p of usedProfiles) {
    profileChain.set(p, { ingress: profileChainName(prefix, 'ingress', p), egress: profileChainName(prefix, 'egress', p) });
  }
  // An endpoint chain's rules depend only on the mark and its existing profiles' chains, so
  // endpoints with the same list share one chain (named after the list, rules in a cached, frozen
  // array that the diff compares by reference); the dispatch rules send each interface there.
  const endpointChains = new Map<string, readonly string[]>();
  const dispatch: DispatchEntry[] = [];
  const clearMark = `-j MARK --set-xmark 0x0/${mark}`;
  const returnIfMarked = `-m mark --mark ${mark}/${mark} -j RETURN`;
  let endpointRulesUsed = 0;
  const roots = {
    egress: endpointRulesRoot(cache, prefix, 'egress', mark),
    ingress: endpointRulesRoot(cache, prefix, 'ingress', mark),
  };
  for (const l of ready) {
    const chainOf = { egress: '', ingress: '' };
    for (const direction of DIRECTIONS) {
      // Looked up along a path of chain names (a trie: no key string to build and hash).
      let node = roots[direction];
      for (const p of l.profiles) {
        const chains = profileChain.get(p);
        if (chains === undefined) continue;
        let child: EndpointRulesNode | undefined = node.next.get(chains[direction]);
        if (child === undefined) {
          child = { next: new Map() };
          node.next.set(chains[direction], child);
        }
        node = child;
      }
      let cached = node.chain;
      if (cached === undefined) {
        const rules = [clearMark];
        const existing: string[] = [];
        for (const p of l.profiles) {
          const chains = profileChain.get(p);
          if (chains === undefined) continue; // unknown profile: no allow from it (fail closed)
          existing.push(p);
          rules.push(`-j ${chains[direction]}`, returnIfMarked);
        }
        rules.push(direction === 'egress' ? DROP_NO_EGRESS : DROP_NO_INGRESS);
        const name = endpointChainName(prefix, direction === 'egress' ? 'fw' : 'tw', existing);
        cached = { epoch: -1, name, rules: Object.freeze(rules) };
        cache.endpointRulesCount++;
        node.chain = cached;
      }
      if (cached.epoch !== epoch) {
        cached.epoch = epoch;
        endpointRulesUsed++;
        endpointChains.set(cached.name, cached.rules);
      }
      chainOf[direction] = cached.name;
    }
    dispatch.push({ hostIf: l.hostIf, fw: chainOf.egress, tw: chainOf.ingress, v4: l.v4, v6: l.v6 });
  }
  // By name, so the layout reads the same whatever order the endpoints come in.
  const sharedChains = [...endpointChains].sort((a, b) => cmp(a[0], b[0]));

  const names = topChainNames(prefix);
  const wild = `${ifPrefix}+`;
  const filter = {} as Record<Family, Map<string, readonly string[]>>;
  const nat = {} as Record<Family, Map<string, readonly string[]>>;
  const jumps = {} as Record<Family, TopLevelJump[]>;
  // Profile rules as JSON (the cache key), once for both families; undefined: not serializable
  // (not a valid profile anyway), rendered without the cache so render reports what is wrong.
  const rulesJson = new Map<string, { ingress: string | undefined; egress: string | undefined }>();
  for (const name of usedProfiles) {
    const profile = input.profiles.get(name);
    if (profile !== undefined) rulesJson.set(name, { ingress: jsonOf(profile.ingress), egress: jsonOf(profile.egress) });
  }
  let chainsUsed = 0;
  for (const family of FAMILIES) {
    const f = new Map<string, readonly string[]>();
    const n = new Map<string, readonly string[]>();
    filter[family] = f;
    nat[family] = n;
    jumps[family] = [];
    if (!families.includes(family)) continue;

    f.set(names.forward, [
      `-i ${wild} -m conntrack --ctstate INVALID -j DROP`,
      `-o ${wild} -m conntrack --ctstate INVALID -j DROP`,
      `-i ${wild} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
      `-o ${wild} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
      `-i ${wild} -j ${names.fromDispatch}`,
      `-o ${wild} -j ${names.toDispatch}`,
      `-i ${wild} -j ACCEPT`,
      `-o ${wild} -j ACCEPT`,
    ]);
    f.set(names.input, [
      `-i ${wild} -m conntrack --ctstate INVALID -j DROP`,
      `-i ${wild} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
      ...(family === 6 ? ICMPV6_ND_TYPES.map((t) => `-i ${wild} -p ipv6-icmp -m icmp6 --icmpv6-type ${t} -j ACCEPT`) : []),
      `-i ${wild} -j ${names.fromDispatch}`,
      `-i ${wild} -j ACCEPT`,
    ]);

    renderDispatch(f, dispatch, family, ifPrefix, names);

    for (const [chain, rules] of sharedChains) f.set(chain, rules);

    for (const name of usedProfiles) {
      const profile = input.profiles.get(name);
      if (profile === undefined) continue;
      for (const direction of ['ingress', 'egress'] as const) {
        const chain = profileChain.get(name)?.[direction] ?? profileChainName(prefix, direction, name);
        const json = rulesJson.get(name)?.[direction];
        const rendered = profileRules(cache, epoch, { prefix, mark, refs: [] }, family, chain, profile[direction], json);
        chainsUsed++;
        f.set(chain, rendered.rules);
        for (const ref of rendered.refs) {
          if (ref.kind === 'net') sets.set(ref.name, ref.spec);
          else selectorSets.set(ref.name, ref);
        }
      }
    }

    n.set(names.postrouting, renderNat(family, input, prefix, sets));
    jumps[family].push(
      { table: 'filter', from: 'FORWARD', to: names.forward },
      { table: 'filter', from: 'INPUT', to: names.input },
      { table: 'nat', from: 'POSTROUTING', to: names.postrouting },
    );
  }

  const labelsUsed = selectorMembers(cache, epoch, selectorSets, input.remoteAndLocalEndpoints, warnings, sets);
  sweep(cache.chains, epoch, chainsUsed);
  if (cache.endpointRulesCount > 2 * endpointRulesUsed + CACHE_SLACK) {
    // Rare (profile lists churned a lot): start the trie over; the next render refills it.
    cache.endpointRules.clear();
    cache.endpointRulesCount = 0;
  }
  sweep(cache.labels, epoch, labelsUsed);
  sweep(cache.members, epoch, selectorSets.size);
  const sorted = new Map([...sets.entries()].sort((a, b) => cmp(a[0], b[0])));
  return { prefix, filter, nat, jumps, sets: sorted, warnings };
}

const DIRECTIONS = ['egress', 'ingress'] as const;

function endpointRulesRoot(cache: RenderCache, prefix: string, direction: 'egress' | 'ingress', mark: string): EndpointRulesNode {
  // The prefix too: the chain name cached at the root (no profiles) does not contain a profile
  // chain's name, which is what tells prefixes apart further down.
  const key = `${prefix} ${direction} ${mark}`;
  let node = cache.endpointRules.get(key);
  if (node === undefined) {
    node = { next: new Map() };
    cache.endpointRules.set(key, node);
  }
  return node;
}

function jsonOf(rules: readonly Rule[]): string | undefined {
  try {
    return JSON.stringify(rules);
  } catch {
    return undefined; // e.g. a BigInt: let rendering refuse it
  }
}

/** One profile chain in one family, from the cache when its rules are unchanged. Frozen: states
 * share these arrays, and a diff compares them by reference first. */
function profileRules(
  cache: RenderCache,
  epoch: number,
  ctx: Ctx,
  family: Family,
  chain: string,
  rules: readonly Rule[],
  json: string | undefined,
): { readonly rules: readonly string[]; readonly refs: readonly SetRef[] } {
  const key = `${ctx.prefix} ${ctx.mark} ${family} ${chain}`;
  const hit = cache.chains.get(key);
  if (hit !== undefined && json !== undefined && hit.json === json) {
    hit.epoch = epoch;
    return hit;
  }
  const out: string[] = [];
  for (const rule of rules) out.push(...renderRule(rule, family, chain, ctx));
  const rendered = { rules: Object.freeze(out), refs: Object.freeze(ctx.refs) };
  if (json !== undefined) cache.chains.set(key, { epoch, json, ...rendered });
  return rendered;
}

/** Drop the entries the current render did not use once they outnumber the used ones. */
function sweep(map: Map<string, { epoch: number }>, epoch: number, used: number): void {
  if (map.size <= 2 * used + CACHE_SLACK) return;
  for (const [k, v] of map) if (v.epoch !== epoch) map.delete(k);
}

/**
 * Members of the wanted selector sets: the canonical addresses of every endpoint whose labels the
 * selector matches, sorted and unique. Each distinct label set is matched against each selector
 * once and remembered, so a render evaluates selectors only for labels or selectors it has not
 * seen. Also notes invalid addresses (warnings), whether or not any selector is wanted. Returns
 * how many distinct label sets were used.
 */
function selectorMembers(
  cache: RenderCache,
  epoch: number,
  wanted: ReadonlyMap<string, { readonly selector: Selector; readonly family: Family }>,
  endpoints: readonly LabelledEndpoint[],
  warnings: string[],
  sets: Map<string, IpSetSpec>,
): number {
  const distinct = new Set([...wanted.values()].map((w) => w.selector.text)).size;
  const ids = (): Map<string, number> => {
    const out = new Map<string, number>();
    for (const { selector: sel } of wanted.values()) {
      let id = cache.selectorIds.get(sel.text);
      if (id === undefined) {
        id = cache.selectors.length;
        cache.selectors.push(sel);
        cache.selectorIds.set(sel.text, id);
      }
      out.set(sel.text, id);
    }
    return out;
  };
  let idOf = ids();
  if (cache.selectors.length > 2 * distinct + SELECTOR_SLACK) {
    // Mostly selectors no longer used: start over, so new labels are not matched against them.
    cache.selectors = [];
    cache.selectorIds.clear();
    cache.labels.clear();
    idOf = ids();
  }
  const collect4: Array<string[] | undefined> = [];
  const collect6: Array<string[] | undefined> = [];
  for (const { selector: sel, family } of wanted.values()) {
    const id = idOf.get(sel.text) as number;
    (family === 4 ? collect4 : collect6)[id] = [];
  }

  let labelsUsed = 0;
  const known = cache.selectors;
  endpoints.forEach((ep, i) => {
    const v4 = lenientAddresses(ep.ipv4, 4, i, warnings);
    const v6 = lenientAddresses(ep.ipv6, 6, i, warnings);
    if (wanted.size === 0 || v4.length + v6.length === 0) return;
    const key = JSON.stringify(ep.labels);
    let m = cache.labels.get(key);
    if (m === undefined) {
      m = { epoch: -1, labels: Object.freeze(JSON.parse(key) as Labels), checked: 0, matches: [] };
      cache.labels.set(key, m);
    }
    if (m.epoch !== epoch) {
      m.epoch = epoch;
      labelsUsed++;
    }
    for (; m.checked < known.length; m.checked++) if ((known[m.checked] as Selector).matches(m.labels)) m.matches.push(m.checked);
    for (const id of m.matches) {
      const c4 = collect4[id];
      if (c4 !== undefined) for (const a of v4) c4.push(a);
      const c6 = collect6[id];
      if (c6 !== undefined) for (const a of v6) c6.push(a);
    }
  });

  for (const [name, { selector: sel, family }] of wanted) {
    const raw = (family === 4 ? collect4 : collect6)[idOf.get(sel.text) as number] ?? [];
    const prev = cache.members.get(name);
    if (prev !== undefined && prev.spec.family === family && sameStrings(prev.raw, raw)) {
      prev.epoch = epoch;
      sets.set(name, prev.spec);
      continue;
    }
    const spec: IpSetSpec = Object.freeze({ family, type: 'hash:ip' as const, members: Object.freeze(uniqueSorted(raw)) });
    cache.members.set(name, { epoch, raw, spec });
    sets.set(name, spec);
  }
  return labelsUsed;
}

function sameStrings(a: readonly string[], b: readonly string[]): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Sorted (code-unit order, like cmp) without repeats. */
function uniqueSorted(values: readonly string[]): string[] {
  const sorted = [...values].sort();
  let n = 0;
  for (let i = 0; i < sorted.length; i++) if (i === 0 || sorted[i] !== sorted[n - 1]) sorted[n++] = sorted[i] as string;
  sorted.length = n;
  return sorted;
}

const DROP_UNKNOWN = `${comment('unknown or not ready workload')} -j DROP`;
const DROP_NO_EGRESS = `${comment('no profile allowed this egress')} -j DROP`;
const DROP_NO_INGRESS = `${comment('no profile allowed this ingress')} -j DROP`;

/** A ready endpoint as dispatch sees it: its interface, addresses and (shared) policy chains. */
interface DispatchEntry {
  readonly hostIf: string;
  /** Its egress chain (`<p>-fw-<L>`) and ingress chain (`<p>-tw-<L>`). */
  readonly fw: string;
  readonly tw: string;
  readonly v4: readonly string[];
  readonly v6: readonly string[];
}

/**
 * Dispatch by interface. Up to DISPATCH_FLAT_MAX ready endpoints: one flat chain per direction.
 * Beyond that a root chain branches on the first character after the interface prefix to leaf
 * chains `<p>-from-wl-dispatch-<c>` (endpoint IDs are hex, so up to 16 leaves): adding or removing
 * an endpoint then rewrites one small leaf instead of a chain with a rule per endpoint, which is
 * what an iptables-restore of the change costs. The rules go (`-g`) to the endpoint's shared policy
 * chain, so its RETURN (allowed) returns to the chain that called dispatch.
 */
function renderDispatch(
  f: Map<string, readonly string[]>,
  ready: readonly DispatchEntry[],
  family: Family,
  ifPrefix: string,
  names: TopChainNames,
): void {
  const bits = familyBits(family);
  const leafRules = (eps: typeof ready): { from: string[]; to: string[] } => {
    const from: string[] = [];
    const to: string[] = [];
    for (const l of eps) {
      for (const a of family === 4 ? l.v4 : l.v6) from.push(`-s ${a}/${bits} -i ${l.hostIf} -g ${l.fw}`);
      to.push(`-o ${l.hostIf} -g ${l.tw}`);
    }
    from.push(DROP_UNKNOWN);
    to.push(DROP_UNKNOWN);
    return { from, to };
  };
  if (ready.length <= DISPATCH_FLAT_MAX) {
    const { from, to } = leafRules(ready);
    f.set(names.fromDispatch, from);
    f.set(names.toDispatch, to);
    return;
  }
  const groups = new Map<string, Array<(typeof ready)[number]>>();
  for (const l of ready) {
    // Interface names are validated ([A-Za-z0-9_.-]), so the character is safe in a chain name
    // and in an iptables interface wildcard; a name equal to the prefix has no character there.
    const c = l.hostIf.charAt(ifPrefix.length);
    const g = groups.get(c);
    if (g === undefined) groups.set(c, [l]);
    else g.push(l);
  }
  const rootFrom: string[] = [];
  const rootTo: string[] = [];
  const leaves: Array<[string, string[], string[]]> = [];
  for (const [c, eps] of groups) {
    const { from, to } = leafRules(eps);
    if (c === '') {
      // Only the bare prefix: its rules go straight into the roots.
      rootFrom.push(...from.slice(0, -1));
      rootTo.push(...to.slice(0, -1));
      continue;
    }
    const fromLeaf = `${names.fromDispatch}-${c}`;
    const toLeaf = `${names.toDispatch}-${c}`;
    rootFrom.push(`-i ${ifPrefix}${c}+ -g ${fromLeaf}`);
    rootTo.push(`-o ${ifPrefix}${c}+ -g ${toLeaf}`);
    leaves.push([c, from, to]);
  }
  rootFrom.push(DROP_UNKNOWN);
  rootTo.push(DROP_UNKNOWN);
  f.set(names.fromDispatch, rootFrom);
  f.set(names.toDispatch, rootTo);
  for (const [c, from] of leaves) f.set(`${names.fromDispatch}-${c}`, from);
  for (const [c, , to] of leaves) f.set(`${names.toDispatch}-${c}`, to);
}

function renderNat(family: Family, model: PolicyModel, prefix: string, sets: Map<string, IpSetSpec>): string[] {
  const masq = poolNets(model.natOutgoingPools, family, 'natOutgoing pool');
  if (masq.length === 0) return [];
  const pools = poolNets([...model.allPools, ...model.natOutgoingPools], family, 'pool');
  const names = natSetNames(prefix, family);
  sets.set(names.masq, { family, type: 'hash:net', members: masq });
  sets.set(names.pools, { family, type: 'hash:net', members: pools });
  return [
    `-m set --match-set ${names.masq} src -m set ! --match-set ${names.pools} dst ` +
      `${comment('natOutgoing pool to outside all pools')} -j MASQUERADE`,
  ];
}

function poolNets(cidrs: readonly string[], family: Family, what: string): string[] {
  return setMembers(cidrs.map((c) => parseNet(c, what)).filter((c) => c.family === family));
}

/**
 * The iptables rules for one policy rule in one family: zero (the rule cannot match this
 * family), or one or more (ports split across multiport matches).
 */
function renderRule(rule: Rule, family: Family, chain: string, ctx: Ctx): string[] {
  const matches = ruleMatches(rule, family, ctx);
  if (matches === undefined) return [];
  const mark = ctx.mark;
  switch (rule.action) {
    case 'allow':
      return [
        ...matches.map((m) => `${m}-j MARK --set-xmark ${mark}/${mark}`),
        `-m mark --mark ${mark}/${mark} -j RETURN`,
      ];
    case 'deny':
      return matches.map((m) => `${m}-j DROP`);
    case 'log':
      // chain (≤ 28) + ' ' fits LOG's 29-character prefix.
      return matches.map((m) => `${m}-j LOG --log-prefix "${chain} "`);
    default:
      throw new InvalidRequestError(`invalid rule action ${JSON.stringify((rule as { action: unknown }).action)}`);
  }
}

/** Alternatives (each a match text ending in a space, or '' for "anything"), or undefined when
 * the rule cannot match in this family. */
function ruleMatches(rule: Rule, family: Family, ctx: Ctx): string[] | undefined {
  const proto = protocolFor(rule.protocol, family);
  if (proto === null) return undefined;
  let head = proto === undefined ? '' : `-p ${proto} `;

  if (rule.icmp !== undefined || rule.notICMP !== undefined) {
    if (proto !== 'icmp' && proto !== 'ipv6-icmp') {
      throw new InvalidRequestError('an ICMP type or code needs protocol icmp or icmpv6');
    }
    const [mod, opt] = proto === 'icmp' ? ['icmp', '--icmp-type'] : ['icmp6', '--icmpv6-type'];
    if (rule.icmp !== undefined) head += `-m ${mod} ${opt} ${icmpText(rule.icmp)} `;
    if (rule.notICMP !== undefined) head += `-m ${mod} ! ${opt} ${icmpText(rule.notICMP)} `;
  }

  const src = entityMatches(rule.source, 'src', family, ctx);
  const dst = entityMatches(rule.destination, 'dst', family, ctx);
  if (src === undefined || dst === undefined) return undefined;
  head += src + dst;

  const hasPorts = [rule.source, rule.destination].some((e) => (e.ports?.length ?? 0) + (e.notPorts?.length ?? 0) > 0);
  if (hasPorts && proto !== 'tcp' && proto !== 'udp' && proto !== 'sctp') {
    throw new InvalidRequestError('ports need protocol tcp, udp or sctp');
  }
  const portAlternatives = (e: EntityRule, opt: string): string[] => {
    let tail = '';
    for (const chunk of portChunks(e.notPorts ?? [])) tail += `-m multiport ! ${opt} ${chunk} `;
    const pos = portChunks(e.ports ?? []);
    return pos.length === 0 ? [tail] : pos.map((chunk) => `-m multiport ${opt} ${chunk} ${tail}`);
  };
  const out: string[] = [];
  for (const s of portAlternatives(rule.source, '--sports')) {
    for (const d of portAlternatives(rule.destination, '--dports')) out.push(head + s + d);
  }
  return out;
}

/** iptables' name for the protocol; undefined = any; null = cannot match in this family. */
function protocolFor(p: Rule['protocol'], family: Family): string | null | undefined {
  if (p === undefined) return undefined;
  if (typeof p !== 'number' && !Object.hasOwn(PROTOCOL_NUMBERS, p)) {
    throw new InvalidRequestError(`invalid protocol ${JSON.stringify(p)}`);
  }
  const n = protocolNumber(p);
  // Protocol 0 would mean "all" to iptables: refuse it with the rest of the invalid numbers.
  if (!Number.isInteger(n) || n < 1 || n > 255) throw new InvalidRequestError(`invalid protocol number ${n}`);
  if ((n === 1 && family === 6) || (n === 58 && family === 4)) return null;
  // The names iptables-save prints (from /etc/protocols); other numbers stay numbers.
  return ({ 1: 'icmp', 6: 'tcp', 17: 'udp', 58: 'ipv6-icmp', 132: 'sctp' } as Record<number, string>)[n] ?? String(n);
}

function icmpText(m: IcmpMatch): string {
  const byte = (v: number, what: string) => {
    if (!Number.isInteger(v) || v < 0 || v > 255) throw new InvalidRequestError(`invalid ICMP ${what} ${v}: expected 0-255`);
    return String(v);
  };
  return m.code === undefined ? byte(m.type, 'type') : `${byte(m.type, 'type')}/${byte(m.code, 'code')}`;
}

/** Set matches for one side (text ending in a space, or ''), or undefined when this side cannot
 * match in this family (its nets are all of the other family). */
function entityMatches(e: EntityRule, dir: 'src' | 'dst', family: Family, ctx: Ctx): string | undefined {
  let out = '';
  if (e.nets !== undefined && e.nets.length > 0) {
    const nets = setMembers(e.nets.map((c) => parseNet(c, 'net')).filter((c) => c.family === family));
    if (nets.length === 0) return undefined;
    out += `-m set --match-set ${netSet(nets, family, ctx)} ${dir} `;
  }
  if (e.notNets !== undefined && e.notNets.length > 0) {
    // As Felix renders it (and policy/evaluate.ts specifies): a notNets list of only the other
    // family makes the rule belong to that family, rather than match every packet of this one.
    const nets = setMembers(e.notNets.map((c) => parseNet(c, 'notNet')).filter((c) => c.family === family));
    if (nets.length === 0) return undefined;
    out += `-m set ! --match-set ${netSet(nets, family, ctx)} ${dir} `;
  }
  if (e.selector !== undefined) out += `-m set --match-set ${selectorSet(e.selector, family, ctx)} ${dir} `;
  if (e.notSelector !== undefined) out += `-m set ! --match-set ${selectorSet(e.notSelector, family, ctx)} ${dir} `;
  return out;
}

function netSet(members: string[], family: Family, ctx: Ctx): string {
  const name = netSetName(ctx.prefix, family, members);
  ctx.refs.push({ kind: 'net', name, spec: Object.freeze({ family, type: 'hash:net', members: Object.freeze(members) }) });
  return name;
}

function selectorSet(text: string, family: Family, ctx: Ctx): string {
  const sel = selector(text);
  let hash = selectorHash.get(sel.text);
  if (hash === undefined) {
    hash = sha256(sel.text).slice(0, SET_HASH_CHARS);
    if (selectorHash.size >= SELECTOR_CACHE_MAX) selectorHash.clear();
    selectorHash.set(sel.text, hash);
  }
  const name = `${ctx.prefix}-${family}s-${hash}`;
  ctx.refs.push({ kind: 'selector', name, selector: sel, family });
  return name;
}

/** multiport lists of at most 15 slots (a range takes two). */
export function portChunks(ports: readonly PortRange[]): string[] {
  const chunks: string[] = [];
  let cur: string[] = [];
  let slots = 0;
  for (const p of ports) {
    const ok = (v: number) => Number.isInteger(v) && v >= 0 && v <= 65535;
    if (!ok(p.from) || !ok(p.to) || p.from > p.to) {
      throw new InvalidRequestError(`invalid port range ${p.from}-${p.to}: expected 0-65535, from ≤ to`);
    }
    const single = p.from === p.to;
    const need = single ? 1 : 2;
    if (slots + need > MULTIPORT_MAX_SLOTS) {
      chunks.push(cur.join(','));
      cur = [];
      slots = 0;
    }
    cur.push(single ? String(p.from) : `${p.from}:${p.to}`);
    slots += need;
  }
  if (cur.length > 0) chunks.push(cur.join(','));
  return chunks;
}

// ---------------------------------------------------------------------------------------------
// Addresses

/** A CIDR (or a bare address, meaning /32 or /128) from a rule or a pool; refused if invalid,
 * because dropping a net from a deny rule would open what the rule closes. */
function parseNet(text: string, what: string): Cidr {
  if (typeof text !== 'string') throw new InvalidRequestError(`invalid ${what} ${JSON.stringify(text)}`);
  if (!text.includes('/')) {
    const ip = tryParseIp(text);
    if (ip === undefined) throw new InvalidRequestError(`invalid ${what} ${JSON.stringify(text)}`);
    return { family: ip.family, network: ip.value, prefix: familyBits(ip.family) };
  }
  return parseCidr(text, what);
}

/** hash:net members: canonical, /0 split into two /1 (hash:net cannot hold /0), full-length
 * prefixes written bare (as ipset prints them), sorted and unique. */
function setMembers(cidrs: readonly Cidr[]): string[] {
  const out = new Set<string>();
  for (const c of cidrs) {
    const bits = familyBits(c.family);
    if (c.prefix === 0) {
      out.add(formatCidr({ family: c.family, network: 0n, prefix: 1 }));
      out.add(formatCidr({ family: c.family, network: 1n << BigInt(bits - 1), prefix: 1 }));
    } else {
      const s = formatCidr(c);
      out.add(c.prefix === bits ? s.slice(0, s.indexOf('/')) : s);
    }
  }
  return [...out].sort(cmp);
}

function canonicalHostAddresses(values: readonly string[], family: Family, what: string): string[] {
  const out = new Set<string>();
  for (const v of values) {
    const a = hostAddress(v, family);
    if (a === undefined) throw new InvalidRequestError(`invalid IPv${family} address ${JSON.stringify(v)} of ${what}`);
    out.add(a);
  }
  return [...out].sort(cmp);
}

/** Remote data: an invalid address matches no packet, so leaving it out of a set changes
 * nothing; note it and go on rather than stop programming the host. */
function lenientAddresses(values: readonly string[], family: Family, index: number, warnings: string[]): string[] {
  const out: string[] = [];
  for (const v of values) {
    const a = hostAddress(v, family);
    if (a === undefined) warnings.push(`endpoint #${index}: ignored invalid IPv${family} address ${JSON.stringify(v)}`);
    else out.push(a);
  }
  return out;
}

const ADDRESS_CACHE_MAX = 65536;
/** Per family, so a lookup needs no key built from the value. */
const addressCache: Readonly<Record<Family, Map<string, string | null>>> = { 4: new Map(), 6: new Map() };

/** Canonical bare address, or undefined. Cached: the same addresses come by on every apply. */
function hostAddress(value: string, family: Family): string | undefined {
  if (typeof value !== 'string') return undefined;
  const cache = addressCache[family];
  const hit = cache.get(value);
  if (hit !== undefined) return hit ?? undefined;
  const slash = value.indexOf('/');
  const bare = slash < 0 ? value : value.slice(0, slash);
  let out: string | undefined;
  if (slash < 0 || value.slice(slash + 1) === String(familyBits(family))) {
    const ip = tryParseIp(bare);
    if (ip !== undefined && ip.family === family) {
      const s = formatCidr({ family, network: ip.value, prefix: familyBits(family) });
      out = s.slice(0, s.indexOf('/'));
    }
  }
  if (cache.size >= ADDRESS_CACHE_MAX) cache.clear();
  cache.set(value, out ?? null);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Helpers

/** `-m comment --comment ...` quoted the way iptables-save prints it. Only fixed text and
 * validated names reach here; anything else is refused. */
function comment(text: string): string {
  if (!/^[A-Za-z0-9 _.:,\/+-]{1,128}$/.test(text)) throw new InvalidRequestError(`unsafe comment ${JSON.stringify(text)}`);
  return `-m comment --comment ${text.includes(' ') ? `"${text}"` : text}`;
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** iptables-save-like text of one family (filter then nat) and the sets: golden files, debugging. */
export function formatDesiredState(state: DesiredState, family: Family): string {
  const lines: string[] = [];
  for (const table of ['filter', 'nat'] as const) {
    lines.push(`*${table}`);
    const chains = state[table][family];
    for (const chain of chains.keys()) lines.push(`:${chain} - [0:0]`);
    for (const j of state.jumps[family]) if (j.table === table) lines.push(`-A ${j.from} -j ${j.to}`);
    for (const [chain, rules] of chains) for (const r of rules) lines.push(`-A ${chain} ${r}`);
    lines.push('COMMIT');
  }
  for (const [name, s] of state.sets) {
    if (s.family !== family) continue;
    lines.push(`# set ${name} ${s.type}: ${s.members.join(' ')}`);
  }
  return lines.join('\n') + '\n';
}
