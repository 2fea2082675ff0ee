// The RenderCache and the lookups that go through it: what render worked out per model object
// (a local endpoint's validated addresses, a remote endpoint's label key, a profile's rules as
// JSON), profile chains by their rules, endpoint chains by their profile list, dispatch leaves by
// their endpoints, selector matches by the labels' content and selector set members by what was
// collected. A render with a cache returns exactly what one without would.

import { invalidAddressWarning, lenientAddresses } from './addresses.js';
import type { DispatchEntry } from './dispatch.js';
import { sameStrings } from './iptables-text.js';
import type { DesiredState, Family, IpSetSpec, LabelledEndpoint, PolicyEndpoint, PolicyInput } from './render-types.js';
import { renderRule, type Ctx, type SetRef } from './rule-render.js';
import type { Selector } from './selector.js';
import type { Labels, Rule } from './types.js';

interface CachedChain {
  epoch: number;
  /** The profile rules this was rendered from (a hit by identity needs no JSON), and their JSON. */
  source: readonly Rule[];
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

/** A shared endpoint chain (`<p>-fw-<L>` / `<p>-tw-<L>`): its name and rules. */
export interface EndpointChain {
  epoch: number;
  readonly name: string;
  readonly rules: readonly string[];
}

export interface EndpointRulesNode {
  readonly next: Map<string, EndpointRulesNode>;
  /** The shared endpoint chain for the profile list along this path. */
  chain?: EndpointChain;
}

interface CachedMembers {
  epoch: number;
  /** Addresses in endpoint order, as collected (may repeat). */
  readonly raw: readonly string[];
  readonly spec: IpSetSpec;
}

/** A local endpoint as render uses it: worked out once per PolicyEndpoint object. */
export interface LocalEntry {
  readonly hostIf: string;
  readonly ready: boolean;
  readonly v4: readonly string[];
  readonly v6: readonly string[];
  /** Without repeats, in order. */
  readonly profiles: readonly string[];
  /** Its shared chains, and what they were looked up with: which of its profiles exist, and the
   * trie roots (prefix and mark). */
  chains?: {
    readonly existing: readonly boolean[];
    readonly roots: Readonly<Record<'egress' | 'ingress', EndpointRulesNode>>;
    readonly egress: EndpointChain;
    readonly ingress: EndpointChain;
  };
  /** Its last dispatch entry, reused while its policy chains stay the same (dispatch leaves are
   * compared entry by entry, by identity). */
  dispatch?: DispatchEntry;
}

/** A labelled endpoint as selector membership uses it: once per LabelledEndpoint object. */
interface LabelledEntry {
  /** JSON of its labels: the key of RenderCache.labels. */
  readonly key: string;
  readonly v4: readonly string[];
  readonly v6: readonly string[];
  /** Invalid addresses skipped (warnings), IPv4 first. */
  readonly invalid: ReadonlyArray<readonly [Family, string]>;
}

/** One dispatch leaf (or flat dispatch) pair of chains in one family, and the entries it is for. */
export interface DispatchLeaf {
  epoch: number;
  readonly entries: readonly DispatchEntry[];
  readonly from: readonly string[];
  readonly to: readonly string[];
}

/** Entries beyond the ones a render used, kept for undo-like changes before a sweep. */
export const CACHE_SLACK = 1024;
/** Known selectors beyond twice the ones a render uses before they are forgotten. */
const SELECTOR_SLACK = 64;

/**
 * What earlier renders worked out, so that a render after a small change (one endpoint added, one
 * profile edited) redoes only what that change touches, and an unchanged model renders nothing.
 *
 * Two kinds of keys. By object identity (WeakMaps, and the last input): the model's objects are
 * immutable by contract (readonly types; the agent's PolicyState makes a new object for whatever
 * changed and keeps the others), so the same object means the same content and nothing derived
 * from it is recomputed, not even a key. By content: profile chains by their rules' JSON,
 * selector matches by the labels' JSON, set members by what was collected, dispatch leaves by
 * their entries, so an equal object that is not the same one still hits. A render with a cache
 * returns exactly what one without would (test/unit/policy-incremental.test.ts checks this over
 * random change sequences). Entries a render did not use are swept once they outnumber the used
 * ones, so the cache stays in proportion to the model. One cache per dataplane; renders are
 * synchronous, so never interleaved.
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
  /** The local endpoints and the shared endpoint chains of the last render, in order. */
  readonly localOrder: SortedMemo<LocalEntry> = { sorted: [], members: new Set() };
  readonly sharedOrder: SortedMemo<EndpointChain> = { sorted: [], members: new Set() };
  readonly locals = new WeakMap<PolicyEndpoint, LocalEntry>();
  readonly labelled = new WeakMap<LabelledEndpoint, LabelledEntry>();
  /** A profile's rule list → its JSON (undefined: not serializable). */
  readonly ruleJson = new WeakMap<readonly Rule[], string | undefined>();
  /** `<dispatch chain> <family> <leaf>` → the leaf's rules and the entries they came from. */
  readonly leaves = new Map<string, DispatchLeaf>();
  /** The last successful render: the same input again (same objects) gives the same state. The
   * profiles map's entries are kept too: a caller may have updated the map in place. */
  last?: { readonly input: PolicyInput; readonly profiles: ReadonlyArray<readonly [string, unknown]>; readonly state: DesiredState };
}

/** Whether an input is the last one again: the same objects (the profiles map with the same
 * entries) and the same parameters (a no-op render). */
