// The narrow store the allocator works on, in the style of CNI host-local's backend.Store: pools,
// and get / create / compare-and-swap / delete one block, list one host's blocks, list one pool's
// blocks. Nothing here decides anything; it maps those operations onto datastore keys.
//
// Layout (datastore/keys.ts): a block lives under its pool (<root>/ipam/blocks/<pool>/<block>),
// so an address's block is a key computed from the address and the pool's block size, and a
// pool's blocks are one prefix listing. Each host's blocks are named by an affinity index
// (<root>/ipam/affinity/<node>/<pool>/<block>) that is written in the same commit as the block,
// so the two never disagree and a host reads only its own blocks on the common path: the cost of
// a request does not grow with the number of hosts.
//
// Claiming a block also checks that its pool is unchanged since it was read, in that one commit:
// a pool being removed or disabled meanwhile makes the claim lose and re-read, so no block is
// ever created under a pool that is going away.
import type { Datastore, KeyValue, TxnOp } from '../datastore/datastore';
import { type Keys, segmentToCidr } from '../datastore/keys';
import { errorMessage } from '../lib/errors';
import { type Block, parseBlock, serializeBlock } from './block';
import { type Cidr, containsCidr, formatCidr, normalizeCidr, parseCidr } from './cidr';
import { type Pool, decodePool, encodePool, poolCidr } from './pool';

export interface StoredPool {
  readonly key: string;
  readonly revision: string;
  readonly pool: Pool;
  readonly cidr: Cidr;
}

/** A block as read. `block` is undefined when the stored value is corrupt (then `error` says
 * why): allocation skips it, but it still counts as claimed so nobody overwrites it. */
export interface ReadBlock {
  readonly key: string;
  readonly revision: string;
  /** CIDR of the pool the block is stored under. */
  readonly pool: string;
  readonly cidr: Cidr;
  readonly block: Block | undefined;
  readonly error: string | undefined;
}

export interface IpamStore {
  /** Every readable pool, in key order; corrupt ones are reported through `warn` and skipped. */
  listPools(): Promise<StoredPool[]>;
  getPool(canonicalCidr: string): Promise<StoredPool | undefined>;
  /** undefined when a pool with that CIDR exists already. */
  createPool(pool: Pool): Promise<StoredPool | undefined>;
  /** Compare-and-swap on the pool's revision; undefined on conflict. */
  updatePool(current: StoredPool, pool: Pool): Promise<StoredPool | undefined>;
  /** Deletes the pool if unchanged since `current` was read. */
  deletePool(current: StoredPool): Promise<boolean>;

  /** The block stored at exactly `cidr` under `pool`. */
  getBlock(pool: string, cidr: Cidr): Promise<ReadBlock | undefined>;
  /** Claims a new block (and its affinity entry) if the key is free and the pool is unchanged
   * since it was read. undefined when either condition failed. */
  createBlock(pool: StoredPool, block: Block): Promise<ReadBlock | undefined>;
  /** Compare-and-swap on the block's revision (the affinity index follows an affinity change);
   * with `pool`, also only if the pool is unchanged since it was read. undefined on conflict. */
  updateBlock(current: ReadBlock, block: Block, pool?: StoredPool): Promise<ReadBlock | undefined>;
  /** Deletes the block and its affinity entry if the block is unchanged since read. */
  deleteBlock(current: ReadBlock): Promise<boolean>;
  /** Blocks affine to `node`, in key order (pool, then block). */
  listHostBlocks(node: string): Promise<ReadBlock[]>;
  /** Blocks stored under `pool`, in key order. */
  listPoolBlocks(pool: string): Promise<ReadBlock[]>;
  /** Every block of every pool (operators' listings, orphans). */
  listAllBlocks(): Promise<ReadBlock[]>;
}

export class DatastoreIpamStore implements IpamStore {
  constructor(
    private readonly store: Datastore,
    private readonly keys: Keys,
    private readonly warn: (message: string) => void = () => undefined,
  ) {}

