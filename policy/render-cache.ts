// The RenderCache and the lookups that go through it: profile chains by their rules' content,
// endpoint chains by their profile list, selector matches by the labels' content and selector set
// members by what was collected. A render with a cache returns exactly what one without would.

import { lenientAddresses } from './addresses.js';
import { sameStrings } from './iptables-text.js';
import type { Family, IpSetSpec, LabelledEndpoint } from './render-types.js';
import { renderRule, type Ctx, type SetRef } from './rule-render.js';
import type { Selector } from './selector.js';
import type { Labels, Rule } from './types.js';

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

export interface EndpointRulesNode {
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
export const CACHE_SLACK = 1024;
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

/** Sorted (code-unit order, like cmp) without repeats. */
function uniqueSorted(values: readonly string[]): string[] {
  const sorted = [...values].sort();
  let n = 0;
  for (let i = 0; i < sorted.length; i++) if (i === 0 || sorted[i] !== sorted[n - 1]) sorted[n++] = sorted[i] as string;
  sorted.length = n;
  return sorted;
}
