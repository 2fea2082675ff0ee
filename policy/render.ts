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
//
// The pieces live in their own files: render-types.ts (input and output), names.ts (chain and set
// names), rule-render.ts (one policy rule → rule specs), dispatch.ts (the dispatch chains),
// render-cache.ts (RenderCache), addresses.ts and iptables-text.ts (canonical spelling). This file
// assembles them; it re-exports what importers use, so they need not know the layout.

import { InvalidRequestError } from '../lib/errors.js';
import { assertIfName, isValidIfName } from '../lib/interface-names.js';
import { canonicalHostAddresses, parseNet, setMembers } from './addresses.js';
import { renderDispatch, type DispatchEntry } from './dispatch.js';
import { comment, cmp } from './iptables-text.js';
import { assertIfPrefix, assertMarkBit, assertPolicyPrefix, endpointChainName, HOST_IF_PREFIX, natSetNames, profileChainName, topChainNames } from './names.js';
import {
  CACHE_SLACK,
  endpointRulesRoot,
  profileRules,
  RenderCache,
  selectorMembers,
  sweep,
  type EndpointRulesNode,
} from './render-cache.js';
import { FAMILIES, type DesiredState, type Family, type IpSetSpec, type PolicyInput, type PolicyModel, type TopLevelJump } from './render-types.js';
import type { Selector } from './selector.js';
import type { Profile, Rule } from './types.js';

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

  // Profiles used by ready local endpoints, in name order, with their chain names and their rules
  // as JSON (the cache key), once for both families; undefined JSON: not serializable (not a valid
  // profile anyway), rendered without the cache so render reports what is wrong.
  const used = new Map<string, Profile>();
  for (const l of ready) {
    for (const p of l.profiles) {
      const profile = input.profiles.get(p);
      if (profile !== undefined) used.set(p, profile);
    }
  }
  const usedProfiles = [...used.entries()]
    .sort((a, b) => cmp(a[0], b[0]))
    .map(([name, profile]) => ({
      name,
      profile,
      chains: { ingress: profileChainName(prefix, 'ingress', name), egress: profileChainName(prefix, 'egress', name) },
      json: { ingress: jsonOf(profile.ingress), egress: jsonOf(profile.egress) },
    }));

  // Endpoint chains are the same in both families: render them once.
  const profileChain = new Map(usedProfiles.map((u) => [u.name, u.chains]));
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

    for (const { profile, chains, json } of usedProfiles) {
      for (const direction of ['ingress', 'egress'] as const) {
        const chain = chains[direction];
        const rendered = profileRules(cache, epoch, { prefix, mark, refs: [] }, family, chain, profile[direction], json[direction]);
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

function jsonOf(rules: readonly Rule[]): string | undefined {
  try {
    return JSON.stringify(rules);
  } catch {
    return undefined; // e.g. a BigInt: let rendering refuse it
  }
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