  async listPools(): Promise<StoredPool[]> {
    const prefix = this.keys.poolsPrefix();
    const { items } = await this.store.list(prefix);
    const pools: StoredPool[] = [];
    for (const kv of items) {
      try {
        pools.push(toStoredPool(kv, decodePool(kv.value, kv.key, segmentToCidr(kv.key.slice(prefix.length)))));
      } catch (err) {
        this.warn(`skipping IP pool: ${errorMessage(err)}`);
      }
    }
    return pools;
  }

  async getPool(canonicalCidr: string): Promise<StoredPool | undefined> {
    const kv = await this.store.get(this.keys.pool(canonicalCidr));
    return kv === undefined ? undefined : toStoredPool(kv, decodePool(kv.value, kv.key, canonicalCidr));
  }

  async createPool(pool: Pool): Promise<StoredPool | undefined> {
    const kv = await this.store.create(this.keys.pool(pool.cidr), encodePool(pool));
    return kv === undefined ? undefined : toStoredPool(kv, pool);
  }

  async updatePool(current: StoredPool, pool: Pool): Promise<StoredPool | undefined> {
    const kv = await this.store.update(current.key, encodePool(pool), current.revision);
    return kv === undefined ? undefined : toStoredPool(kv, pool);
  }

  deletePool(current: StoredPool): Promise<boolean> {
    return this.store.delete(current.key, current.revision);
  }

  async getBlock(pool: string, cidr: Cidr): Promise<ReadBlock | undefined> {
    const kv = await this.store.get(this.keys.block(pool, formatCidr(cidr)));
    return kv === undefined ? undefined : readBlock(kv, pool, cidr);
  }

  async createBlock(pool: StoredPool, block: Block): Promise<ReadBlock | undefined> {
    const key = this.keys.block(pool.pool.cidr, block.cidr);
    const value = serializeBlock(block);
    const ops: TxnOp[] = [
      { type: 'check', key: pool.key, revision: pool.revision },
      { type: 'create', key, value },
    ];
    if (block.affinity !== null) {
      ops.push({ type: 'create', key: this.keys.affinity(block.affinity, pool.pool.cidr, block.cidr), value: block.cidr });
    }
    const revision = await this.store.commit(ops);
    return revision === undefined ? undefined : { key, revision, pool: pool.pool.cidr, cidr: parseCidr(block.cidr), block, error: undefined };
  }

  async updateBlock(current: ReadBlock, block: Block, pool?: StoredPool): Promise<ReadBlock | undefined> {
    const value = serializeBlock(block);
    const before = current.block?.affinity ?? null;
    const ops: TxnOp[] = [{ type: 'update', key: current.key, value, revision: current.revision }];
    if (pool !== undefined) ops.push({ type: 'check', key: pool.key, revision: pool.revision });
    if (before !== block.affinity) {
      if (before !== null) ops.push({ type: 'delete', key: this.keys.affinity(before, current.pool, block.cidr) });
      if (block.affinity !== null) {
        ops.push({ type: 'create', key: this.keys.affinity(block.affinity, current.pool, block.cidr), value: block.cidr });
      }
    }
    const revision = ops.length === 1 ? (await this.store.update(current.key, value, current.revision))?.revision : await this.store.commit(ops);
    return revision === undefined ? undefined : { ...current, revision, block, error: undefined };
  }

  async deleteBlock(current: ReadBlock): Promise<boolean> {
    const ops: TxnOp[] = [{ type: 'delete', key: current.key, revision: current.revision }];
    const affinity = current.block?.affinity ?? null;
    if (affinity !== null) ops.push({ type: 'delete', key: this.keys.affinity(affinity, current.pool, formatCidr(current.cidr)) });
    return (await this.store.commit(ops)) !== undefined;
  }

  async listHostBlocks(node: string): Promise<ReadBlock[]> {
    const prefix = this.keys.hostAffinityPrefix(node);
    const { items } = await this.store.list(prefix);
    const named = items.flatMap((kv) => {
      const parsed = this.parsePath(kv.key, prefix);
      return parsed === undefined ? [] : [parsed];
    });
    const blocks = await Promise.all(named.map(({ pool, cidr }) => this.getBlock(pool, cidr)));
    // An index entry always comes and goes with its block, so a miss here is only a block deleted
    // between the two reads; the block's own affinity is the truth.
    return blocks.filter((b): b is ReadBlock => b !== undefined && (b.block === undefined || b.block.affinity === node));
  }

