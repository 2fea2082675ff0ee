// The allocation block: a small aligned CIDR (a /26 by default) that one host claims and hands
// addresses out of. Stored as JSON at keys.block(cidr); every change is a compare-and-swap of the
// whole document, so the functions here are pure: they take a block and return a new one, and
// the allocator decides whether the write won.
//
// Stored shape (field order fixed by serializeBlock):
//   {
//     "cidr": "10.0.0.0/26",          canonical, equal to the key's CIDR
//     "affinity": "node-a",           NODENAME of the host that claimed it; null = no host
//     "allocations": [0, null, ...],  one entry per address (ordinal = offset in cidr):
//                                     index into attributes, or null when free
//     "unallocated": [1, 2, ...],     free ordinals in hand-out order; a freed ordinal is
//                                     appended, so a released address is not reused at once
//     "attributes": [{"node": "node-a", "handle": "...", "kind": "container"}]
//   }
// Attributes are shared by allocations with an identical owner and dropped once unreferenced,
// which keeps a block of one owner's addresses small.
//
// Affinity is the plain node name (no 'host:' prefix): hosts are the only thing blocks are affine
// to here, and a prefix would only add a parse step that can fail.

import { CorruptDataError, InvalidRequestError } from '../lib/errors';
import {
  addressCount,
  addressIndex,
  type Cidr,
  formatCidr,
  formatIp,
  isCanonicalCidr,
  nthAddress,
  parseCidr,
  parseIp,
} from './cidr';

/** Largest block this model accepts: arrays stay small enough to rewrite on every allocation
 * (matches the pool bounds: IPv4 /20, IPv6 /116). */
export const MAX_BLOCK_ADDRESSES = 4096;

export type OwnerKind = 'container' | 'gateway' | 'reserved';
const OWNER_KINDS: readonly OwnerKind[] = ['container', 'gateway', 'reserved'];

/** Who holds an address. `handle` is chosen by the caller (e.g. `docker:<PoolID>`); node + handle
 * + kind identify the holder, endpointId is informational. Once the endpoint is known the handle
 * names it too (`<family>#<endpointId>`, see setEndpoint). */
export interface Owner {
  readonly node: string;
  readonly handle: string;
  readonly kind: OwnerKind;
  readonly endpointId?: string;
  /** The workload (container) using the address, once its front end knows it. Informational. */
  readonly containerId?: string;
  /** When the address was handed out (ISO 8601). An allocation whose endpoint is not recorded
   * yet is a request in flight until it is older than the reconciler's grace period; blocks
   * written before this field existed have none. */
  readonly allocatedAt?: string;
}

/** Who asks for a release: must match the owner's node and handle. */
export interface Requester {
  readonly node: string;
  readonly handle: string;
}

export interface Block {
  readonly cidr: string;
  readonly affinity: string | null;
  readonly allocations: readonly (number | null)[];
  readonly unallocated: readonly number[];
  readonly attributes: readonly Owner[];
}

export interface Allocation {
  readonly ip: string;
  readonly ordinal: number;
  readonly owner: Owner;
}

export type AssignSpecificResult =
  | { readonly status: 'assigned'; readonly block: Block; readonly ordinal: number; readonly ip: string }
  /** The same owner (node + handle + kind) already holds it; `block` is the input, unchanged. */
  | { readonly status: 'already-owned'; readonly block: Block; readonly ordinal: number; readonly ip: string }
  | { readonly status: 'taken'; readonly owner: Owner };

export type ReleaseResult =
  | { readonly status: 'released'; readonly block: Block; readonly owner: Owner }
  | { readonly status: 'not-allocated' }
  | { readonly status: 'owned-by-other'; readonly owner: Owner };

// ---------------------------------------------------------------------------------------------
// Owners

/** Separates a handle's family (what its requester names on release) from the endpoint. */
export const HANDLE_ENDPOINT_SEPARATOR = '#';

/** The family of a handle: the handle as the requester gave it, without the endpoint. */
export function handleFamily(handle: string): string {
  const i = handle.indexOf(HANDLE_ENDPOINT_SEPARATOR);
  return i < 0 ? handle : handle.slice(0, i);
}

/** Whether `requester` may release what `holder` holds: its node, and its handle or the handle's
 * family (Docker's ReleaseAddress carries only the pool and the address, so it cannot name the
 * endpoint its allocation has been given since). */
export function releasableBy(holder: Owner, requester: Requester): boolean {
  return holder.node === requester.node && (holder.handle === requester.handle || handleFamily(holder.handle) === requester.handle);
}

