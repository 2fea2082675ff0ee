// The dispatch chains: each ready endpoint's interface (and, from it, its addresses) → its shared
// policy chains; anything else is dropped. Flat for a few endpoints, a two-level tree for more.

import { familyBits } from '../ipam/cidr.js';
import { comment } from './iptables-text.js';
import type { TopChainNames } from './names.js';
import type { DispatchLeaf } from './render-cache.js';
import type { Family } from './render-types.js';

/** Ready endpoints up to which dispatch is one flat chain per direction. */
export const DISPATCH_FLAT_MAX = 16;

const DROP_UNKNOWN = `${comment('unknown or not ready workload')} -j DROP`;

/** A ready endpoint as dispatch sees it: its interface, addresses and (shared) policy chains. */
export interface DispatchEntry {
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
 *
 * With a memo (the RenderCache's), a leaf whose entries are the same objects as in the last render
 * keeps its frozen rule arrays: only the leaves a change touches are rebuilt, and the diff skips
 * the others by reference. `epoch` marks the memo entries this render used.
 */
export function renderDispatch(
  f: Map<string, readonly string[]>,
  ready: readonly DispatchEntry[],
  family: Family,
  ifPrefix: string,
  names: TopChainNames,
  memo?: { readonly leaves: Map<string, DispatchLeaf>; readonly epoch: number },
): void {
  const bits = familyBits(family);
  const leafRules = (eps: typeof ready, leaf: string): { readonly from: readonly string[]; readonly to: readonly string[] } => {
    const key = `${names.fromDispatch} ${family} ${leaf}`;
    const hit = memo?.leaves.get(key);
    if (hit !== undefined && sameEntries(hit.entries, eps)) {
      hit.epoch = memo?.epoch ?? -1;
      return hit;
    }
    const from: string[] = [];
    const to: string[] = [];
    for (const l of eps) {
      for (const a of family === 4 ? l.v4 : l.v6) from.push(`-s ${a}/${bits} -i ${l.hostIf} -g ${l.fw}`);
      to.push(`-o ${l.hostIf} -g ${l.tw}`);
    }
    from.push(DROP_UNKNOWN);
    to.push(DROP_UNKNOWN);
    const out = { from: Object.freeze(from), to: Object.freeze(to) };
    if (memo !== undefined) memo.leaves.set(key, { epoch: memo.epoch, entries: eps, ...out });
    return out;
  };
  if (ready.length <= DISPATCH_FLAT_MAX) {
    const { from, to } = leafRules(ready, '');
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
  const leaves: Array<[string, readonly string[], readonly string[]]> = [];
  for (const [c, eps] of groups) {
    // '+' (not an interface name character) keeps leaf keys apart from the flat chains' ''.
    const { from, to } = leafRules(eps, `+${c}`);
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

function sameEntries(a: readonly DispatchEntry[], b: readonly DispatchEntry[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
