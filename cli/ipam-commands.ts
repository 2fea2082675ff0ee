// calicoctl pool / endpoint / ipam commands.
import { SWARM_OWNER_NODE } from '../driver/ipam-driver';
import { freeCount, listAllocations, usedCount } from '../ipam/block';
import { addressPart } from '../ipam/cidr';
import { ConflictError } from '../lib/errors';
import { makePool } from '../ipam/pool';
import { parseStored } from '../model/codec';
import { Endpoint } from '../model/endpoint';
import { Network } from '../model/network';
import { exactArgs, intFlag, type Context, type Handler } from './context';
import { render } from './output';

export async function listEndpoints(ctx: Context): Promise<Endpoint[]> {
  const { items } = await ctx.store.list(ctx.keys.nodesPrefix());
  return items.filter((kv) => kv.key.includes('/endpoints/')).map((kv) => parseStored(Endpoint, kv));
}

export const ipamCommands: Record<string, Handler> = {
  async 'pool add'(ctx, args) {
    exactArgs(args, 1, 'pool add <cidr> [--disabled] [--nat-outgoing] [--block-size N] [--vxlan-mode Always|CrossSubnet|Never]');
    const blockSize = intFlag(ctx.flags.blockSize, '--block-size', 0, 128);
    const pool = makePool({
      cidr: args[0] as string,
      disabled: ctx.flags.disabled,
      natOutgoing: ctx.flags.natOutgoing,
      createdAt: new Date().toISOString(),
      ...(blockSize !== undefined && { blockSize }),
      ...(ctx.flags.vxlanMode !== undefined && { vxlanMode: ctx.flags.vxlanMode }),
    });
    const { created } = await ctx.allocator.addPool(pool);
    ctx.io.out(created ? `added pool ${pool.cidr} (block size /${pool.blockSize}${pool.disabled ? ', disabled' : ''}${pool.vxlanMode === 'Never' ? '' : `, VXLAN ${pool.vxlanMode}`})` : `pool ${pool.cidr} already exists`);
  },

  async 'pool list'(ctx, args) {
    exactArgs(args, 0, 'pool list');
    const used = new Map<string, number>();
    for (const b of await ctx.allocator.listBlocks()) if (b.pool !== undefined) used.set(b.pool, (used.get(b.pool) ?? 0) + b.used);
    const rows = (await ctx.allocator.listPools()).map((p) => ({ ...p, allocated: used.get(p.cidr) ?? 0 }));
    ctx.io.out(
      render(ctx.format, [
        { header: 'CIDR', value: (r) => r.cidr },
        { header: 'BLOCK SIZE', value: (r) => `/${r.blockSize}` },
        { header: 'DISABLED', value: (r) => String(r.disabled) },
        { header: 'NAT OUTGOING', value: (r) => String(r.natOutgoing) },
        { header: 'VXLAN', value: (r) => r.vxlanMode },
        { header: 'ALLOCATED', value: (r) => String(r.allocated) },
      ], rows),
    );
  },

  async 'pool remove'(ctx, args) {
    exactArgs(args, 1, 'pool remove <cidr>');
    const cidr = args[0] as string;
    await ctx.allocator.removePool(cidr);
    ctx.io.out(`removed pool ${cidr}`);
  },

  async 'endpoint list'(ctx, args) {
    exactArgs(args, 0, 'endpoint list');
    const networks = await ctx.store.list(ctx.keys.networksPrefix());
    const names = new Map(networks.items.map((kv) => {
      const n = parseStored(Network, kv);
      return [n.id, n.name ?? n.id.slice(0, 12)];
    }));
    ctx.io.out(
      render(ctx.format, [
        { header: 'NODE', value: (e) => e.node },
        { header: 'ENDPOINT', value: (e) => e.id.slice(0, 12) },
        { header: 'NETWORK', value: (e) => names.get(e.networkId) ?? e.networkId.slice(0, 12) },
        { header: 'INTERFACE', value: (e) => e.hostInterface },
        { header: 'ADDRESSES', value: (e) => [...e.ipv4, ...e.ipv6].join(',') },
        { header: 'PROFILES', value: (e) => e.profiles.join(',') },
        { header: 'LABELS', value: (e) => Object.entries(e.labels).map(([k, v]) => `${k}=${v}`).join(',') },
        { header: 'READY', value: (e) => String(e.ready) },
      ], await listEndpoints(ctx)),
    );
  },

  async 'ipam show'(ctx, args) {
    exactArgs(args, 0, 'ipam show');
    const rows = (await ctx.allocator.listBlocks()).map(({ block, pool }) => ({
      block: block.cidr,
      pool: pool ?? '',
      node: block.affinity ?? '',
      used: usedCount(block),
      free: freeCount(block),
      allocations: listAllocations(block).map((a) => ({ ip: a.ip, ...a.owner })),
    }));
    ctx.io.out(
      render(ctx.format, [
        { header: 'BLOCK', value: (r) => r.block },
        { header: 'POOL', value: (r) => r.pool },
        { header: 'NODE', value: (r) => r.node || '(none)' },
        { header: 'USED', value: (r) => String(r.used) },
        { header: 'FREE', value: (r) => String(r.free) },
      ], rows),
    );
  },

  /** The swarm manager releases its own addresses while the swarm exists; a swarm left for good
   * (`docker swarm leave --force` with services still allocated) leaves them held by @swarm. */
  async 'ipam release-swarm'(ctx, args) {
    exactArgs(args, 0, 'ipam release-swarm');
    const held = (await ctx.allocator.listBlocks()).flatMap(({ block }) => listAllocations(block).filter((a) => a.owner.node === SWARM_OWNER_NODE).map((a) => a.ip));
    const inUse = new Set((await listEndpoints(ctx)).flatMap((e) => [...e.ipv4, ...e.ipv6].map(addressPart)));
    const busy = held.filter((ip) => inUse.has(ip));
    if (busy.length > 0) {
      throw new ConflictError(`${busy.length} of the swarm's addresses are in use by containers (${busy.slice(0, 5).join(', ')}${busy.length > 5 ? ', ...' : ''}): remove the services first; run this only once the swarm is gone`);
    }
    const { addressesReleased } = await ctx.allocator.releaseHost(SWARM_OWNER_NODE);
    ctx.io.out(`released ${addressesReleased} address${addressesReleased === 1 ? '' : 'es'} held by the swarm manager`);
  },
};
