// IPv4/IPv6 address arithmetic on bigint, so one code path serves both families (a v6 pool can
// hold 2^64 blocks; plain numbers lose precision past 2^53). Pure: no I/O, no state.
//
// Parsed values (IpAddress, Cidr) are for computing; strings are what gets stored and compared.
// Every string this module produces is canonical (IPv4 dotted quad, IPv6 RFC 5952 compressed
// lowercase, network address with no host bits), because CIDR strings become datastore keys
// (keys.block(cidr)) and two spellings of one block must never name two keys.

import { isIPv4, isIPv6 } from 'node:net';
import { InvalidRequestError } from '../lib/errors';

export type IpFamily = 4 | 6;

export interface IpAddress {
  readonly family: IpFamily;
  readonly value: bigint;
}

export interface Cidr {
  readonly family: IpFamily;
  /** The network address; host bits are always zero. */
  readonly network: bigint;
  readonly prefix: number;
}

export function familyBits(family: IpFamily): 32 | 128 {
  return family === 4 ? 32 : 128;
}

function familyName(family: IpFamily): string {
  return family === 4 ? 'IPv4' : 'IPv6';
}

// ---------------------------------------------------------------------------------------------
// Addresses

/** Parses an address, or returns undefined. IPv6 zone ids (fe80::1%eth0) are refused: an
 * address stored in a pool or block has no interface scope. */
export function tryParseIp(text: string): IpAddress | undefined {
  if (isIPv4(text)) {
    // isIPv4 already refuses leading zeros and out-of-range octets.
    let value = 0n;
    for (const octet of text.split('.')) value = (value << 8n) | BigInt(Number(octet));
    return { family: 4, value };
  }
  if (isIPv6(text) && !text.includes('%')) return { family: 6, value: parseIpv6(text) };
  return undefined;
}

export function parseIp(text: string, label = 'IP address'): IpAddress {
  const ip = tryParseIp(text);
  if (ip === undefined) {
    throw new InvalidRequestError(
      `invalid ${label} ${JSON.stringify(text)}: expected an IPv4 address (10.0.0.1) or an IPv6 address (fd00::1), without prefix length or zone`,
    );
  }
  return ip;
}

// Only called on text isIPv6 accepted, so the grammar is known to be valid.
function parseIpv6(text: string): bigint {
  const groups = (part: string): number[] => {
    if (part === '') return [];
    const out: number[] = [];
    for (const g of part.split(':')) {
      if (g.includes('.')) {
        // Embedded IPv4 tail (::ffff:1.2.3.4) stands for two 16-bit groups.
        const [a = 0, b = 0, c = 0, d = 0] = g.split('.').map(Number);
        out.push((a << 8) | b, (c << 8) | d);
      } else {
        out.push(parseInt(g, 16));
      }
    }
    return out;
  };
  const gap = text.indexOf('::');
  let all: number[];
  if (gap < 0) {
    all = groups(text);
  } else {
    const head = groups(text.slice(0, gap));
    const tail = groups(text.slice(gap + 2));
    all = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  }
  let value = 0n;
  for (const g of all) value = (value << 16n) | BigInt(g);
  return value;
}

