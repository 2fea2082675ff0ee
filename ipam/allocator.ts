// The datastore-backed allocator. Every operation is: read → pure decision (block.ts, pool.ts,
// cidr.ts) → one conditional write → on conflict, read again and decide again (datastore/cas.ts).
// Hosts racing for addresses therefore never hand out the same IP, and nobody holds a lock.
//
// Cost does not grow with the cluster: the common path reads the pools and this host's own
// blocks (ipam-store.ts keeps a per-host index), and an address's block is a key computed from the
// address and its pool's block size. Only claiming a block, borrowing, and the conclusion that a
// pool is full read a whole pool's blocks.
//
// The common path does not even read: the allocator keeps a view of the pools and of this host's
// blocks as it last read or wrote them, and allocates or releases with one conditional write on
// it. That is safe because each such write is conditional on the block's revision (and, when it
// allocates, on its pool's) in one commit: a stale view costs one lost write, after which the
// operation reads afresh. A negative answer ("full", "not allocated") is never given from the view.
//
// "Pool full" is only ever concluded by an attempt that lost no race: a lost create or
// compare-and-swap means the state it decided on is gone, so it reads again (within the retry
// budget) instead of concluding anything from it.
//
// Within one process, mutating operations run one at a time: Docker sends concurrent
// RequestAddress calls, and letting them race each other on the same affine block would only
// burn retries. Correctness never depends on this queue; only other processes' writes are
// resolved by compare-and-swap. A plugin request waits for its turn only until its deadline.

import { RETRY, casLoop, type Attempt, DEFAULT_MAX_CONFLICTS } from '../datastore/cas';
import { compareRevisions, type Datastore } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import {
  ConflictError,
  CorruptDataError,
  DatastoreUnavailableError,
  InvalidRequestError,
  NotFoundError,
  PoolExhaustedError,
} from '../lib/errors';
import { requestDeadline, type RequestDeadline } from '../lib/request-deadline';
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
  release as releaseInBlock,
  setEndpoint as setEndpointInBlock,
  usedCount,
  validateOwner,
  validateRequester,
  withoutHost,
} from './block';
import {
  type IpAddress,
  type IpFamily,
  blockContaining,
  containsCidr,
  containsIp,
  formatCidr,
  formatIp,
  normalizeCidr,
  overlaps,
  parseIp,
} from './cidr';
import { DatastoreIpamStore, type IpamStore, type ReadBlock, type StoredPool } from './ipam-store';
import { BLOCK_SIZE_BOUNDS, type Pool, type PoolInput, firstUnclaimedBlock, makePool, poolCidr } from './pool';

export const DEFAULT_MAX_RETRIES = DEFAULT_MAX_CONFLICTS;

export interface AllocatorOptions {
  readonly store: Datastore;
  readonly keys: Keys;
  /** This host's NODENAME: the affinity of blocks it claims, and the default owner node. */
  readonly node: string;
  /** Conflicts (lost creates or compare-and-swaps) tolerated per operation before ContentionError. */
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
  /** When the address is handed out (ISO 8601); see Owner.allocatedAt. */
  readonly allocatedAt?: string;
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
  /** Undefined for a block no pool contains any more. */
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

/** Counters for benchmarks and metrics. */
export interface AllocatorStats {
  /** Mutating operations run. */
  operations: number;
  /** Attempts that lost a race and ran again. */
  conflicts: number;
}

export class Allocator {
  readonly node: string;
  readonly stats: AllocatorStats = { operations: 0, conflicts: 0 };
  private readonly ipam: IpamStore;
  private readonly maxRetries: number;
  private queue: Promise<void> = Promise.resolve();
  private readonly storeDescription: string;
  /** Pools and this host's blocks as last read or written; see the header comment. */
  private view: HostView | undefined;

