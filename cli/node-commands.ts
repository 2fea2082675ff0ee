// calicoctl node list: every host that registered, its addresses between hosts, the blocks it
// holds, its endpoints, and whether it is alive (on etcd: its daemon's lease is held; on the
// embedded store, which serves one host: its daemon answers on the store socket).
import { NODE_NAME } from '../config/config';
import { segmentToCidr } from '../datastore/keys';
import { RemoteStore } from '../datastore/remote-store';
import { ConflictError, InvalidRequestError, NotFoundError } from '../lib/errors';
import { parseStored } from '../model/codec';
import { Node } from '../model/node';
import { exactArgs, type Handler } from './context';
import { render } from './output';

interface NodeRow {
  readonly name: string;
  readonly ipv4Address: string;
  readonly ipv6Address: string;
  readonly blocks: string[];
  readonly endpoints: number;
  readonly alive: boolean;
  readonly version: string;
  readonly startedAt: string;
}

export const nodeCommands: Record<string, Handler> = {
  async 'node list'(ctx, args) {
    exactArgs(args, 0, 'node list');
    const nodesPrefix = ctx.keys.nodesPrefix();
    const affinityPrefix = ctx.keys.affinitiesPrefix();
    const [nodeKeys, affinities] = await Promise.all([ctx.store.list(nodesPrefix), ctx.store.list(affinityPrefix)]);
    const blocks = new Map<string, string[]>();
    for (const kv of affinities.items) {
      const [node, , block] = kv.key.slice(affinityPrefix.length).split('/');
      if (node !== undefined && block !== undefined) blocks.set(node, [...(blocks.get(node) ?? []), segmentToCidr(block)]);
    }
    const endpoints = new Map<string, number>();
    const alive = new Set<string>();
    const rows: NodeRow[] = [];
    for (const kv of nodeKeys.items) {
      const [name, kind] = kv.key.slice(nodesPrefix.length).split('/');
      if (name === undefined) continue;
      if (kind === 'endpoints') endpoints.set(name, (endpoints.get(name) ?? 0) + 1);
      if (kind === 'alive') alive.add(name);
    }
    const embeddedServed = ctx.store instanceof RemoteStore;
    for (const kv of nodeKeys.items) {
      if (!kv.key.endsWith('/info')) continue;
      let node: Node;
      try {
        node = parseStored(Node, kv);
      } catch {
        continue; // unreadable record: nothing true to show for it
      }
      rows.push({
        name: node.name,
        ipv4Address: node.ipv4Address ?? '',
        ipv6Address: node.ipv6Address ?? '',
        blocks: blocks.get(node.name) ?? [],
        endpoints: endpoints.get(node.name) ?? 0,
        alive: node.datastore === 'embedded' ? embeddedServed : alive.has(node.name),
        version: node.version,
        startedAt: node.startedAt,
      });
    }
    ctx.io.out(
      render(ctx.format, [
        { header: 'NAME', value: (r: NodeRow) => r.name },
        { header: 'IPV4', value: (r) => r.ipv4Address || '-' },
        { header: 'IPV6', value: (r) => r.ipv6Address || '-' },
        { header: 'BLOCKS', value: (r) => String(r.blocks.length) },
        { header: 'ENDPOINTS', value: (r) => String(r.endpoints) },
        { header: 'ALIVE', value: (r) => (r.alive ? 'yes' : 'no') },
      ], rows),
    );
  },

  async 'node remove'(ctx, args) {
    exactArgs(args, 1, 'node remove <name> [--force]');
    const name = args[0] ?? '';
    if (!NODE_NAME.test(name)) throw new InvalidRequestError(`'${name}' is not a node name`);
    const [info, alive, endpoints] = await Promise.all([
      ctx.store.get(ctx.keys.node(name)),
      ctx.store.get(ctx.keys.nodeAlive(name)),
      ctx.store.list(ctx.keys.endpointsPrefix(name)),
    ]);
    if (info === undefined && endpoints.items.length === 0) throw new NotFoundError(`node ${name} is not registered`);
    if (!ctx.flags.force) {
      if (alive !== undefined) throw new ConflictError(`node ${name} is alive (its daemon runs); stop it first, or use --force`);
      const n = endpoints.items.length;
      if (n > 0) {
        throw new ConflictError(`node ${name} still has ${n} endpoint${n === 1 ? '' : 's'}; remove its containers first, or use --force to remove their records too`);
      }
    }
    for (const kv of endpoints.items) await ctx.store.delete(kv.key);
    const { blocksReleased, addressesReleased } = await ctx.allocator.releaseHost(name);
    await ctx.store.delete(ctx.keys.nodeAlive(name));
    await ctx.store.delete(ctx.keys.node(name));
    ctx.io.out(
      `removed node ${name}: ${blocksReleased} block${blocksReleased === 1 ? '' : 's'} released, ` +
        `${addressesReleased} address${addressesReleased === 1 ? '' : 'es'} freed, ${endpoints.items.length} endpoint record${endpoints.items.length === 1 ? '' : 's'} removed`,
    );
  },
};
