// Profile policy → the iptables chains and ipsets a host needs for its local endpoints. Pure: no
// I/O, no clock; the same input always renders the same text, in iptables-save's canonical
// spelling, so a resync can compare what the kernel prints with what is wanted line by line.
// A RenderCache (one per dataplane) remembers what earlier renders worked out, per model object
// and per piece of content, so a render after one change redoes only what it touches (and hands
// the diff the same frozen arrays for everything else), and the same model again renders nothing;
// it never changes the output.
//
// Layout (per family; every name starts with `<prefix>-`, at most 28 characters):
//
//   filter FORWARD → <p>-FORWARD                 (one jump, position 1)
//     -i|-o cali+ INVALID → DROP; RELATED,ESTABLISHED → ACCEPT
//     -i cali+ → clear the mark bit, then <p>-from-wl-dispatch   (sender's egress)
//     -o cali+ → clear the mark bit, then <p>-to-wl-dispatch     (receiver's ingress)
//     -i|-o cali+ → ACCEPT                       (whatever came back passed)
//   filter INPUT → <p>-INPUT                     (workload → host: the workload's egress)
//     -i cali+ INVALID → DROP; RELATED,ESTABLISHED → ACCEPT; [v6: ICMPv6 130-136 → ACCEPT]
//     -i cali+ → clear the mark bit, then <p>-from-wl-dispatch; -i cali+ → ACCEPT
//   <p>-from-wl-dispatch: -s <ip> -i caliX -g <p>-fw-<L> per address of each READY endpoint,
//     then DROP, where L names the endpoint's profile list (below). The source check stops a
//     workload from borrowing a labelled peer's address (selectors are address sets); an unknown
//     or not-ready interface gets only the DROP.
//   <p>-to-wl-dispatch: -o caliX -g <p>-tw-<L> per ready endpoint, then DROP.
//     A family's chains hold only the endpoints with an address in that family, and only their
//     profile lists' and profiles' chains (an IPv4-only workload needs no ip6tables rule).
//     With more than DISPATCH_FLAT_MAX ready endpoints both become a root that branches on the
//     first character after the interface prefix (`-i cali3+ -g <p>-from-wl-dispatch-3`) to
//     leaves holding the rules above, so one endpoint changes one small leaf.
//   <p>-fw-<L> / <p>-tw-<L> (egress / ingress policy of a profile list, shared by every ready
//     endpoint whose existing profiles are that list, in that order; the mark bit is clear on
//     entry): a jump to the first profile's chain, then to each next one only while the mark bit
//     is clear (no profile allowed yet), then DROP unless the mark bit is set; an allowed packet
//     falls off the end, back to <p>-FORWARD / <p>-INPUT. L is the profile's name
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
//
// The pieces live in their own files: render-types.ts (input and output), names.ts (chain and set
// names), rule-render.ts (one policy rule → rule specs), dispatch.ts (the dispatch chains),
// render-cache.ts (RenderCache), addresses.ts and iptables-text.ts (canonical spelling). This file
// assembles them; it re-exports what importers use, so they need not know the layout.

import { InvalidRequestError } from '../lib/errors.js';
import { assertIfName } from '../lib/interface-names.js';
import { canonicalHostAddresses, parseNet, setMembers } from './addresses.js';
import { renderDispatch, type DispatchEntry } from './dispatch.js';
import { comment, cmp, sameStrings } from './iptables-text.js';
import { assertIfPrefix, assertMarkBit, assertPolicyPrefix, endpointChainName, HOST_IF_PREFIX, natSetNames, profileChainName, topChainNames } from './names.js';
import {
  CACHE_SLACK,
  endpointRulesRoot,
  profileRules,
  RenderCache,
  sameInput,
  selectorMembers,
  sortedLike,
  sweep,
  type EndpointChain,
  type EndpointRulesNode,
  type LocalEntry,
} from './render-cache.js';
import { FAMILIES, type ChainMap, type DesiredState, type Family, type IpSetSpec, type PolicyEndpoint, type PolicyInput, type PolicyModel, type TopLevelJump } from './render-types.js';
import type { Selector } from './selector.js';
import type { Profile } from './types.js';