export function sameInput(last: NonNullable<RenderCache['last']>, b: PolicyInput): boolean {
  const a = last.input;
  return (
    a.localEndpoints === b.localEndpoints &&
    a.remoteAndLocalEndpoints === b.remoteAndLocalEndpoints &&
    b.profiles.size === last.profiles.length &&
    last.profiles.every(([name, p]) => b.profiles.get(name) === p) &&
    a.natOutgoingPools === b.natOutgoingPools &&
    a.allPools === b.allPools &&
    a.prefix === b.prefix &&
    a.markBit === b.markBit &&
    a.ifPrefix === b.ifPrefix &&
    a.ipv6 === b.ipv6
  );
}

/** JSON of a profile's rules (the chain cache's content key), once per rule list object. */
export function ruleJson(cache: RenderCache, rules: readonly Rule[]): string | undefined {
  if (cache.ruleJson.has(rules)) return cache.ruleJson.get(rules);
  let json: string | undefined;
  try {
    json = JSON.stringify(rules);
  } catch {
    json = undefined; // e.g. a BigInt: let rendering refuse it
  }
  cache.ruleJson.set(rules, json);
  return json;
}

export function endpointRulesRoot(cache: RenderCache, prefix: string, direction: 'egress' | 'ingress', mark: string): EndpointRulesNode {
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

/** One profile chain in one family, from the cache when its rules are unchanged. Frozen: states
 * share these arrays, and a diff compares them by reference first. */
export function profileRules(
  cache: RenderCache,
  epoch: number,
  ctx: Ctx,
  family: Family,
  chain: string,
  rules: readonly Rule[],
): { readonly rules: readonly string[]; readonly refs: readonly SetRef[] } {
  const key = `${ctx.prefix} ${ctx.mark} ${family} ${chain}`;
  const hit = cache.chains.get(key);
  if (hit !== undefined && hit.source === rules) {
    hit.epoch = epoch;
    return hit;
  }
  const json = ruleJson(cache, rules);
  if (hit !== undefined && json !== undefined && hit.json === json) {
    hit.epoch = epoch;
    hit.source = rules;
    return hit;
  }
  const out: string[] = [];
  for (const rule of rules) out.push(...renderRule(rule, family, chain, ctx));
  const rendered = { rules: Object.freeze(out), refs: Object.freeze(ctx.refs) };
  if (json !== undefined) cache.chains.set(key, { epoch, source: rules, json, ...rendered });
  return rendered;
}

/** Drop the entries the current render did not use once they outnumber the used ones. */
export function sweep(map: Map<string, { epoch: number }>, epoch: number, used: number): void {
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
export function selectorMembers(
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
    let e = cache.labelled.get(ep);
    if (e === undefined) {
      const v4 = lenientAddresses(ep.ipv4, 4);
      const v6 = lenientAddresses(ep.ipv6, 6);
      const invalid = [...v4.invalid.map((v) => [4, v] as const), ...v6.invalid.map((v) => [6, v] as const)];
      e = { key: JSON.stringify(ep.labels), v4: v4.valid, v6: v6.valid, invalid };
      cache.labelled.set(ep, e);
    }
    for (const [family, value] of e.invalid) warnings.push(invalidAddressWarning(i, family, value));
    if (wanted.size === 0 || e.v4.length + e.v6.length === 0) return;
    let m = cache.labels.get(e.key);
    if (m === undefined) {
      m = { epoch: -1, labels: Object.freeze(JSON.parse(e.key) as Labels), checked: 0, matches: [] };
      cache.labels.set(e.key, m);
    }
    if (m.epoch !== epoch) {
      m.epoch = epoch;
      labelsUsed++;
    }
    for (; m.checked < known.length; m.checked++) if ((known[m.checked] as Selector).matches(m.labels)) m.matches.push(m.checked);
    for (const id of m.matches) {
      const c4 = collect4[id];
      if (c4 !== undefined) for (const a of e.v4) c4.push(a);
      const c6 = collect6[id];
      if (c6 !== undefined) for (const a of e.v6) c6.push(a);
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

/** Sorted (code-unit order, like cmp) without repeats. */
function uniqueSorted(values: readonly string[]): string[] {
  const sorted = [...values].sort();
  let n = 0;
  for (let i = 0; i < sorted.length; i++) if (i === 0 || sorted[i] !== sorted[n - 1]) sorted[n++] = sorted[i] as string;
  sorted.length = n;
  return sorted;
}

/** The last result of sortedLike for one list, and its members. */
export interface SortedMemo<T> {
  sorted: readonly T[];
  members: ReadonlySet<T>;
}

/** Fewer new items than this fraction of the list: merge them into the last order. */
const MERGE_FRACTION = 0.125;

/**
 * `items` (distinct) sorted by `key`, as a full sort would, worked out from the last call's order
 * when only a few items are new: the ones gone are dropped and the new ones merged in, which is
 * linear rather than a sort of every item. Updates the memo.
 */
export function sortedLike<T>(memo: SortedMemo<T>, items: readonly T[], key: (item: T) => string): readonly T[] {
  const members = new Set(items);
  const fresh: T[] = [];
  for (const x of items) if (!memo.members.has(x)) fresh.push(x);
  const byKey = (a: T, b: T): number => {
    const ka = key(a);
    const kb = key(b);
    return ka < kb ? -1 : ka > kb ? 1 : 0;
  };
  let sorted: T[];
  if (fresh.length > items.length * MERGE_FRACTION) {
    sorted = [...items].sort(byKey);
  } else {
    fresh.sort(byKey);
    sorted = [];
    let j = 0;
    for (const x of memo.sorted) {
      if (!members.has(x)) continue;
      while (j < fresh.length && byKey(fresh[j] as T, x) < 0) sorted.push(fresh[j++] as T);
      sorted.push(x);
    }
    while (j < fresh.length) sorted.push(fresh[j++] as T);
  }
  memo.sorted = sorted;
  memo.members = members;
  return sorted;
}