  constructor(options: AllocatorOptions) {
    if (typeof options.node !== 'string' || options.node === '') {
      throw new InvalidRequestError('allocator node name must be a non-empty string');
    }
    const maxRetries = options.maxRetries ?? DEFAULT_MAX_RETRIES;
    if (!Number.isInteger(maxRetries) || maxRetries < 0) {
      throw new InvalidRequestError(`maxRetries must be a non-negative integer, got ${maxRetries}`);
    }
    this.ipam = new DatastoreIpamStore(options.store, options.keys, options.warn);
    this.storeDescription = options.store.description;
    this.node = options.node;
    this.maxRetries = maxRetries;
  }

  // -------------------------------------------------------------------------------------------
  // Pools

  /** Creates the pool if no pool with that CIDR exists; returns the existing one otherwise
   * (with its stored settings, which may differ from `input`). A CIDR overlapping a different
   * pool is refused. */
  async addPool(input: PoolInput): Promise<{ pool: Pool; created: boolean }> {
    const pool = makePool({ ...input, createdAt: input.createdAt ?? new Date().toISOString() });
    return this.exclusive(async () => {
      this.view = undefined; // pools change here: let the next request read them
      const existing = await this.ipam.listPools();
      const same = existing.find((p) => p.pool.cidr === pool.cidr);
      if (same !== undefined) return { pool: same.pool, created: false };
      const cidr = poolCidr(pool);
      const clash = existing.find((p) => overlaps(p.cidr, cidr));
      if (clash !== undefined) throw overlapError(pool.cidr, clash.pool.cidr);
      const written = await this.ipam.createPool(pool);
      if (written === undefined) {
        const raced = await this.ipam.getPool(pool.cidr);
        if (raced !== undefined) return { pool: raced.pool, created: false };
        throw new ConflictError(`IP pool ${pool.cidr} was created and removed concurrently; try again`);
      }
      // Two hosts can add overlapping pools at once, each having seen neither. Both look again
      // after writing; the later write (higher revision) withdraws, so exactly one survives.
      const after = await this.ipam.listPools();
      const rival = after.find(
        (p) => p.key !== written.key && overlaps(p.cidr, written.cidr) && compareRevisions(p.revision, written.revision) < 0,
      );
      if (rival !== undefined) {
        await this.withdrawPool(written);
        throw overlapError(pool.cidr, rival.pool.cidr);
      }
      return { pool, created: true };
    });
  }

  /** Deletes the pool we just wrote. Someone may have changed it since (e.g. disabled it); then
   * the delete loses and is tried again at the new revision, so an overlapping pool is never
   * left behind. */
  private async withdrawPool(written: StoredPool): Promise<void> {
    let current: StoredPool | undefined = written;
    await this.retrying(`withdraw overlapping IP pool ${written.pool.cidr}`, async (): Promise<Attempt<void>> => {
      if (current === undefined || (await this.ipam.deletePool(current))) return undefined;
      current = await this.ipam.getPool(written.pool.cidr); // undefined: removed by someone else
      return current === undefined ? undefined : RETRY;
    });
  }

  async listPools(): Promise<Pool[]> {
    return (await this.ipam.listPools()).map((p) => p.pool);
  }

  /** The pools as this host last read them, or read now if it has not: for choices that may lag a
   * pool change by a request (a veth's MTU), off the datastore on Docker's container start path.
   * A pool change makes this host's next allocation lose its write and read them again. */
  async knownPools(): Promise<Pool[]> {
    return this.view === undefined ? this.listPools() : this.view.pools.map((p) => p.pool);
  }

  async getPool(cidr: string): Promise<Pool | undefined> {
    return (await this.ipam.getPool(normalizeCidr(cidr, 'pool CIDR')))?.pool;
  }