/** The handle of an allocation whose endpoint is known: `<family>#<endpointId>`. */
export function endpointHandle(handle: string, endpointId: string): string {
  return `${handleFamily(handle)}${HANDLE_ENDPOINT_SEPARATOR}${endpointId}`;
}

/** The same holder: node, handle family (an allocation whose endpoint is recorded is still its
 * requester's) and kind. */
export function sameOwner(a: Owner, b: Owner): boolean {
  return a.node === b.node && handleFamily(a.handle) === handleFamily(b.handle) && a.kind === b.kind;
}

/** The very same allocation record: owner, endpoint, workload and time. */
export function sameAttribute(a: Owner, b: Owner): boolean {
  return sameOwner(a, b) && a.handle === b.handle && a.endpointId === b.endpointId && a.containerId === b.containerId && a.allocatedAt === b.allocatedAt;
}

/** Checks an owner given by a caller; returns a copy without extra fields. */
export function validateOwner(owner: Owner): Owner {
  const problem = ownerProblem(owner);
  if (problem !== undefined) throw new InvalidRequestError(`invalid address owner: ${problem}`);
  return copyOwner(owner);
}

/** Checks a release requester given by a caller; returns a copy without extra fields. */
export function validateRequester(requester: Requester): Requester {
  const problem = requesterProblem(requester);
  if (problem !== undefined) throw new InvalidRequestError(`invalid release requester: ${problem}`);
  return { node: requester.node, handle: requester.handle };
}

function requesterProblem(value: unknown): string | undefined {
  if (!isRecord(value)) return 'not an object';
  for (const field of ['node', 'handle'] as const) {
    const v = value[field];
    if (typeof v !== 'string' || v === '') return `${field} must be a non-empty string`;
  }
  return undefined;
}

function copyOwner(owner: Owner): Owner {
  const { node, handle, kind, endpointId, containerId, allocatedAt } = owner;
  return {
    node,
    handle,
    kind,
    ...(endpointId !== undefined && { endpointId }),
    ...(containerId !== undefined && { containerId }),
    ...(allocatedAt !== undefined && { allocatedAt }),
  };
}

