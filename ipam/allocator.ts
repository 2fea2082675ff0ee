// The datastore-backed allocator. Every operation is: read → pure decision (block.ts, pool.ts,
// cidr.ts) → one compare-and-swap write → on conflict, read again and decide again. Hosts racing
// for addresses therefore never hand out the same IP, and nobody holds a lock.
//
// Within one process, mutating operations run one at a time: Docker sends concurrent
// RequestAddress calls, and letting them race each other on the same affine block would only
// burn retries. Correctness never depends on this queue; only other processes' writes are
// resolved by compare-and-swap.
//
// Known window: removePool checks that the pool's blocks are empty and then deletes the pool; a
// host that read the pool just before may still claim a block in between, leaving an orphan
// block. release() and findAllocation() still find such blocks (they look blocks up directly).

import { compareRevisions, type Datastore, type KeyValue } from '../datastore/datastore';
import { type Keys, segmentToCidr } from '../datastore/keys';
import {
  ConflictError,
  ContentionError,
  CorruptDataError,
  InvalidRequestError,
  NotFoundError,
  PoolExhaustedError,
  errorMessage,
} from '../lib/errors';
import {
  type Block,
  type Owner,
  type OwnerKind,
  assignNext,
  assignSpecific,
  freeCount,
  isEmpty,
  newBlock,
  ownerAt,
  parseBlock,
  release as releaseInBlock,
  serializeBlock,
  setEndpoint as setEndpointInBlock,
  usedCount,
  validateOwner,
  validateRequester,
} from './block';
import {
  type Cidr,
  type IpAddress,
  type IpFamily,
  blockContaining,
  containsCidr,
  containsIp,
  formatCidr,
  formatIp,
  normalizeCidr,
  overlaps,
  parseCidr,
  parseIp,
} from './cidr';
import {
  type Pool,
  type PoolInput,
  decodePool,
  encodePool,
  firstUnclaimedBlock,
  makePool,
  poolCidr,
} from './pool';

export const DEFAULT_MAX_RETRIES = 100;

export interface AllocatorOptions {
  readonly store: Datastore;
  readonly keys: Keys;
  /** This host's NODENAME: the affinity of blocks it claims, and the default owner node. */
  readonly node: string;
  /** Compare-and-swap conflicts tolerated per operation before ContentionError. */
  readonly maxRetries?: number;
  /** Told about corrupt stored entries that an operation skipped (it goes on with the rest). */
  readonly warn?: (message: string) => void;
}

/** Owner as callers give it; `node` defaults to the allocator's node. */
export interface OwnerInput {
  readonly node?: string;
  readonly handle: string;
  readonly kind: OwnerKind;
  readonly endpointId?: string;
}

/** Release requester; `node` defaults to the allocator's node. */
export interface RequesterInput {
  readonly node?: string;
  readonly handle: string;
}

export interface AutoAssignRequest {
  readonly family: IpFamily;
  /** Restrict to these pool CIDRs, tried in this order. Omitted or empty: every enabled pool of
   * the family, in key order. */
  readonly pools?: readonly string[];
  readonly owner: OwnerInput;
}

export interface AssignedAddress {
  readonly ip: string;
  readonly pool: string;
  /** CIDR of the block the address came from. */
  readonly block: string;
}

export interface AssignIpResult extends AssignedAddress {
  /** The same owner already held the address; nothing was written. */
  readonly alreadyOwned: boolean;
}

export type ReleaseOutcome =
  /** `blockReleased`: the block became empty and was deleted. Only a block affine to this node
   * is deleted, and only when the node holds another block of the same pool with room (the last
   * one is kept, so a freed address is not handed out again at once), or when no pool contains
   * the block any more. An empty block that is kept reports false. */
  | { readonly status: 'released'; readonly owner: Owner; readonly blockReleased: boolean }
  | { readonly status: 'not-allocated' }
  | { readonly status: 'owned-by-other'; readonly owner: Owner };

export interface FoundAllocation {
  readonly ip: string;
  readonly block: string;
  readonly affinity: string | null;
  /** Undefined for a block no pool contains any more (orphaned by a pool removal race). */
  readonly pool: string | undefined;
  readonly owner: Owner;
}