  /** Refused (ConflictError) while any block of the pool holds an address; deletes the pool's
   * empty blocks, then the pool. The pool is disabled first: every block claim checks that its
   * pool is unchanged, so once disabled no host can claim a block in it, and the emptiness seen
   * after that is final. If the removal is then refused, the pool is enabled again. */
  async removePool(cidr: string): Promise<void> {
    const canonical = normalizeCidr(cidr, 'pool CIDR');
    return this.exclusive(async () => {
      this.view = undefined;
      let disabledHere = false;
      try {
        await this.retrying(`remove IP pool ${canonical}`, async (): Promise<Attempt<void>> => {
          const stored = await this.ipam.getPool(canonical);
          if (stored === undefined) throw new NotFoundError(`IP pool ${canonical} does not exist`);
          const blocks = await this.ipam.listPoolBlocks(canonical);
          requireUnused(canonical, blocks);
          if (!stored.pool.disabled) {
            if ((await this.ipam.updatePool(stored, { ...stored.pool, disabled: true })) === undefined) return RETRY;
            disabledHere = true;
            return RETRY; // read the blocks again now that none can be added
          }
          for (const b of blocks) if (!(await this.ipam.deleteBlock(b))) return RETRY;
          return (await this.ipam.deletePool(stored)) ? undefined : RETRY;
        });
      } catch (err) {
        if (disabledHere) await this.setDisabled(canonical, false).catch(() => undefined);
        throw err;
      }
    });
  }

  async setPoolDisabled(cidr: string, disabled: boolean): Promise<Pool> {
    const canonical = normalizeCidr(cidr, 'pool CIDR');
    return this.exclusive(() => this.setDisabled(canonical, disabled));
  }

  private setDisabled(canonical: string, disabled: boolean): Promise<Pool> {
    this.view = undefined;
    return this.retrying(`update IP pool ${canonical}`, async (): Promise<Attempt<Pool>> => {
      const stored = await this.ipam.getPool(canonical);
      if (stored === undefined) throw new NotFoundError(`IP pool ${canonical} does not exist`);
      if (stored.pool.disabled === disabled) return stored.pool;
      const pool: Pool = { ...stored.pool, disabled };
      return (await this.ipam.updatePool(stored, pool)) === undefined ? RETRY : pool;
    });
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
    let lostClaims = 0;
    return this.exclusive(() =>
      this.retrying(`assign an IPv${family} address`, async (): Promise<Attempt<AssignedAddress>> => {
        // 1. Blocks this node already holds: from the view if there is one, else read.
        if (this.view !== undefined) {
          const r = await this.fromOwnBlocks(this.view, family, requested, owner);
          if (r !== undefined) return r;
        }
        const view = await this.readView();
        const pools = choosePools(view.pools, family, requested);
        const own = await this.fromOwnBlocks(view, family, requested, owner);
        if (own !== undefined) return own;
        // 2. Claim the pool's lowest unclaimed block. After losing a claim, start at a place of
        // this host's own: hosts joining together would otherwise all race for the same block
        // again, one winning per round.
        const listings = new Map<StoredPool, ReadBlock[]>();
        for (const pool of pools) {
          const blocks = await this.ipam.listPoolBlocks(pool.pool.cidr);
          listings.set(pool, blocks);
          const from = lostClaims === 0 ? 0n : BigInt(hostOffset(`${this.node}#${lostClaims}`, 0x7fffffff));
          const cidr = firstUnclaimedBlock(pool.pool, blocks.map((b) => b.cidr), from);
          if (cidr === undefined) continue;
          const fresh = assignNext(newBlock(formatCidr(cidr), this.node), owner);
          if (fresh === undefined) throw new Error(`unreachable: new block ${formatCidr(cidr)} has no free address`);
          const created = await this.ipam.createBlock(pool, fresh.block);
          if (created === undefined) {
            lostClaims++;
            return this.lost();
          }
          this.remember(created);
          return { ip: fresh.ip, pool: pool.pool.cidr, block: fresh.block.cidr };
        }
        // 3. Borrow from blocks held by other nodes (or by none). Hosts start at different
        // blocks, so the ones that all have to borrow at once do not all race for the same one.
        for (const pool of pools) {
          const open = (listings.get(pool) ?? []).filter((b) => b.block !== undefined && freeCount(b.block) > 0);
          for (const b of rotate(open, hostOffset(this.node, open.length))) {
            const r = await this.casNext(b, pool, owner);
            if (r !== undefined) return r;
          }
        }
        // Nothing lost a race in this attempt, so what it read is the truth: the pools are full.
        const corrupt = [...listings.values()].flat().filter((b) => b.block === undefined).length;
        throw new PoolExhaustedError(
          `no free IPv${family} address in IP pool${pools.length === 1 ? '' : 's'} ${pools.map((p) => p.pool.cidr).join(', ')}: every address is in use` +
            (corrupt > 0 ? ` (${corrupt} unreadable block${corrupt === 1 ? '' : 's'} skipped)` : ''),
        );
      }),
    );
  }

