// The IP pool: a CIDR that addresses are handed out of, split into blocks of `blockSize`.
// Stored as JSON at keys.pool(cidr). Pure: validation and codec only.
//
// blockSize bounds: IPv4 /20../32, IPv6 /116../128, and never shorter than the pool's own prefix.
// The upper end (one address per block) keeps tiny pools usable; the lower end caps a block at
// 4096 addresses (MAX_BLOCK_ADDRESSES), because a block document is rewritten on every
// allocation and must stay small. The default is Calico's (/26, /122: 64 addresses), or the
// pool's own prefix when the pool is smaller than that (a /28 pool is then one block).

import { CorruptDataError, InvalidRequestError } from '../lib/errors';
import {
  type Cidr,
  type IpFamily,
  blockCount,
  blockIndex,
  containsCidr,
  formatCidr,
  isCanonicalCidr,
  nthBlock,
  overlaps,
  parseCidr,
} from './cidr';

export const DEFAULT_BLOCK_SIZE: Readonly<Record<IpFamily, number>> = { 4: 26, 6: 122 };
export const BLOCK_SIZE_BOUNDS: Readonly<Record<IpFamily, { readonly min: number; readonly max: number }>> = {
  4: { min: 20, max: 32 },
  6: { min: 116, max: 128 },
};

/** Calico's per-pool VXLAN setting: encapsulate traffic to other hosts' blocks of this pool
 * always, only to hosts on another subnet, or never (hosts on another subnet are then
 * unreachable). IPv4 pools only. */
export const VXLAN_MODES = ['Never', 'CrossSubnet', 'Always'] as const;
export type VxlanMode = (typeof VXLAN_MODES)[number];
/** Bytes VXLAN adds to each packet (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14). */
export const VXLAN_OVERHEAD = 50;

export function isVxlanMode(v: unknown): v is VxlanMode {
  return typeof v === 'string' && (VXLAN_MODES as readonly string[]).includes(v);
}

export interface Pool {
  /** Canonical CIDR (see cidr.ts); also the key segment. */
  readonly cidr: string;
  /** Prefix length of the blocks the pool is split into. */
  readonly blockSize: number;
  /** A disabled pool hands out no new addresses; existing ones stay valid. */
  readonly disabled: boolean;
  /** Masquerade traffic from the pool to destinations outside all pools. */
  readonly natOutgoing: boolean;
  /** Encapsulation of traffic to other hosts' blocks of this pool. */
  readonly vxlanMode: VxlanMode;
  /** ISO 8601 time of creation, informational. */
  readonly createdAt?: string;
}

/** What a user or config supplies; omitted fields take their defaults. */
export interface PoolInput {
  readonly cidr: string;
  readonly blockSize?: number;
  readonly disabled?: boolean;
  readonly natOutgoing?: boolean;
  readonly vxlanMode?: string;
  readonly createdAt?: string;
}

export function poolCidr(pool: Pool): Cidr {
  return parseCidr(pool.cidr, 'pool CIDR');
}

export function poolFamily(pool: Pool): IpFamily {
  return poolCidr(pool).family;
}

export function defaultBlockSize(cidr: Cidr): number {
  return Math.max(DEFAULT_BLOCK_SIZE[cidr.family], cidr.prefix);
}

/** Problem with blockSize for this pool, or undefined. Shared by input and stored-data checks. */
function blockSizeProblem(cidr: Cidr, blockSize: unknown): string | undefined {
  const { min, max } = BLOCK_SIZE_BOUNDS[cidr.family];
  const lowest = Math.max(min, cidr.prefix);
  if (typeof blockSize !== 'number' || !Number.isInteger(blockSize) || blockSize < lowest || blockSize > max) {
    return `block size must be a prefix length from ${lowest} to ${max} for ${formatCidr(cidr)}, got ${JSON.stringify(blockSize)}`;
  }
  return undefined;
}

function createdAtProblem(createdAt: unknown): string | undefined {
  if (createdAt === undefined) return undefined;
  if (typeof createdAt !== 'string' || Number.isNaN(Date.parse(createdAt))) {
    return `createdAt must be an ISO 8601 time, got ${JSON.stringify(createdAt)}`;
  }
  return undefined;
}