export { DISPATCH_FLAT_MAX } from './dispatch.js';
export { formatDesiredState } from './iptables-text.js';
export {
  assertIfPrefix,
  assertMarkBit,
  assertPolicyPrefix,
  endpointChainName,
  MAX_CHAIN_NAME_LENGTH,
  MAX_SET_NAME_LENGTH,
  natSetNames,
  netSetName,
  ownsChain,
  ownsSet,
  profileChainName,
  selectorSetName,
  topChainNames,
  type TopChainNames,
} from './names.js';
export { RenderCache } from './render-cache.js';
export {
  FAMILIES,
  type ChainMap,
  type DesiredState,
  type Family,
  type IpSetSpec,
  type LabelledEndpoint,
  type PolicyEndpoint,
  type PolicyInput,
  type PolicyModel,
  type PolicyParams,
  type SetType,
  type Table,
  type TopLevelJump,
} from './render-types.js';
export { MULTIPORT_MAX_SLOTS, portChunks } from './rule-render.js';

/** IPv6 neighbour discovery and MLD (130-136), accepted from workloads before policy. */
const ICMPV6_ND_TYPES = [130, 131, 132, 133, 134, 135, 136] as const;

/**
 * The desired state for a model. With a cache (the dataplane's), the model's objects must not be
 * changed after they were rendered: a changed endpoint or profile is a new object (see
 * RenderCache). Without one, every call starts from nothing.
 */