  /** An address from a block this node holds, per `view`; undefined when none has room (or the
   * view does not know the requested pools). */
  private async fromOwnBlocks(
    view: HostView,
    family: IpFamily,
    requested: readonly string[] | undefined,
    owner: Owner,
  ): Promise<Attempt<AssignedAddress> | undefined> {
    let pools: StoredPool[];
    try {
      pools = choosePools(view.pools, family, requested);
    } catch {
      return undefined; // let fresh reads decide (and report) it
    }
    for (const pool of pools) {
      for (const b of view.mine) {
        if (b.pool !== pool.pool.cidr) continue;
        const r = await this.casNext(b, pool, owner);
        if (r !== undefined) return r;
      }
    }
    return undefined;
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
        const pools = await this.ipam.listPools();
        const pool = pools.find((p) => containsIp(p.cidr, ip));
        if (pool === undefined) {
          throw new InvalidRequestError(
            `address ${text} is not inside any IP pool (${pools.length === 0 ? 'no pools are configured' : `pools: ${pools.map((p) => p.pool.cidr).join(', ')}`}); choose an address inside a pool`,
          );
        }
        const disabled = (): ConflictError =>
          new ConflictError(`address ${text} is in IP pool ${pool.pool.cidr}, which is disabled: no new addresses are assigned from it`);
        const found = await this.blockInPool(pool, ip);
        if (found === undefined) {
          if (pool.pool.disabled) throw disabled();
          const blockCidr = blockContaining(ip, pool.pool.blockSize);
          // A stored block of another size (the pool's block size changed, or a hand-written
          // block) may overlap the one we would create without holding ip; creating ours anyway
          // would let both hand out the addresses they share.
          const clash = (await this.ipam.listPoolBlocks(pool.pool.cidr)).find((b) => overlaps(b.cidr, blockCidr));
          if (clash !== undefined) {
            throw new ConflictError(
              `cannot claim block ${formatCidr(blockCidr)} for address ${text}: it overlaps the existing block ${formatCidr(clash.cidr)} (stored at ${clash.key}), whose size differs from IP pool ${pool.pool.cidr}'s block size /${pool.pool.blockSize}`,
            );
          }
          const r = assignSpecific(newBlock(formatCidr(blockCidr), this.node), text, owner);
          if (r.status !== 'assigned') throw new Error(`unreachable: fresh block refused ${text}`);
          const created = await this.ipam.createBlock(pool, r.block);
          if (created === undefined) return this.lost();
          this.remember(created);
          return { ip: r.ip, pool: pool.pool.cidr, block: r.block.cidr, alreadyOwned: false };
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
            const written = await this.ipam.updateBlock(found, r.block, pool);
            if (written === undefined) return this.lost();
            this.remember(written);
            return { ip: r.ip, pool: pool.pool.cidr, block: block.cidr, alreadyOwned: false };
          }
        }
      }),
    );
  }

  /** Frees `ip` if `requester` holds it. An address that is free or outside every block is
   * reported, not an error, so a repeated release is harmless. */
  async release(request: { readonly ip: string; readonly requester: RequesterInput; readonly ifOwner?: Owner }): Promise<ReleaseOutcome> {
    const ip = parseIp(request.ip, 'address to release');
    const text = formatIp(ip);
    const requester = validateRequester({
      node: request.requester.node ?? this.node,
      handle: request.requester.handle,
    });
    return this.exclusive(() =>
      this.retrying(`release address ${text}`, async (): Promise<Attempt<ReleaseOutcome>> => {
        for (const fromView of [true, false]) {
          const { found, pool } = fromView ? this.viewLookup(ip) : await this.findBlock(ip);
          if (found === undefined) {
            if (fromView) continue;
            return { status: 'not-allocated' };
          }
          const r = releaseInBlock(requireReadable(found), text, requester, request.ifOwner);
          if (r.status !== 'released') {
            if (fromView) continue; // never answer no from the view
            return r;
          }
          const written = await this.ipam.updateBlock(found, r.block);
          if (written === undefined) return this.lost();
          this.remember(written);
          const blockReleased = isEmpty(r.block) && r.block.affinity === this.node && (await this.releaseSpareBlock(written, pool));
          return { status: 'released', owner: r.owner, blockReleased };
        }
        throw new Error('unreachable: the fresh pass always answers');
      }),
    );
  }

  /** Records the endpoint on an existing allocation (after Docker tells us which endpoint got
   * the address). NotFoundError when the address is not allocated. */
  async setEndpoint(ip: string, endpointId: string, containerId?: string): Promise<Owner> {
    const parsed = parseIp(ip);
    const text = formatIp(parsed);
    return this.exclusive(() =>
      this.retrying(`record endpoint of ${text}`, async (): Promise<Attempt<Owner>> => {
        for (const fromView of [true, false]) {
          const { found } = fromView ? this.viewLookup(parsed) : await this.findBlock(parsed);
          const block = found === undefined ? undefined : requireReadable(found);
          const updated = block === undefined ? undefined : setEndpointInBlock(block, text, endpointId, containerId);
          const owner = updated === undefined ? undefined : ownerAt(updated, text);
          if (found === undefined || updated === undefined || owner === undefined) {
            if (fromView) continue;
            throw new NotFoundError(`address ${text} is not allocated`);
          }
          if (updated === block) return owner;
          const written = await this.ipam.updateBlock(found, updated);
          if (written === undefined) return this.lost();
          this.remember(written);
          return owner;
        }
        throw new Error('unreachable: the fresh pass always answers');
      }),
    );
  }

  async findAllocation(ip: string): Promise<FoundAllocation | undefined> {
    const parsed = parseIp(ip);
    const text = formatIp(parsed);
    const { found, pool } = await this.findBlock(parsed);
    if (found === undefined) return undefined;
    const block = requireReadable(found);
    const owner = ownerAt(block, text);
    if (owner === undefined) return undefined;
    return { ip: text, block: block.cidr, affinity: block.affinity, pool: pool?.pool.cidr, owner };
  }

  /** Removes every trace of a host that is gone for good (calicoctl node remove): frees the
   * addresses it holds in any block, deletes its empty blocks and leaves its others to no host.
   * Reads every block: an operator's command, never a request path. */
  async releaseHost(node: string): Promise<{ readonly blocksReleased: number; readonly addressesReleased: number }> {
    return this.exclusive(async () => {
      let blocksReleased = 0;
      let addressesReleased = 0;
      for (const b of await this.ipam.listAllBlocks()) {
        if (b.block === undefined) continue;
        await this.retrying(`release host ${node} from block ${b.block.cidr}`, async (): Promise<Attempt<void>> => {
          const current = await this.ipam.getBlock(b.pool, b.cidr);
          if (current?.block === undefined) return undefined;
          const { block, released } = withoutHost(current.block, node);
          if (block === current.block) return undefined;
          if (block.affinity === null && current.block.affinity === node && isEmpty(block)) {
            if (!(await this.ipam.deleteBlock(current))) return RETRY;
            blocksReleased++;
          } else {
            if ((await this.ipam.updateBlock(current, block)) === undefined) return RETRY;
            if (current.block.affinity === node) blocksReleased++;
          }
          addressesReleased += released;
          return undefined;
        });
      }
      if (node === this.node) this.view = undefined;
      return { blocksReleased, addressesReleased };
    });
  }

  /** Every readable block with its revision, pool and counts (for `ipam show`), in key order.
   * Unreadable blocks are left out here and reported by listCorruptBlocks(). Reads every block:
   * for operators, never on a request path. */
  async listBlocks(): Promise<StoredBlock[]> {
    const [pools, blocks] = await Promise.all([this.ipam.listPools(), this.ipam.listAllBlocks()]);
    const out: StoredBlock[] = [];
    for (const b of blocks) {
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
    return (await this.ipam.listAllBlocks()).flatMap((b) =>
      b.block === undefined ? [{ key: b.key, error: b.error ?? 'corrupt' }] : [],
    );
  }

  // -------------------------------------------------------------------------------------------
  // Reads and retries

  private ownerOf(input: OwnerInput): Owner {
    const { handle, kind, endpointId, allocatedAt } = input;
    const node = input.node ?? this.node;
    return validateOwner({ node, handle, kind, ...(endpointId !== undefined && { endpointId }), ...(allocatedAt !== undefined && { allocatedAt }) });
  }

  /** The stored block holding `ip` and the pool containing it. */
  private async findBlock(ip: IpAddress): Promise<{ found: ReadBlock | undefined; pool: StoredPool | undefined }> {
    const pool = (await this.ipam.listPools()).find((p) => containsIp(p.cidr, ip));
    if (pool !== undefined) return { found: await this.blockInPool(pool, ip), pool };
    // In no pool: only a block whose pool was removed under it can hold it. Rare enough (a pool
    // is only removed once empty) to read every block for.
    return { found: (await this.ipam.listAllBlocks()).find((b) => containsIp(b.cidr, ip)), pool: undefined };
  }

  /** One key lookup at the pool's block size; if that misses, the other sizes a block may have
   * (an older block size, a hand-written block), all at once: a bounded number of lookups, never
   * a listing. */
  private async blockInPool(pool: StoredPool, ip: IpAddress): Promise<ReadBlock | undefined> {
    const direct = await this.ipam.getBlock(pool.pool.cidr, blockContaining(ip, pool.pool.blockSize));
    if (direct !== undefined) return direct;
    const { min, max } = BLOCK_SIZE_BOUNDS[pool.cidr.family];
    const sizes: number[] = [];
    for (let size = Math.max(min, pool.cidr.prefix); size <= max; size++) if (size !== pool.pool.blockSize) sizes.push(size);
    const found = await Promise.all(sizes.map((size) => this.ipam.getBlock(pool.pool.cidr, blockContaining(ip, size))));
    return found.find((b) => b !== undefined);
  }

  /** An empty block of ours goes back to the pool only while we hold another block of the same
   * pool with room: the last one is kept so that a freed address goes to the back of its free
   * list instead of being handed out again at once from a freshly claimed block. If anything
   * touched the block meanwhile the delete just fails, which is fine: it is in use again. */
  private async releaseSpareBlock(empty: ReadBlock, pool: StoredPool | undefined): Promise<boolean> {
    // The view may be stale here, which is harmless: the delete is conditional on the empty
    // block, and a spare that filled up meanwhile only means the next request claims a block.
    const spare =
      pool === undefined ||
      (this.view ?? (await this.readView())).mine.some(
        (b) => b.key !== empty.key && b.pool === empty.pool && b.block !== undefined && freeCount(b.block) > 0,
      );
    if (!spare || !(await this.ipam.deleteBlock(empty))) return false;
    if (this.view !== undefined) this.view = { ...this.view, mine: this.view.mine.filter((b) => b.key !== empty.key) };
    return true;
  }

  /** Reads the pools and this host's blocks, and keeps them as the view. */
  private async readView(): Promise<HostView> {
    const [pools, mine] = await Promise.all([this.ipam.listPools(), this.ipam.listHostBlocks(this.node)]);
    this.view = { pools, mine };
    return this.view;
  }

  /** The view's block of ours holding ip (the block may be stale: writes from it are conditional). */
  private viewLookup(ip: IpAddress): { found: ReadBlock | undefined; pool: StoredPool | undefined } {
    const found = this.view?.mine.find((b) => containsIp(b.cidr, ip));
    const pool = found === undefined ? undefined : this.view?.pools.find((p) => p.pool.cidr === found.pool);
    return { found: pool === undefined ? undefined : found, pool };
  }

  /** Keeps a block we just wrote in the view, if it is ours. */
  private remember(written: ReadBlock): void {
    if (this.view === undefined) return;
    const others = this.view.mine.filter((b) => b.key !== written.key);
    const mine = written.block?.affinity === this.node ? [...others, written].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0)) : others;
    this.view = { ...this.view, mine };
  }

  /** A conditional write lost: what the view says is no longer true. */
  private lost(): typeof RETRY {
    this.view = undefined;
    return RETRY;
  }

  /** Writes the next free address of block, if its pool is unchanged: undefined when the block
   * is full (or unreadable), RETRY when the write lost. */
  private async casNext(read: ReadBlock, pool: StoredPool, owner: Owner): Promise<Attempt<AssignedAddress> | undefined> {
    const next = read.block === undefined ? undefined : assignNext(read.block, owner);
    if (next === undefined) return undefined;
    const written = await this.ipam.updateBlock(read, next.block, pool);
    if (written === undefined) return this.lost();
    this.remember(written);
    return { ip: next.ip, pool: read.pool, block: next.block.cidr };
  }

  private retrying<T>(what: string, attempt: () => Promise<Attempt<T>>): Promise<T> {
    this.stats.operations++;
    return casLoop(what, attempt, { maxConflicts: this.maxRetries, onConflict: () => this.stats.conflicts++ });
  }

  /** Runs op after the operations queued before it. A plugin request waits for its turn only
   * until its deadline (lib/request-deadline.ts), so requests queued behind a hung datastore fail
   * within their own bound, not one bound after another. One that gives up still holds its place
   * until the operation before it ends, so those after it never overlap that one. */
  private exclusive<T>(op: () => Promise<T>): Promise<T> {
    const previous = this.queue;
    let finished!: () => void;
    this.queue = new Promise<void>((resolve) => (finished = resolve));
    // Without a request deadline (the embedded store, background work) the turn is the queue's.
    const deadline = requestDeadline();
    return (deadline === undefined ? previous : this.turnBefore(previous, deadline)).then(
      () => op().finally(finished),
      (err: unknown) => {
        void previous.then(finished);
        throw err;
      },
    );
  }

  private async turnBefore(previous: Promise<void>, deadline: RequestDeadline): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new DatastoreUnavailableError(
        `${this.storeDescription}: IPAM on ${this.node}: no turn within the request's ${deadline.budgetMs} ms (CALICO_DATASTORE_TIMEOUT): an earlier address operation on this host is still waiting for the datastore`,
      )), Math.max(0, deadline.at - Date.now()));
    });
    try {
      await Promise.race([previous, expired]);
    } finally {
      clearTimeout(timer);
    }
  }
}