/** Validates input, normalizes the CIDR and fills defaults. Throws InvalidRequestError. */
export function makePool(input: PoolInput): Pool {
  const cidr = parseCidr(input.cidr, 'pool CIDR');
  const blockSize = input.blockSize ?? defaultBlockSize(cidr);
  const problem = blockSizeProblem(cidr, blockSize) ?? createdAtProblem(input.createdAt);
  if (problem !== undefined) throw new InvalidRequestError(`invalid pool ${input.cidr}: ${problem}`);
  for (const flag of ['disabled', 'natOutgoing'] as const) {
    const v: unknown = input[flag];
    if (v !== undefined && typeof v !== 'boolean') {
      throw new InvalidRequestError(`invalid pool ${input.cidr}: ${flag} must be true or false`);
    }
  }
  const vxlanMode = input.vxlanMode ?? 'Never';
  if (!isVxlanMode(vxlanMode)) {
    throw new InvalidRequestError(`invalid pool ${input.cidr}: vxlanMode must be one of ${VXLAN_MODES.join(', ')}, got ${JSON.stringify(vxlanMode)}`);
  }
  if (vxlanMode !== 'Never' && cidr.family === 6) {
    throw new InvalidRequestError(`invalid pool ${input.cidr}: VXLAN is built for IPv4 pools only; vxlanMode must be Never`);
  }
  return withOptionalCreatedAt(
    {
      cidr: formatCidr(cidr),
      blockSize,
      disabled: input.disabled ?? false,
      natOutgoing: input.natOutgoing ?? false,
      vxlanMode,
    },
    input.createdAt,
  );
}

function withOptionalCreatedAt(pool: Pool, createdAt: string | undefined): Pool {
  return createdAt === undefined ? pool : { ...pool, createdAt };
}

export function encodePool(pool: Pool): string {
  return JSON.stringify(
    withOptionalCreatedAt(
      { cidr: pool.cidr, blockSize: pool.blockSize, disabled: pool.disabled, natOutgoing: pool.natOutgoing, vxlanMode: pool.vxlanMode },
      pool.createdAt,
    ),
  );
}

/** Parses a stored pool. Unknown fields are ignored so a newer writer does not break an older
 * reader; missing or ill-typed known fields are refused with CorruptDataError naming `source`. */
export function decodePool(text: string, source: string, expectedCidr?: string): Pool {
  const fail = (problem: string): never => {
    throw new CorruptDataError(`corrupt IP pool at ${source}: ${problem}`);
  };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return fail(`not valid JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return fail('not a JSON object');
  const v = value as Record<string, unknown>;
  if (typeof v['cidr'] !== 'string' || !isCanonicalCidr(v['cidr'])) {
    return fail(`cidr must be a canonical CIDR string, got ${JSON.stringify(v['cidr'])}`);
  }
  const cidrText = v['cidr'];
  if (expectedCidr !== undefined && cidrText !== expectedCidr) {
    return fail(`cidr ${cidrText} does not match the key's ${expectedCidr}`);
  }
  const cidr = parseCidr(cidrText);
  const problem = blockSizeProblem(cidr, v['blockSize']) ?? createdAtProblem(v['createdAt']);
  if (problem !== undefined) return fail(problem);
  for (const flag of ['disabled', 'natOutgoing']) {
    if (typeof v[flag] !== 'boolean') return fail(`${flag} must be true or false`);
  }
  // Pools stored before VXLAN existed have no vxlanMode: they never encapsulated.
  const vxlanMode = v['vxlanMode'] ?? 'Never';
  if (!isVxlanMode(vxlanMode)) return fail(`vxlanMode must be one of ${VXLAN_MODES.join(', ')}, got ${JSON.stringify(vxlanMode)}`);
  return withOptionalCreatedAt(
    {
      cidr: cidrText,
      blockSize: v['blockSize'] as number,
      disabled: v['disabled'] as boolean,
      natOutgoing: v['natOutgoing'] as boolean,
      vxlanMode,
    },
    v['createdAt'] as string | undefined,
  );
}

/** The lowest-indexed block of pool, at or after index `from` (wrapping around to the start),
 * that overlaps none of `existing` (the CIDRs of blocks already in the datastore), or undefined
 * when the pool has none left. Works on the existing blocks as ranges, so the cost does not
 * depend on how many blocks the pool has. Blocks of an unexpected size are honoured too: handing
 * out an overlapping block could give one address out twice. */
export function firstUnclaimedBlock(pool: Pool, existing: readonly Cidr[], from = 0n): Cidr | undefined {
  const cidr = poolCidr(pool);
  const ranges: Array<readonly [bigint, bigint]> = [];
  for (const b of existing) {
    if (!overlaps(cidr, b)) continue;
    if (containsCidr(b, cidr)) return undefined;
    // Overlapping without containing the pool, b lies inside it, so its index is defined.
    const start = blockIndex(cidr, pool.blockSize, b);
    if (start === undefined) throw new Error(`unreachable: block ${formatCidr(b)} overlaps but is outside ${pool.cidr}`);
    const span = b.prefix >= pool.blockSize ? 1n : 1n << BigInt(pool.blockSize - b.prefix);
    ranges.push([start, start + span]);
  }
  ranges.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const count = blockCount(cidr, pool.blockSize);
  const gapFrom = (first: bigint): bigint => {
    let next = first;
    for (const [start, end] of ranges) {
      if (end <= next) continue;
      if (start > next) break;
      next = end;
    }
    return next;
  };
  const start = from % count;
  const next = gapFrom(start);
  if (next < count) return nthBlock(cidr, pool.blockSize, next);
  const wrapped = start === 0n ? count : gapFrom(0n);
  return wrapped < count ? nthBlock(cidr, pool.blockSize, wrapped) : undefined;
}