export interface StoredBlock {
  readonly key: string;
  readonly revision: string;
  readonly block: Block;
  readonly pool: string | undefined;
  readonly used: number;
  readonly free: number;
}

export interface CorruptEntry {
  readonly key: string;
  readonly error: string;
}

interface StoredPool {
  readonly key: string;
  readonly revision: string;
  readonly pool: Pool;
  readonly cidr: Cidr;
}

/** A block as read: `block` is undefined when the stored value is corrupt. */
interface ReadBlock {
  readonly key: string;
  readonly revision: string;
  readonly cidr: Cidr;
  readonly block: Block | undefined;
  readonly error: string | undefined;
}

/** Returned by one attempt when its compare-and-swap lost; the attempt is then run again. */
const RETRY = Symbol('retry');
type Attempt<T> = T | typeof RETRY;

export class Allocator {
  readonly node: string;
  private readonly store: Datastore;
  private readonly keys: Keys;
  private readonly maxRetries: number;
  private readonly warn: (message: string) => void;
  private queue: Promise<void> = Promise.resolve();

  constructor(options: AllocatorOptions) {
    if (typeof options.node !== 'string' || options.node === '') {
      throw new InvalidRequestError('allocator node name must be a non-empty string');
    }
    const maxRetries = options.maxRetries ?? DEFAULT_MAX_RETRIES;
    if (!Number.isInteger(maxRetries) || maxRetries < 0) {
      throw new InvalidRequestError(`maxRetries must be a non-negative integer, got ${maxRetries}`);
    }
    this.store = options.store;
    this.keys = options.keys;
    this.node = options.node;
    this.maxRetries = maxRetries;
    this.warn = options.warn ?? (() => undefined);
  }

  // -------------------------------------------------------------------------------------------
  // Pools

  /** Creates the pool if no pool with that CIDR exists; returns the existing one otherwise
   * (with its stored settings, which may differ from `input`). A CIDR overlapping a different
   * pool is refused. */
  async addPool(input: PoolInput): Promise<{ pool: Pool; created: boolean }> {
    const pool = makePool({ ...input, createdAt: input.createdAt ?? new Date().toISOString() });
    const cidr = poolCidr(pool);
    return this.exclusive(async () => {
      const existing = await this.readPools();
      const same = existing.find((p) => p.pool.cidr === pool.cidr);
      if (same !== undefined) return { pool: same.pool, created: false };
      const clash = existing.find((p) => overlaps(p.cidr, cidr));
      if (clash !== undefined) throw overlapError(pool.cidr, clash.pool.cidr);
      const key = this.keys.pool(pool.cidr);
      const written = await this.store.create(key, encodePool(pool));
      if (written === undefined) {
        const raced = await this.getPool(pool.cidr);
        if (raced !== undefined) return { pool: raced, created: false };
        throw new ConflictError(`IP pool ${pool.cidr} was created and removed concurrently; try again`);
      }
      // Two hosts can add overlapping pools at once, each having seen neither. Both look again
      // after writing; the later write (higher revision) withdraws, so exactly one survives.
      const after = await this.readPools();
      const rival = after.find(
        (p) => p.key !== key && overlaps(p.cidr, cidr) && compareRevisions(p.revision, written.revision) < 0,
      );
      if (rival !== undefined) {
        await this.withdrawPool(key, written.revision);
        throw overlapError(pool.cidr, rival.pool.cidr);
      }
      return { pool, created: true };
    });
  }

  /** Deletes the pool we just wrote at `key`. Someone may have changed it since (e.g. disabled
   * it); then the delete loses and is tried again at the new revision, so an overlapping pool is
   * never left behind. */
  private async withdrawPool(key: string, revision: string): Promise<void> {
    let current = revision;
    await this.retrying(`withdraw overlapping IP pool at ${key}`, async (): Promise<Attempt<void>> => {
      if (await this.store.delete(key, current)) return undefined;
      const kv = await this.store.get(key);
      if (kv === undefined) return undefined; // removed by someone else: nothing left to withdraw
      current = kv.revision;
      return RETRY;
    });
  }