interface HostView {
  readonly pools: readonly StoredPool[];
  /** This host's blocks, in key order. */
  readonly mine: readonly ReadBlock[];
}

/** A pool with an address in use (or an unreadable block) cannot be removed. */
function requireUnused(pool: string, blocks: readonly ReadBlock[]): void {
  const inUse: string[] = [];
  let used = 0;
  for (const b of blocks) {
    if (b.block === undefined) {
      throw new CorruptDataError(
        `cannot remove IP pool ${pool}: block ${formatCidr(b.cidr)} is unreadable (${b.error ?? 'corrupt'}); fix or delete ${b.key}`,
      );
    }
    if (!isEmpty(b.block)) {
      inUse.push(b.block.cidr);
      used += usedCount(b.block);
    }
  }
  if (inUse.length > 0) {
    throw new ConflictError(
      `IP pool ${pool} still has ${used} address${used === 1 ? '' : 'es'} in use (blocks ${inUse.join(', ')}); remove the containers and networks using it first`,
    );
  }
}

/** Where a host starts among `n` candidate blocks: stable per host, spread across hosts (FNV-1a). */
export function hostOffset(node: string, n: number): number {
  if (n <= 1) return 0;
  let h = 0x811c9dc5;
  for (let i = 0; i < node.length; i++) h = Math.imul(h ^ node.charCodeAt(i), 0x01000193) >>> 0;
  return h % n;
}

function rotate<T>(items: readonly T[], start: number): T[] {
  return [...items.slice(start), ...items.slice(0, start)];
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
function choosePools(all: readonly StoredPool[], family: IpFamily, requested: readonly string[] | undefined): StoredPool[] {
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
