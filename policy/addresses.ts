// Addresses and nets as policy writes them: canonical text, the way iptables-save and ipset print
// it. Invalid input from rules, pools and local endpoints is refused; from remote endpoints it is
// noted and left out (it can match no packet).

import { InvalidRequestError } from '../lib/errors.js';
import { familyBits, formatCidr, parseCidr, tryParseIp, type Cidr } from '../ipam/cidr.js';
import { cmp } from './iptables-text.js';
import type { Family } from './render-types.js';

/** A CIDR (or a bare address, meaning /32 or /128) from a rule or a pool; refused if invalid,
 * because dropping a net from a deny rule would open what the rule closes. */
export function parseNet(text: string, what: string): Cidr {
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
export function setMembers(cidrs: readonly Cidr[]): string[] {
  const out = new Set<string>();
  for (const c of cidrs) {
    const bits = familyBits(c.family);
    if (c.prefix === 0) {
      out.add(formatCidr({ family: c.family, network: 0n, prefix: 1 }));
      out.add(formatCidr({ family: c.family, network: 1n << BigInt(bits - 1), prefix: 1 }));
    } else {
      out.add(memberText(c));
    }
  }
  return [...out].sort(cmp);
}

/** A set member as ipset prints it: canonical, a full-length prefix written bare. */
export function memberText(c: Cidr): string {
  const s = formatCidr(c);
  return c.prefix === familyBits(c.family) ? s.slice(0, s.indexOf('/')) : s;
}

export function canonicalHostAddresses(values: readonly string[], family: Family, what: string): string[] {
  const out = new Set<string>();
  for (const v of values) {
    const a = hostAddress(v, family);
    if (a === undefined) throw new InvalidRequestError(`invalid IPv${family} address ${JSON.stringify(v)} of ${what}`);
    out.add(a);
  }
  return [...out].sort(cmp);
}

/** Remote data: an invalid address matches no packet, so leaving it out of a set changes
 * nothing; it is noted (invalidAddressWarning) and skipped rather than stop programming the host.
 * Returns the canonical addresses and the values skipped. */
export function lenientAddresses(values: readonly string[], family: Family): { valid: string[]; invalid: string[] } {
  const valid: string[] = [];
  const invalid: string[] = [];
  for (const v of values) {
    const a = hostAddress(v, family);
    if (a === undefined) invalid.push(v);
    else valid.push(a);
  }
  return { valid, invalid };
}

/** The warning for an invalid address of the index-th endpoint (render's warnings). */
export function invalidAddressWarning(index: number, family: Family, value: string): string {
  return `endpoint #${index}: ignored invalid IPv${family} address ${JSON.stringify(value)}`;
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
    if (ip !== undefined && ip.family === family) out = memberText({ family, network: ip.value, prefix: familyBits(family) });
  }
  if (cache.size >= ADDRESS_CACHE_MAX) cache.clear();
  cache.set(value, out ?? null);
  return out;
}