  async listPools(): Promise<Pool[]> {
    return (await this.readPools()).map((p) => p.pool);
  }

  async getPool(cidr: string): Promise<Pool | undefined> {
    return (await this.readPool(normalizeCidr(cidr, 'pool CIDR')))?.pool;
  }

  /** Refused (ConflictError) while any block of the pool holds an address; deletes the pool's
   * empty blocks, then the pool. */
  async removePool(cidr: string): Promise<void> {
    const canonical = normalizeCidr(cidr, 'pool CIDR');
    return this.exclusive(() =>
      this.retrying(`remove IP pool ${canonical}`, async (): Promise<Attempt<void>> => {
        const stored = await this.readPool(canonical);
        if (stored === undefined) throw new NotFoundError(`IP pool ${canonical} does not exist`);
        const blocks = (await this.readBlocks()).filter((b) => overlaps(b.cidr, stored.cidr));
        const inUse: string[] = [];
        let used = 0;
        for (const b of blocks) {
          if (b.block === undefined) {
            throw new CorruptDataError(
              `cannot remove IP pool ${canonical}: block ${formatCidr(b.cidr)} is unreadable (${b.error ?? 'corrupt'}); fix or delete ${b.key}`,
            );
          }
          if (!isEmpty(b.block)) {
            inUse.push(b.block.cidr);
            used += usedCount(b.block);
          }
        }
        if (inUse.length > 0) {
          throw new ConflictError(
            `IP pool ${canonical} still has ${used} address${used === 1 ? '' : 'es'} in use (blocks ${inUse.join(', ')}); remove the containers and networks using it first`,
          );
        }
        for (const b of blocks) {
          if (!(await this.store.delete(b.key, b.revision))) return RETRY;
        }
        return (await this.store.delete(stored.key, stored.revision)) ? undefined : RETRY;
      }),
    );
  }

  async setPoolDisabled(cidr: string, disabled: boolean): Promise<Pool> {
    const canonical = normalizeCidr(cidr, 'pool CIDR');
    return this.exclusive(() =>
      this.retrying(`update IP pool ${canonical}`, async (): Promise<Attempt<Pool>> => {
        const stored = await this.readPool(canonical);
        if (stored === undefined) throw new NotFoundError(`IP pool ${canonical} does not exist`);
        if (stored.pool.disabled === disabled) return stored.pool;
        const pool: Pool = { ...stored.pool, disabled };
        const written = await this.store.update(stored.key, encodePool(pool), stored.revision);
        return written === undefined ? RETRY : pool;
      }),
    );
  }

  // -------------------------------------------------------------------------------------------
  // Addresses