  listPoolBlocks(pool: string): Promise<ReadBlock[]> {
    return this.readBlocks(this.keys.poolBlocksPrefix(pool));
  }

  listAllBlocks(): Promise<ReadBlock[]> {
    return this.readBlocks(this.keys.blocksPrefix());
  }

  private async readBlocks(prefix: string): Promise<ReadBlock[]> {
    const { items } = await this.store.list(prefix);
    const blocks: ReadBlock[] = [];
    for (const kv of items) {
      const parsed = this.parsePath(kv.key, this.keys.blocksPrefix());
      if (parsed !== undefined) blocks.push(readBlock(kv, parsed.pool, parsed.cidr));
    }
    return blocks;
  }

  /** `<pool>/<block>` after prefix; a key of any other shape is not ours to interpret. */
  private parsePath(key: string, prefix: string): { pool: string; cidr: Cidr } | undefined {
    const parts = key.slice(prefix.length).split('/');
    const [poolSegment, blockSegment] = parts;
    if (parts.length === 2 && poolSegment !== undefined && blockSegment !== undefined) {
      try {
        return { pool: normalizeCidr(segmentToCidr(poolSegment)), cidr: parseCidr(segmentToCidr(blockSegment)) };
      } catch {
        // fall through to the warning
      }
    }
    this.warn(`ignoring ${key}: the key does not name an IP pool and block CIDR`);
    return undefined;
  }
}

/** Moves blocks written by 0.1 (flat at <root>/ipam/blocks/<block>, no affinity index) under
 * their pool, with their index entries, each in one commit. Runs once per datastore: a layout
 * marker records that it is done. Blocks no pool contains are left where they are, with a
 * warning, and so stay invisible to allocation until an operator deletes them. */
export async function upgradeBlockLayout(
  store: Datastore,
  keys: Keys,
  warn: (message: string) => void = () => undefined,
): Promise<number> {
  const marker = `${keys.root}/ipam/layout`;
  if ((await store.get(marker)) !== undefined) return 0;
  const ipam = new DatastoreIpamStore(store, keys, warn);
  const pools = await ipam.listPools();
  const prefix = keys.blocksPrefix();
  let moved = 0;
  for (const kv of (await store.list(prefix)).items) {
    const rest = kv.key.slice(prefix.length);
    if (rest.includes('/')) continue;
    let cidr: Cidr;
    try {
      cidr = parseCidr(segmentToCidr(rest));
    } catch {
      continue;
    }
    const pool = pools.find((p) => p.cidr.family === cidr.family && containsCidr(p.cidr, cidr));
    if (pool === undefined) {
      warn(`block ${kv.key} lies in no IP pool: left in place, unused; delete it once nothing uses its addresses`);
      continue;
    }
    const read = readBlock(kv, pool.pool.cidr, cidr);
    const ops: TxnOp[] = [
      { type: 'delete', key: kv.key, revision: kv.revision },
      { type: 'create', key: keys.block(pool.pool.cidr, formatCidr(cidr)), value: kv.value },
    ];
    const affinity = read.block?.affinity ?? null;
    if (affinity !== null) ops.push({ type: 'create', key: keys.affinity(affinity, pool.pool.cidr, formatCidr(cidr)), value: formatCidr(cidr) });
    // A lost commit means another host moved this block first.
    if ((await store.commit(ops)) !== undefined) moved++;
  }
  await store.create(marker, '2');
  return moved;
}

function toStoredPool(kv: KeyValue, pool: Pool): StoredPool {
  return { key: kv.key, revision: kv.revision, pool, cidr: poolCidr(pool) };
}

function readBlock(kv: KeyValue, pool: string, cidr: Cidr): ReadBlock {
  const text = formatCidr(cidr);
  try {
    return { key: kv.key, revision: kv.revision, pool, cidr, block: parseBlock(kv.value, kv.key, text), error: undefined };
  } catch (err) {
    return { key: kv.key, revision: kv.revision, pool, cidr, block: undefined, error: errorMessage(err) };
  }
}