export function renderPolicy(input: PolicyInput, cache: RenderCache = new RenderCache()): DesiredState {
  const last = cache.last;
  if (last !== undefined && sameInput(last, input)) return last.state;
  const prefix = assertPolicyPrefix(input.prefix);
  const mark = assertMarkBit(input.markBit);
  const ifPrefix = assertIfPrefix(input.ifPrefix ?? HOST_IF_PREFIX);
  const families: Family[] = input.ipv6 === false ? [4] : [4, 6];
  const warnings: string[] = [];

  // Local endpoints: validated names, unique interfaces, canonical addresses; by interface.
  const seenIf = new Set<string>();
  const entries = input.localEndpoints.map((ep) => {
    const l = localEntry(cache, ep);
    if (!l.hostIf.startsWith(ifPrefix)) {
      throw new InvalidRequestError(`host interface ${l.hostIf} of endpoint ${ep.id} does not start with ${ifPrefix}`);
    }
    if (seenIf.has(l.hostIf)) throw new InvalidRequestError(`host interface ${l.hostIf} is used by two local endpoints`);
    seenIf.add(l.hostIf);
    return l;
  });
  const ready = sortedLike(cache.localOrder, entries, hostIfOf).filter((l) => l.ready);

  const epoch = ++cache.epoch;
  const sets = new Map<string, IpSetSpec>();
  /** Selector sets wanted, by name: members are filled in after every chain is rendered. */
  const selectorSets = new Map<string, { readonly selector: Selector; readonly family: Family }>();

  // Profiles used by ready local endpoints, in name order, with their chain names and their rules
  // as JSON (the cache key), once for both families; undefined JSON: not serializable (not a valid
  // profile anyway), rendered without the cache so render reports what is wrong.
  const used = new Map<string, Profile>();
  /** Per family, the profiles of the ready endpoints with an address in it: only those get chains
   * there (an IPv4-only workload costs ip6tables nothing). */
  const usedIn: Record<Family, Set<string>> = { 4: new Set(), 6: new Set() };
  for (const l of ready) {
    for (const p of l.profiles) {
      const profile = input.profiles.get(p);
      if (profile === undefined) continue;
      used.set(p, profile);
      if (l.v4.length > 0) usedIn[4].add(p);
      if (l.v6.length > 0) usedIn[6].add(p);
    }
  }
  const usedProfiles = [...used.entries()]
    .sort((a, b) => cmp(a[0], b[0]))
    .map(([name, profile]) => ({
      name,
      profile,
      chains: { ingress: profileChainName(prefix, 'ingress', name), egress: profileChainName(prefix, 'egress', name) },
    }));

  // Endpoint chains are the same in both families: render them once.
  const profileChain = new Map(usedProfiles.map((u) => [u.name, u.chains]));
  // An endpoint chain's rules depend only on the mark and its existing profiles' chains, so
  // endpoints with the same list share one chain (named after the list, rules in a cached, frozen
  // array that the diff compares by reference); the dispatch rules send each interface there.
  const endpointChains: EndpointChain[] = [];
  const dispatch: DispatchEntry[] = [];
  const clearMark = `-j MARK --set-xmark 0x0/${mark}`;
  // A jump or the final DROP only while no profile has allowed the packet. This costs one rule
  // per profile and one per chain; a RETURN after each jump would cost two per profile.
  const unmarked = `-m mark ! --mark ${mark}/${mark}`;
  let endpointRulesUsed = 0;
  const roots = {
    egress: endpointRulesRoot(cache, prefix, 'egress', mark),
    ingress: endpointRulesRoot(cache, prefix, 'ingress', mark),
  };
  for (const l of ready) {
    // Its chains depend on its profile list, which of those profiles exist, the prefix and the
    // mark: the same existing profiles and the same trie roots (prefix and mark) give the same
    // chains, without walking the trie. (Existence is checked, not the map's identity: callers
    // may update a map in place.)
    let mine = l.chains;
    if (mine === undefined || mine.roots.egress !== roots.egress || mine.roots.ingress !== roots.ingress || !sameExisting(l.profiles, mine.existing, profileChain)) {
      const found: Partial<Record<'egress' | 'ingress', EndpointChain>> = {};
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
          const rules: string[] = [];
          const existing: string[] = [];
          for (const p of l.profiles) {
            const chains = profileChain.get(p);
            if (chains === undefined) continue; // unknown profile: no allow from it (fail closed)
            rules.push(existing.length === 0 ? `-j ${chains[direction]}` : `${unmarked} -j ${chains[direction]}`);
            existing.push(p);
          }
          const drop = direction === 'egress' ? DROP_NO_EGRESS : DROP_NO_INGRESS;
          rules.push(existing.length === 0 ? drop : `${unmarked} ${drop}`);
          const name = endpointChainName(prefix, direction === 'egress' ? 'fw' : 'tw', existing);
          cached = { epoch: -1, name, rules: Object.freeze(rules) };
          cache.endpointRulesCount++;
          node.chain = cached;
        }
        found[direction] = cached;
      }
      mine = { existing: l.profiles.map((p) => profileChain.has(p)), roots, egress: found.egress as EndpointChain, ingress: found.ingress as EndpointChain };
      l.chains = mine;
    }
    for (const direction of DIRECTIONS) {
      const cached = mine[direction];
      if (cached.epoch !== epoch) {
        cached.epoch = epoch;
        endpointRulesUsed++;
        endpointChains.push(cached);
      }
    }
    const chainOf = { egress: mine.egress.name, ingress: mine.ingress.name };
    // The same entry object as last time while its chains are the same: dispatch reuses a leaf
    // whose entries are all the same objects.
    let entry = l.dispatch;
    if (entry === undefined || entry.fw !== chainOf.egress || entry.tw !== chainOf.ingress) {
      entry = Object.freeze({ hostIf: l.hostIf, fw: chainOf.egress, tw: chainOf.ingress, v4: l.v4, v6: l.v6 });
      l.dispatch = entry;
    }
    dispatch.push(entry);
  }
  // By name, so the layout reads the same whatever order the endpoints come in.
  const sharedChains = sortedLike(cache.sharedOrder, endpointChains, nameOf);

  const names = topChainNames(prefix);
  const wild = `${ifPrefix}+`;
  const filter = {} as Record<Family, Map<string, readonly string[]>>;
  const nat = {} as Record<Family, Map<string, readonly string[]>>;
  const jumps = {} as Record<Family, TopLevelJump[]>;
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
      // The mark bit says "a profile allowed it" inside one endpoint chain: clear before each
      // dispatch (the sender's egress may have set it before the receiver's ingress runs), here
      // once instead of at the top of every endpoint chain.
      `-i ${wild} ${clearMark}`,
      `-i ${wild} -j ${names.fromDispatch}`,
      `-o ${wild} ${clearMark}`,
      `-o ${wild} -j ${names.toDispatch}`,
      `-i ${wild} -j ACCEPT`,
      `-o ${wild} -j ACCEPT`,
    ]);
    f.set(names.input, [
      `-i ${wild} -m conntrack --ctstate INVALID -j DROP`,
      `-i ${wild} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
      ...(family === 6 ? ICMPV6_ND_TYPES.map((t) => `-i ${wild} -p ipv6-icmp -m icmp6 --icmpv6-type ${t} -j ACCEPT`) : []),
      `-i ${wild} ${clearMark}`,
      `-i ${wild} -j ${names.fromDispatch}`,
      `-i ${wild} -j ACCEPT`,
    ]);

    // An endpoint without an address in this family has nothing here: traffic of this family from
    // it or to it has no route and meets the dispatch chains' DROP (fail closed).
    const here = dispatch.filter((e) => (family === 4 ? e.v4 : e.v6).length > 0);
    renderDispatch(f, here, family, ifPrefix, names, { leaves: cache.leaves, epoch });

    const referenced = new Set(here.flatMap((e) => [e.fw, e.tw]));
    for (const c of sharedChains) if (referenced.has(c.name)) f.set(c.name, c.rules);

    for (const { name, profile, chains } of usedProfiles) {
      if (!usedIn[family].has(name)) continue;
      for (const direction of ['ingress', 'egress'] as const) {
        const chain = chains[direction];
        const rendered = profileRules(cache, epoch, { prefix, mark, refs: [] }, family, chain, profile[direction]);
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
  sweep(cache.leaves, epoch, 0);
  // The few chains and sets rebuilt on every render (top-level, dispatch roots, NAT) keep the last
  // render's arrays when equal, so the diff skips them by reference like everything else.
  const prev = cache.last?.state;
  if (prev !== undefined) {
    for (const family of families) {
      for (const chain of [names.forward, names.input, names.fromDispatch, names.toDispatch]) keepEqual(filter[family], prev.filter[family], chain);
      keepEqual(nat[family], prev.nat[family], names.postrouting);
      for (const name of Object.values(natSetNames(prefix, family))) {
        const now = sets.get(name);
        const before = prev.sets.get(name);
        if (now !== undefined && before !== undefined && before.type === now.type && sameStrings(before.members, now.members)) sets.set(name, before);
      }
    }
  }
  const sorted = new Map([...sets.entries()].sort((a, b) => cmp(a[0], b[0])));
  const state: DesiredState = { prefix, filter, nat, jumps, sets: sorted, warnings };
  cache.last = { input, profiles: [...input.profiles], state };
  return state;
}

const DIRECTIONS = ['egress', 'ingress'] as const;
const hostIfOf = (l: LocalEntry): string => l.hostIf;

function sameExisting(profiles: readonly string[], existing: readonly boolean[], chains: ReadonlyMap<string, unknown>): boolean {
  for (let i = 0; i < profiles.length; i++) if (chains.has(profiles[i] as string) !== existing[i]) return false;
  return true;
}

function keepEqual(now: Map<string, readonly string[]>, before: ChainMap, chain: string): void {
  const a = now.get(chain);
  const b = before.get(chain);
  if (a !== undefined && b !== undefined && a !== b && sameStrings(a, b)) now.set(chain, b);
}
const nameOf = (c: EndpointChain): string => c.name;

/** A local endpoint's interface, canonical addresses and profiles, validated once per object (an
 * invalid one throws every time: nothing is remembered for it). */
function localEntry(cache: RenderCache, ep: PolicyEndpoint): LocalEntry {
  let l = cache.locals.get(ep);
  if (l === undefined) {
    l = {
      hostIf: assertIfName(ep.hostIf, `host interface name of endpoint ${JSON.stringify(ep.id)}`),
      ready: ep.ready,
      v4: canonicalHostAddresses(ep.ipv4, 4, `endpoint ${ep.id}`),
      v6: canonicalHostAddresses(ep.ipv6, 6, `endpoint ${ep.id}`),
      profiles: [...new Set(ep.profiles)],
    };
    cache.locals.set(ep, l);
  }
  return l;
}

const DROP_NO_EGRESS = `${comment('no profile allowed this egress')} -j DROP`;
const DROP_NO_INGRESS = `${comment('no profile allowed this ingress')} -j DROP`;

function renderNat(family: Family, model: PolicyModel, prefix: string, sets: Map<string, IpSetSpec>): string[] {
  const masq = poolNets(model.natOutgoingPools, family, 'natOutgoing pool');
  if (masq.length === 0) return [];
  // natOutgoingPools ⊆ allPools when the agent builds the model; the union keeps a natOutgoing
  // pool from being masqueraded to itself when a caller (a test, a partial model) leaves it out.
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