  /** Any free address of the family: from this node's blocks, else from a newly claimed block,
   * else borrowed from another node's block. Always a new address: handles are not unique per
   * request (Docker's ReleaseAddress names only pool and address), so nothing is deduplicated. */
  async autoAssign(request: AutoAssignRequest): Promise<AssignedAddress> {
    const owner = this.ownerOf(request.owner);
    const family = request.family;
    if (family !== 4 && family !== 6) {
      throw new InvalidRequestError(`address family must be 4 or 6, got ${String(family)}`);
    }
    const requested = request.pools?.map((c) => normalizeCidr(c, 'pool CIDR'));
    const what = `assign an IPv${family} address`;
    return this.exclusive(() =>
      this.retrying(what, async (): Promise<Attempt<AssignedAddress>> => {
        // Two independent reads: in parallel, since this is on Docker's container start path.
        const [allPools, blocks] = await Promise.all([this.readPools(), this.readBlocks()]);
        const pools = choosePools(allPools, family, requested);
        const poolBlocks = new Map<StoredPool, ReadBlock[]>(
          pools.map((pool) => [pool, blocks.filter((b) => containsCidr(pool.cidr, b.cidr))]),
        );
        const inPool = (pool: StoredPool): ReadBlock[] => poolBlocks.get(pool) ?? [];

        // 1. Blocks this node already holds.
        for (const pool of pools) {
          for (const b of inPool(pool)) {
            if (b.block?.affinity !== this.node) continue;
            const r = await this.casNext(b, b.block, owner, pool);
            if (r !== undefined) return r;
          }
        }
        // 2. Claim the pool's lowest free block. Losing the create race means another host took
        // that block a moment ago; the next one is tried without re-reading.
        for (const pool of pools) {
          const taken = blocks.filter((b) => overlaps(pool.cidr, b.cidr)).map((b) => b.cidr);
          for (;;) {
            const cidr = firstUnclaimedBlock(pool.pool, taken);
            if (cidr === undefined) break;
            const fresh = assignNext(newBlock(formatCidr(cidr), this.node), owner);
            if (fresh === undefined) throw new Error(`unreachable: new block ${formatCidr(cidr)} has no free address`);
            const created = await this.store.create(this.keys.block(fresh.block.cidr), serializeBlock(fresh.block));
            if (created !== undefined) return { ip: fresh.ip, pool: pool.pool.cidr, block: fresh.block.cidr };
            taken.push(cidr);
          }
        }
        // 3. Borrow from blocks held by other nodes (or by none).
        for (const pool of pools) {
          for (const b of inPool(pool)) {
            if (b.block === undefined || b.block.affinity === this.node) continue;
            const r = await this.casNext(b, b.block, owner, pool);
            if (r !== undefined) return r;
          }
        }
        const corrupt = blocks.filter((b) => b.block === undefined).length;
        throw new PoolExhaustedError(
          `no free IPv${family} address in IP pool${pools.length === 1 ? '' : 's'} ${pools.map((p) => p.pool.cidr).join(', ')}: every address is in use` +
            (corrupt > 0 ? ` (${corrupt} unreadable block${corrupt === 1 ? '' : 's'} skipped)` : ''),
        );
      }),
    );
  }

  /** Reserves exactly `ip`, which must lie in a pool. A disabled pool refuses new reservations,
   * as Calico's does, but a holder asking again for what it already holds succeeds: that replay
   * is what Docker (notably swarm) does. The block is claimed for this node if nobody has it. */
  async assignIp(request: { readonly ip: string; readonly owner: OwnerInput }): Promise<AssignIpResult> {
    const owner = this.ownerOf(request.owner);
    const ip = parseIp(request.ip, 'requested address');
    const text = formatIp(ip);
    return this.exclusive(() =>
      this.retrying(`assign address ${text}`, async (): Promise<Attempt<AssignIpResult>> => {
        // Two independent reads: in parallel, since this is on Docker's container start path.
        const [pools, blocks] = await Promise.all([this.readPools(), this.readBlocks()]);
        const pool = pools.find((p) => containsIp(p.cidr, ip));
        if (pool === undefined) {
          throw new InvalidRequestError(
            `address ${text} is not inside any IP pool (${pools.length === 0 ? 'no pools are configured' : `pools: ${pools.map((p) => p.pool.cidr).join(', ')}`}); choose an address inside a pool`,
          );
        }
        const disabled = (): ConflictError =>
          new ConflictError(`address ${text} is in IP pool ${pool.pool.cidr}, which is disabled: no new addresses are assigned from it`);
        const found = blocks.find((b) => containsIp(b.cidr, ip));
        if (found === undefined) {
          if (pool.pool.disabled) throw disabled();
          const blockCidr = blockContaining(ip, pool.pool.blockSize);
          // A stored block of another size (the pool's block size changed, or a hand-written
          // block) may overlap the one we would create without holding ip; creating ours anyway
          // would let both hand out the addresses they share.
          const clash = blocks.find((b) => overlaps(b.cidr, blockCidr));
          if (clash !== undefined) {
            throw new ConflictError(
              `cannot claim block ${formatCidr(blockCidr)} for address ${text}: it overlaps the existing block ${formatCidr(clash.cidr)} (stored at ${clash.key}), whose size differs from IP pool ${pool.pool.cidr}'s block size /${pool.pool.blockSize}`,
            );
          }
          const block = newBlock(formatCidr(blockCidr), this.node);
          const r = assignSpecific(block, text, owner);
          if (r.status !== 'assigned') throw new Error(`unreachable: fresh block refused ${text}`);
          const created = await this.store.create(this.keys.block(block.cidr), serializeBlock(r.block));
          return created === undefined ? RETRY : { ip: r.ip, pool: pool.pool.cidr, block: block.cidr, alreadyOwned: false };
        }
        const block = requireReadable(found);
        const r = assignSpecific(block, text, owner);
        switch (r.status) {
          case 'taken':
            throw new ConflictError(`address ${text} is already in use (held by ${describeOwner(r.owner)})`);
          case 'already-owned':
            return { ip: r.ip, pool: pool.pool.cidr, block: block.cidr, alreadyOwned: true };
          case 'assigned': {
            if (pool.pool.disabled) throw disabled();
            const written = await this.store.update(found.key, serializeBlock(r.block), found.revision);
            return written === undefined ? RETRY : { ip: r.ip, pool: pool.pool.cidr, block: block.cidr, alreadyOwned: false };
          }
        }
      }),
    );
  }

