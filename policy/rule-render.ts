// One policy rule → its iptables rule specs in one family: protocol, ICMP type and code, set
// matches for nets and selectors (noting each set a rule names), and ports split across multiport
// matches. An allow sets the mark bit and returns; a deny drops; a log logs and goes on.

import { InvalidRequestError } from '../lib/errors.js';
import { parseNet, setMembers } from './addresses.js';
import { netSetName, selectorSetName } from './names.js';
import type { Family, IpSetSpec } from './render-types.js';
import { parseSelector, type Selector } from './selector.js';
import { PROTOCOL_NUMBERS, protocolNumber, type EntityRule, type IcmpMatch, type PortRange, type Rule } from './types.js';

/** multiport takes at most 15 ports; a range uses two of them. */
export const MULTIPORT_MAX_SLOTS = 15;

// Selectors (parsed once per text)

const SELECTOR_CACHE_MAX = 4096;
const selectorCache = new Map<string, Selector>();

function selector(text: string): Selector {
  let s = selectorCache.get(text);
  if (s === undefined) {
    s = parseSelector(text);
    if (selectorCache.size >= SELECTOR_CACHE_MAX) selectorCache.clear();
    selectorCache.set(text, s);
  }
  return s;
}

/** A set named by a rendered rule: a net set (members known from the rule) or a selector set
 * (members are the addresses of the endpoints whose labels the selector matches). */
export type SetRef =
  | { readonly kind: 'net'; readonly name: string; readonly spec: IpSetSpec }
  | { readonly kind: 'selector'; readonly name: string; readonly selector: Selector; readonly family: Family };

export interface Ctx {
  readonly prefix: string;
  readonly mark: string;
  /** The sets named by the rules rendered so far, in order. */
  readonly refs: SetRef[];
}

/**
 * The iptables rules for one policy rule in one family: zero (the rule cannot match this
 * family), or one or more (ports split across multiport matches).
 */
export function renderRule(rule: Rule, family: Family, chain: string, ctx: Ctx): string[] {
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
  const name = selectorSetName(ctx.prefix, family, sel.text);
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