function ownerProblem(value: unknown): string | undefined {
  const problem = requesterProblem(value);
  if (problem !== undefined) return problem;
  if (!isRecord(value)) return 'not an object';
  if (!OWNER_KINDS.includes(value['kind'] as OwnerKind)) {
    return `kind must be one of ${OWNER_KINDS.join(', ')}`;
  }
  const endpointId = value['endpointId'];
  if (endpointId !== undefined && (typeof endpointId !== 'string' || endpointId === '')) {
    return 'endpointId must be a non-empty string when present';
  }
  const containerId = value['containerId'];
  if (containerId !== undefined && (typeof containerId !== 'string' || containerId === '')) {
    return 'containerId must be a non-empty string when present';
  }
  const allocatedAt = value['allocatedAt'];
  if (allocatedAt !== undefined && (typeof allocatedAt !== 'string' || Number.isNaN(Date.parse(allocatedAt)))) {
    return 'allocatedAt must be an ISO 8601 time when present';
  }
  return undefined;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

// ---------------------------------------------------------------------------------------------
// Construction and queries

export function newBlock(cidr: string, affinity: string | null): Block {
  const parsed = parseCidr(cidr, 'block CIDR');
  const size = addressCount(parsed);
  if (size > BigInt(MAX_BLOCK_ADDRESSES)) {
    throw new InvalidRequestError(
      `block ${cidr} has ${size} addresses; a block may have at most ${MAX_BLOCK_ADDRESSES}`,
    );
  }
  if (affinity === '') throw new InvalidRequestError('block affinity must be a node name or null');
  const n = Number(size);
  return {
    cidr: formatCidr(parsed),
    affinity,
    allocations: new Array<null>(n).fill(null),
    unallocated: Array.from({ length: n }, (_, i) => i),
    attributes: [],
  };
}

function cidrOf(block: Block): Cidr {
  return parseCidr(block.cidr, 'block CIDR');
}

/** Ordinal of ip in block; throws when ip is not inside the block (a caller bug or bad input). */
export function ordinalOf(block: Block, ip: string): number {
  const index = addressIndex(cidrOf(block), parseIp(ip));
  if (index === undefined) {
    throw new InvalidRequestError(`address ${ip} is not inside block ${block.cidr}`);
  }
  return Number(index);
}

export function ipAt(block: Block, ordinal: number): string {
  return formatIp(nthAddress(cidrOf(block), ordinal));
}

export function ownerAt(block: Block, ip: string): Owner | undefined {
  return holderAt(block, ordinalOf(block, ip));
}

/** Who holds the address at ordinal; undefined when it is free (or out of range). */
function holderAt(block: Block, ordinal: number): Owner | undefined {
  const attr = block.allocations[ordinal];
  return attr === null || attr === undefined ? undefined : block.attributes[attr];
}

export function usedCount(block: Block): number {
  return block.allocations.length - block.unallocated.length;
}

export function freeCount(block: Block): number {
  return block.unallocated.length;
}

export function isEmpty(block: Block): boolean {
  return block.unallocated.length === block.allocations.length;
}

export function listAllocations(block: Block): Allocation[] {
  const cidr = cidrOf(block);
  const out: Allocation[] = [];
  block.allocations.forEach((_, ordinal) => {
    const owner = holderAt(block, ordinal);
    if (owner !== undefined) out.push({ ip: formatIp(nthAddress(cidr, ordinal)), ordinal, owner });
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Changes (each returns a new block; the input is never mutated)

/** Index of owner in attributes, appending it when no identical attribute exists. */
function internOwner(attributes: readonly Owner[], owner: Owner): { attributes: Owner[]; index: number } {
  const existing = attributes.findIndex((a) => sameAttribute(a, owner));
  if (existing >= 0) return { attributes: [...attributes], index: existing };
  return { attributes: [...attributes, copyOwner(owner)], index: attributes.length };
}

/** Drops attributes no allocation refers to and renumbers the references. */
function compact(block: Block): Block {
  const used = new Set<number>();
  for (const a of block.allocations) if (a !== null) used.add(a);
  if (used.size === block.attributes.length) return block;
  const renumber = new Map<number, number>();
  const attributes: Owner[] = [];
  block.attributes.forEach((owner, i) => {
    if (used.has(i)) {
      renumber.set(i, attributes.length);
      attributes.push(owner);
    }
  });
  const allocations = block.allocations.map((a) => (a === null ? null : (renumber.get(a) ?? null)));
  return { ...block, allocations, attributes };
}

function assignOrdinal(block: Block, ordinal: number, owner: Owner): Block {
  const { attributes, index } = internOwner(block.attributes, owner);
  const allocations = [...block.allocations];
  allocations[ordinal] = index;
  return {
    ...block,
    allocations,
    unallocated: block.unallocated.filter((o) => o !== ordinal),
    attributes,
  };
}

/** Takes the first free ordinal, or returns undefined when the block is full. */
export function assignNext(
  block: Block,
  owner: Owner,
): { block: Block; ordinal: number; ip: string } | undefined {
  const ordinal = block.unallocated[0];
  if (ordinal === undefined) return undefined;
  return { block: assignOrdinal(block, ordinal, owner), ordinal, ip: ipAt(block, ordinal) };
}

/** Takes exactly ip. Being taken is a normal outcome; asking again as the same owner succeeds
 * without a change, so a replayed request (swarm asks twice) gets the same answer. */
export function assignSpecific(block: Block, ip: string, owner: Owner): AssignSpecificResult {
  const ordinal = ordinalOf(block, ip);
  const canonical = ipAt(block, ordinal);
  const holder = holderAt(block, ordinal);
  if (holder !== undefined) {
    return sameOwner(holder, owner)
      ? { status: 'already-owned', block, ordinal, ip: canonical }
      : { status: 'taken', owner: holder };
  }
  return { status: 'assigned', block: assignOrdinal(block, ordinal, owner), ordinal, ip: canonical };
}

/** Frees ip only for its holder (node and handle must match), so one party's release cannot
 * free an address another party still uses. Releasing a free address is harmless. */
export function release(block: Block, ip: string, requester: Requester, expected?: Owner): ReleaseResult {
  const ordinal = ordinalOf(block, ip);
  const holder = holderAt(block, ordinal);
  if (holder === undefined) return { status: 'not-allocated' };
  if (!releasableBy(holder, requester)) {
    return { status: 'owned-by-other', owner: holder };
  }
  // A conditional release (the reconciler's) frees only the very allocation it saw: not one the
  // same holder got for the same address since.
  if (expected !== undefined && !sameAttribute(holder, expected)) return { status: 'owned-by-other', owner: holder };
  const allocations = [...block.allocations];
  allocations[ordinal] = null;
  const freed: Block = { ...block, allocations, unallocated: [...block.unallocated, ordinal] };
  return { status: 'released', block: compact(freed), owner: holder };
}

/** The block without anything of `node`: its addresses freed, and its affinity dropped if the
 * block was `node`'s (the block then belongs to no host; an empty one can be deleted). */
export function withoutHost(block: Block, node: string): { block: Block; released: number } {
  let out = block;
  let released = 0;
  for (const a of listAllocations(block)) {
    if (a.owner.node !== node) continue;
    const r = release(out, a.ip, { node, handle: a.owner.handle });
    if (r.status === 'released') {
      out = r.block;
      released++;
    }
  }
  if (out.affinity === node) out = { ...out, affinity: null };
  return { block: out, released };
}

/** Records the endpoint (and the container, once known) on an existing allocation, and names the
 * endpoint in its handle, so the allocation can be traced to its endpoint by its handle alone;
 * undefined when ip is not allocated. */
export function setEndpoint(block: Block, ip: string, endpointId: string, containerId?: string): Block | undefined {
  if (endpointId === '') throw new InvalidRequestError('endpoint id must be a non-empty string');
  if (containerId === '') throw new InvalidRequestError('container id must be a non-empty string');
  const ordinal = ordinalOf(block, ip);
  const holder = holderAt(block, ordinal);
  if (holder === undefined) return undefined;
  const handle = endpointHandle(holder.handle, endpointId);
  if (holder.endpointId === endpointId && holder.handle === handle && (containerId === undefined || holder.containerId === containerId)) return block;
  const { attributes, index } = internOwner(block.attributes, { ...holder, handle, endpointId, ...(containerId !== undefined && { containerId }) });
  const allocations = [...block.allocations];
  allocations[ordinal] = index;
  return compact({ ...block, allocations, attributes });
}

// ---------------------------------------------------------------------------------------------
// Codec

export function serializeBlock(block: Block): string {
  return JSON.stringify({
    cidr: block.cidr,
    affinity: block.affinity,
    allocations: block.allocations,
    unallocated: block.unallocated,
    attributes: block.attributes.map(copyOwner),
  });
}

/** Parses and checks a stored block. `source` (usually the key) goes into the error message;
 * `expectedCidr`, when given, must equal the block's cidr (the key and the body must agree). A
 * block whose free list disagrees with its allocations is refused: using it could hand one
 * address out twice. */
export function parseBlock(text: string, source: string, expectedCidr?: string): Block {
  const fail = (problem: string): never => {
    throw new CorruptDataError(`corrupt allocation block at ${source}: ${problem}`);
  };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return fail(`not valid JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  if (!isRecord(value)) return fail('not a JSON object');
  const { cidr, affinity, allocations, unallocated, attributes } = value;
  if (typeof cidr !== 'string' || !isCanonicalCidr(cidr)) {
    return fail(`cidr must be a canonical CIDR string, got ${JSON.stringify(cidr)}`);
  }
  if (expectedCidr !== undefined && cidr !== expectedCidr) {
    return fail(`cidr ${cidr} does not match the key's ${expectedCidr}`);
  }
  const size = addressCount(parseCidr(cidr));
  if (size > BigInt(MAX_BLOCK_ADDRESSES)) return fail(`block of ${size} addresses is too large`);
  if (affinity !== null && (typeof affinity !== 'string' || affinity === '')) {
    return fail('affinity must be a node name or null');
  }
  if (!Array.isArray(attributes)) return fail('attributes must be an array');
  attributes.forEach((a: unknown, i) => {
    const problem = ownerProblem(a);
    if (problem !== undefined) fail(`attributes[${i}]: ${problem}`);
  });
  if (!Array.isArray(allocations) || allocations.length !== Number(size)) {
    return fail(`allocations must be an array of ${size} entries (one per address)`);
  }
  const free = new Set<number>();
  allocations.forEach((a: unknown, ordinal) => {
    if (a === null) free.add(ordinal);
    else if (!Number.isInteger(a) || (a as number) < 0 || (a as number) >= attributes.length) {
      fail(`allocations[${ordinal}] must be null or an index into attributes`);
    }
  });
  if (!Array.isArray(unallocated)) return fail('unallocated must be an array');
  const seen = new Set<number>();
  for (const o of unallocated as unknown[]) {
    if (typeof o !== 'number' || !free.has(o) || seen.has(o)) {
      return fail(`unallocated entry ${JSON.stringify(o)} is not a free ordinal, or is repeated`);
    }
    seen.add(o);
  }
  if (seen.size !== free.size) return fail('unallocated does not list every free ordinal');
  return {
    cidr,
    affinity,
    allocations: allocations as (number | null)[],
    unallocated: unallocated as number[],
    attributes: (attributes as Owner[]).map(copyOwner),
  };
}