  /** Frees `ip` if `requester` holds it. An address that is free or outside every block is
   * reported, not an error, so a repeated release is harmless. */
  async release(request: { readonly ip: string; readonly requester: RequesterInput }): Promise<ReleaseOutcome> {
    const ip = parseIp(request.ip, 'address to release');
    const text = formatIp(ip);
    const requester = validateRequester({
      node: request.requester.node ?? this.node,
      handle: request.requester.handle,
    });
    return this.exclusive(() =>
      this.retrying(`release address ${text}`, async (): Promise<Attempt<ReleaseOutcome>> => {
        const blocks = await this.readBlocks();
        const found = blocks.find((b) => containsIp(b.cidr, ip));
        if (found === undefined) return { status: 'not-allocated' };
        const r = releaseInBlock(requireReadable(found), text, requester);
        if (r.status !== 'released') return r;
        const written = await this.store.update(found.key, serializeBlock(r.block), found.revision);
        if (written === undefined) return RETRY;
        const blockReleased =
          isEmpty(r.block) &&
          r.block.affinity === this.node &&
          (await this.releaseSpareBlock(found, written.revision, blocks));
        return { status: 'released', owner: r.owner, blockReleased };
      }),
    );
  }

  /** Records the endpoint on an existing allocation (after Docker tells us which endpoint got
   * the address). NotFoundError when the address is not allocated. */
  async setEndpoint(ip: string, endpointId: string): Promise<Owner> {
    const parsed = parseIp(ip);
    const text = formatIp(parsed);
    return this.exclusive(() =>
      this.retrying(`record endpoint of ${text}`, async (): Promise<Attempt<Owner>> => {
        const found = await this.findBlock(parsed);
        const block = found === undefined ? undefined : requireReadable(found);
        const updated = block === undefined ? undefined : setEndpointInBlock(block, text, endpointId);
        const owner = updated === undefined ? undefined : ownerAt(updated, text);
        if (found === undefined || updated === undefined || owner === undefined) {
          throw new NotFoundError(`address ${text} is not allocated`);
        }
        if (updated === block) return owner;
        const written = await this.store.update(found.key, serializeBlock(updated), found.revision);
        return written === undefined ? RETRY : owner;
      }),
    );
  }

  async findAllocation(ip: string): Promise<FoundAllocation | undefined> {
    const parsed = parseIp(ip);
    const text = formatIp(parsed);
    const found = await this.findBlock(parsed);
    if (found === undefined) return undefined;
    const block = requireReadable(found);
    const owner = ownerAt(block, text);
    if (owner === undefined) return undefined;
    const pool = (await this.readPools()).find((p) => containsCidr(p.cidr, found.cidr));
    return { ip: text, block: block.cidr, affinity: block.affinity, pool: pool?.pool.cidr, owner };
  }