export function formatIp(ip: IpAddress): string {
  if (ip.family === 4) {
    const v = ip.value;
    return [24n, 16n, 8n, 0n].map((s) => String((v >> s) & 0xffn)).join('.');
  }
  const groups: number[] = [];
  for (let i = 7; i >= 0; i--) groups.push(Number((ip.value >> BigInt(i * 16)) & 0xffffn));
  // RFC 5952: compress the longest run of two or more zero groups, the first one on a tie.
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (gs: number[]): string => gs.map((g) => g.toString(16)).join(':');
  if (bestStart < 0) return hex(groups);
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLen))}`;
}

/** Canonical spelling of an address (IPv6 compressed lowercase). */
export function normalizeIp(text: string, label?: string): string {
  return formatIp(parseIp(text, label));
}

export function ipFamily(text: string): IpFamily {
  return parseIp(text).family;
}

// ---------------------------------------------------------------------------------------------
// CIDRs

const PREFIX_PATTERN = /^(0|[1-9][0-9]{0,2})$/;

function hostMask(family: IpFamily, prefix: number): bigint {
  return (1n << BigInt(familyBits(family) - prefix)) - 1n;
}

/** Parses "address/prefix". Any valid IPv6 spelling is accepted (and normalized by formatCidr);
 * host bits must be zero, because 10.0.0.1/24 usually means the user meant something else. */
export function parseCidr(text: string, label = 'CIDR'): Cidr {
  const quoted = JSON.stringify(text);
  const slash = text.indexOf('/');
  if (slash < 0) {
    throw new InvalidRequestError(
      `invalid ${label} ${quoted}: missing prefix length, e.g. 10.0.0.0/24 or fd00::/64`,
    );
  }
  const addressText = text.slice(0, slash);
  const prefixText = text.slice(slash + 1);
  const ip = tryParseIp(addressText);
  if (ip === undefined) {
    throw new InvalidRequestError(
      `invalid ${label} ${quoted}: ${JSON.stringify(addressText)} is not an IPv4 or IPv6 address`,
    );
  }
  const bits = familyBits(ip.family);
  if (!PREFIX_PATTERN.test(prefixText) || Number(prefixText) > bits) {
    throw new InvalidRequestError(
      `invalid ${label} ${quoted}: prefix length must be a number from 0 to ${bits} for ${familyName(ip.family)}`,
    );
  }
  const prefix = Number(prefixText);
  const mask = hostMask(ip.family, prefix);
  if ((ip.value & mask) !== 0n) {
    const network = formatCidr({ family: ip.family, network: ip.value & ~mask, prefix });
    throw new InvalidRequestError(
      `invalid ${label} ${quoted}: host bits are set; the network is ${network}`,
    );
  }
  return { family: ip.family, network: ip.value, prefix };
}

export function formatCidr(cidr: Cidr): string {
  return `${formatIp({ family: cidr.family, value: cidr.network })}/${cidr.prefix}`;
}

/** Canonical spelling of a CIDR; throws InvalidRequestError like parseCidr. */
export function normalizeCidr(text: string, label?: string): string {
  return formatCidr(parseCidr(text, label));
}

/** True only for the exact spelling formatCidr produces: what stored data must use. */
export function isCanonicalCidr(text: string): boolean {
  try {
    return normalizeCidr(text) === text;
  } catch {
    return false;
  }
}

export function containsIp(cidr: Cidr, ip: IpAddress): boolean {
  return cidr.family === ip.family && (ip.value & ~hostMask(cidr.family, cidr.prefix)) === cidr.network;
}

export function containsCidr(outer: Cidr, inner: Cidr): boolean {
  return (
    outer.family === inner.family &&
    outer.prefix <= inner.prefix &&
    containsIp(outer, { family: inner.family, value: inner.network })
  );
}

/** Two CIDRs overlap exactly when one contains the other (prefixes nest). */
export function overlaps(a: Cidr, b: Cidr): boolean {
  return containsCidr(a, b) || containsCidr(b, a);
}

export function addressCount(cidr: Cidr): bigint {
  return 1n << BigInt(familyBits(cidr.family) - cidr.prefix);
}

function toBigIndex(n: bigint | number, what: string): bigint {
  if (typeof n === 'number' && !Number.isSafeInteger(n)) {
    throw new InvalidRequestError(`${what} must be an integer, got ${n}`);
  }
  return BigInt(n);
}

/** The n-th address (0-based) of cidr. */
export function nthAddress(cidr: Cidr, n: bigint | number): IpAddress {
  const i = toBigIndex(n, 'address index');
  const count = addressCount(cidr);
  if (i < 0n || i >= count) {
    throw new InvalidRequestError(
      `address index ${i} is outside ${formatCidr(cidr)}, which has ${count} addresses`,
    );
  }
  return { family: cidr.family, value: cidr.network + i };
}

/** 0-based position of ip inside cidr, or undefined when ip is not inside it. */
export function addressIndex(cidr: Cidr, ip: IpAddress): bigint | undefined {
  return containsIp(cidr, ip) ? ip.value - cidr.network : undefined;
}

// ---------------------------------------------------------------------------------------------
// Blocks: a pool is split into equal, aligned sub-CIDRs addressed by index, so nothing ever
// enumerates them (a /8 with /26 blocks has 262144; a v6 /48 with /122 blocks has 2^74).

function checkBlockPrefix(pool: Cidr, blockPrefix: number): void {
  const bits = familyBits(pool.family);
  if (!Number.isInteger(blockPrefix) || blockPrefix < pool.prefix || blockPrefix > bits) {
    throw new InvalidRequestError(
      `block prefix length ${blockPrefix} does not fit ${formatCidr(pool)}: it must be from ${pool.prefix} to ${bits}`,
    );
  }
}

export function blockCount(pool: Cidr, blockPrefix: number): bigint {
  checkBlockPrefix(pool, blockPrefix);
  return 1n << BigInt(blockPrefix - pool.prefix);
}

/** The n-th block (0-based) of pool. */
export function nthBlock(pool: Cidr, blockPrefix: number, n: bigint | number): Cidr {
  const count = blockCount(pool, blockPrefix);
  const i = toBigIndex(n, 'block index');
  if (i < 0n || i >= count) {
    throw new InvalidRequestError(
      `block index ${i} is outside ${formatCidr(pool)}, which has ${count} blocks of /${blockPrefix}`,
    );
  }
  const size = 1n << BigInt(familyBits(pool.family) - blockPrefix);
  return { family: pool.family, network: pool.network + i * size, prefix: blockPrefix };
}

/** Index of the block of pool that holds ip (or the sub-CIDR), or undefined if outside pool. */
export function blockIndex(pool: Cidr, blockPrefix: number, at: IpAddress | Cidr): bigint | undefined {
  checkBlockPrefix(pool, blockPrefix);
  const value = 'value' in at ? at.value : at.network;
  if (!containsIp(pool, { family: at.family, value })) return undefined;
  return (value - pool.network) >> BigInt(familyBits(pool.family) - blockPrefix);
}

/** The aligned block of the given prefix length that holds ip. */
export function blockContaining(ip: IpAddress, blockPrefix: number): Cidr {
  const bits = familyBits(ip.family);
  if (!Number.isInteger(blockPrefix) || blockPrefix < 0 || blockPrefix > bits) {
    throw new InvalidRequestError(
      `block prefix length ${blockPrefix} is invalid for ${familyName(ip.family)}: it must be from 0 to ${bits}`,
    );
  }
  return { family: ip.family, network: ip.value & ~hostMask(ip.family, blockPrefix), prefix: blockPrefix };
}

/** The address part of "A/N" (or A itself): Docker and our records carry host addresses with
 * their prefix length, the kernel tools and the allocator want them bare. */
export function addressPart(text: string): string {
  return text.replace(/\/\d+$/, '');
}