  /** Every readable block with its revision, pool and counts (for `ipam show`), in key order.
   * Unreadable blocks are left out here and reported by listCorruptBlocks(). */
  async listBlocks(): Promise<StoredBlock[]> {
    const pools = await this.readPools();
    const out: StoredBlock[] = [];
    for (const b of await this.readBlocks()) {
      if (b.block === undefined) continue;
      out.push({
        key: b.key,
        revision: b.revision,
        block: b.block,
        pool: pools.find((p) => containsCidr(p.cidr, b.cidr))?.pool.cidr,
        used: usedCount(b.block),
        free: freeCount(b.block),
      });
    }
    return out;
  }

  /** Stored blocks that fail validation, with the reason: they are skipped by allocation but
   * still count as claimed, so an operator has to fix or delete them. */
  async listCorruptBlocks(): Promise<CorruptEntry[]> {
    return (await this.readBlocks()).flatMap((b) =>
      b.block === undefined ? [{ key: b.key, error: b.error ?? 'corrupt' }] : [],
    );
  }

  // -------------------------------------------------------------------------------------------
  // Reads and retries

  private ownerOf(input: OwnerInput): Owner {
    const { handle, kind, endpointId } = input;
    const node = input.node ?? this.node;
    return validateOwner(endpointId === undefined ? { node, handle, kind } : { node, handle, kind, endpointId });
  }

  /** Corrupt pools are skipped (with a warning) so one bad entry does not stop allocation from
   * the others. */
  private async readPools(): Promise<StoredPool[]> {
    const prefix = this.keys.poolsPrefix();
    const { items } = await this.store.list(prefix);
    const pools: StoredPool[] = [];
    for (const kv of items) {
      try {
        const pool = decodePool(kv.value, kv.key, keyCidr(kv.key, prefix));
        pools.push({ key: kv.key, revision: kv.revision, pool, cidr: poolCidr(pool) });
      } catch (err) {
        this.warn(`skipping IP pool: ${errorMessage(err)}`);
      }
    }
    return pools;
  }

  private async readPool(canonicalCidr: string): Promise<StoredPool | undefined> {
    const key = this.keys.pool(canonicalCidr);
    const kv = await this.store.get(key);
    if (kv === undefined) return undefined;
    const pool = decodePool(kv.value, key, canonicalCidr);
    return { key, revision: kv.revision, pool, cidr: poolCidr(pool) };
  }

  /** Corrupt blocks are returned without a body: allocation skips them, but they still count as
   * claimed so nobody overwrites them. A key whose name is not a CIDR is ignored. */
  private async readBlocks(): Promise<ReadBlock[]> {
    const prefix = this.keys.blocksPrefix();
    const { items } = await this.store.list(prefix);
    const blocks: ReadBlock[] = [];
    for (const kv of items) {
      const cidrText = keyCidr(kv.key, prefix);
      let cidr: Cidr;
      try {
        cidr = parseCidr(cidrText);
      } catch {
        this.warn(`ignoring ${kv.key}: the key does not name a block CIDR`);
        continue;
      }
      blocks.push(readBlock(kv, cidr, cidrText));
    }
    return blocks;
  }

  /** An empty block of ours goes back to the pool only while we hold another block of the same
   * pool with room: the last one is kept so that a freed address goes to the back of its free
   * list instead of being handed out again at once from a freshly claimed block. If anything
   * touched the block meanwhile the delete just fails, which is fine: it is in use again.
   * `blocks` is the listing the release itself was decided on: it may be slightly stale about
   * the other blocks, but the delete is protected by the empty block's revision, and a spare
   * that filled up meanwhile only means the next allocation claims a new block. */
  private async releaseSpareBlock(empty: ReadBlock, revision: string, blocks: readonly ReadBlock[]): Promise<boolean> {
    const pool = (await this.readPools()).find((p) => containsCidr(p.cidr, empty.cidr));
    if (pool === undefined) return this.store.delete(empty.key, revision);
    const spare = blocks.some(
      (b) => b.key !== empty.key && b.block?.affinity === this.node && containsCidr(pool.cidr, b.cidr) && freeCount(b.block) > 0,
    );
    return spare && this.store.delete(empty.key, revision);
  }

  /** The stored block containing ip, if any. Looked up among stored blocks rather than computed
   * from the pool's block size, so it also finds blocks whose pool is gone. */
  private async findBlock(ip: IpAddress): Promise<ReadBlock | undefined> {
    return (await this.readBlocks()).find((b) => containsIp(b.cidr, ip));
  }

  /** Writes the next free address of block: undefined when the block is full, RETRY when the
   * compare-and-swap lost. */
  private async casNext(
    read: ReadBlock,
    block: Block,
    owner: Owner,
    pool: StoredPool,
  ): Promise<Attempt<AssignedAddress | undefined>> {
    const next = assignNext(block, owner);
    if (next === undefined) return undefined;
    const written = await this.store.update(read.key, serializeBlock(next.block), read.revision);
    return written === undefined ? RETRY : { ip: next.ip, pool: pool.pool.cidr, block: block.cidr };
  }

  private async retrying<T>(what: string, attempt: () => Promise<Attempt<T>>): Promise<T> {
    for (let conflicts = 0; ; conflicts++) {
      const result = await attempt();
      if (result !== RETRY) return result;
      if (conflicts >= this.maxRetries) {
        throw new ContentionError(
          `${what}: gave up after ${conflicts + 1} attempts, other hosts kept changing the same IPAM data; try again`,
        );
      }
    }
  }

  private exclusive<T>(op: () => Promise<T>): Promise<T> {
    const run = this.queue.then(op);
    this.queue = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }
}

function keyCidr(key: string, prefix: string): string {
  return segmentToCidr(key.slice(prefix.length));
}

function readBlock(kv: KeyValue, cidr: Cidr, cidrText: string): ReadBlock {
  try {
    const block = parseBlock(kv.value, kv.key, cidrText);
    return { key: kv.key, revision: kv.revision, cidr, block, error: undefined };
  } catch (err) {
    return { key: kv.key, revision: kv.revision, cidr, block: undefined, error: errorMessage(err) };
  }
}

function requireReadable(b: ReadBlock): Block {
  if (b.block === undefined) throw new CorruptDataError(b.error ?? `corrupt allocation block at ${b.key}`);
  return b.block;
}

function describeOwner(owner: Owner): string {
  const endpoint = owner.endpointId === undefined ? '' : `, endpoint ${owner.endpointId}`;
  return `${owner.kind} ${owner.handle} on node ${owner.node}${endpoint}`;
}

function overlapError(cidr: string, existing: string): ConflictError {
  return new ConflictError(
    `IP pool ${cidr} overlaps existing IP pool ${existing}; choose a CIDR outside it or remove ${existing} first`,
  );
}

/** The pools autoAssign may use, in the order to try them. */
function choosePools(all: StoredPool[], family: IpFamily, requested: readonly string[] | undefined): StoredPool[] {
  const v = `IPv${family}`;
  if (requested === undefined || requested.length === 0) {
    const usable = all.filter((p) => p.cidr.family === family && !p.pool.disabled);
    if (usable.length === 0) {
      const disabled = all.filter((p) => p.cidr.family === family).map((p) => p.pool.cidr);
      throw new PoolExhaustedError(
        disabled.length === 0
          ? `no ${v} IP pool is configured; add one`
          : `no enabled ${v} IP pool: ${disabled.join(', ')} ${disabled.length === 1 ? 'is' : 'are'} disabled`,
      );
    }
    return usable;
  }
  const chosen: StoredPool[] = [];
  const disabled: string[] = [];
  for (const cidr of requested) {
    const p = all.find((x) => x.pool.cidr === cidr);
    if (p === undefined) throw new NotFoundError(`IP pool ${cidr} does not exist`);
    if (p.cidr.family !== family) {
      throw new InvalidRequestError(`IP pool ${cidr} is IPv${p.cidr.family}, but an ${v} address was requested`);
    }
    if (p.pool.disabled) disabled.push(cidr);
    else chosen.push(p);
  }
  if (chosen.length === 0) {
    throw new PoolExhaustedError(
      `no ${v} address can be assigned: IP pool ${disabled.join(', ')} ${disabled.length === 1 ? 'is' : 'are'} disabled`,
    );
  }
  return chosen;
}
