// calicoctl: the operator CLI. It reaches the same datastore as the daemon (etcd when
// ETCD_ENDPOINTS is set, otherwise the daemon's embedded store through its socket) and works on
// the same model through the same modules, so it can never disagree with the plugin.
import { parseArgs } from 'node:util';
import { parseConfig } from '../config/config';
import type { Datastore } from '../datastore/datastore';
import { Keys } from '../datastore/keys';
import { openDatastore } from '../datastore/open-datastore';
import { Allocator } from '../ipam/allocator';
import { freeCount, listAllocations, usedCount } from '../ipam/block';
import { containsCidr, parseCidr } from '../ipam/cidr';
import { makePool } from '../ipam/pool';
import { InvalidRequestError } from '../lib/errors';
import { parseStored } from '../model/codec';
import { Endpoint } from '../model/endpoint';
import { Network } from '../model/network';
import { parseFormat, render, type OutputFormat } from './output';

export const USAGE = `Usage: calicoctl <command> [options]

Commands:
  pool add <cidr> [--disabled] [--nat-outgoing] [--block-size N]   add an IP pool
  pool list                                                          list IP pools and their use
  pool remove <cidr>                                                 remove an unused IP pool
  endpoint list                                                      list workload endpoints
  ipam show                                                          show blocks, owners, used/free

Options:
  -o, --output table|json|yaml   output format (default table)
  -h, --help                     show this help

The datastore is etcd when ETCD_ENDPOINTS is set, else the embedded store in CALICO_DATA_DIR.`;

export interface CliIo {
  out(text: string): void;
}

interface Context {
  store: Datastore;
  keys: Keys;
  allocator: Allocator;
  format: OutputFormat;
  io: CliIo;
}

type Handler = (ctx: Context, args: string[], flags: Flags) => Promise<void>;

interface Flags {
  disabled: boolean;
  natOutgoing: boolean;
  blockSize: string | undefined;
}

function exactArgs(args: string[], n: number, usage: string): void {
  if (args.length !== n) throw new InvalidRequestError(`usage: calicoctl ${usage}`);
}

async function poolUsage(allocator: Allocator): Promise<Map<string, number>> {
  const used = new Map<string, number>();
  const pools = await allocator.listPools();
  for (const { block } of await allocator.listBlocks()) {
    const pool = pools.find((p) => containsCidr(parseCidr(p.cidr), parseCidr(block.cidr)));
    if (pool !== undefined) used.set(pool.cidr, (used.get(pool.cidr) ?? 0) + usedCount(block));
  }
  return used;
}

const commands: Record<string, Handler> = {
  async 'pool add'(ctx, args, flags) {
    exactArgs(args, 1, 'pool add <cidr> [--disabled] [--nat-outgoing] [--block-size N]');
    let blockSize: number | undefined;
    if (flags.blockSize !== undefined) {
      blockSize = Number(flags.blockSize);
      if (!Number.isInteger(blockSize)) throw new InvalidRequestError(`--block-size must be a prefix length, got '${flags.blockSize}'`);
    }
    const pool = makePool({
      cidr: args[0] as string,
      disabled: flags.disabled,
      natOutgoing: flags.natOutgoing,
      createdAt: new Date().toISOString(),
      ...(blockSize !== undefined && { blockSize }),
    });
    const { created } = await ctx.allocator.addPool(pool);
    ctx.io.out(created ? `added pool ${pool.cidr} (block size /${pool.blockSize}${pool.disabled ? ', disabled' : ''})` : `pool ${pool.cidr} already exists`);
  },

  async 'pool list'(ctx, args) {
    exactArgs(args, 0, 'pool list');
    const used = await poolUsage(ctx.allocator);
    const rows = (await ctx.allocator.listPools()).map((p) => ({ ...p, allocated: used.get(p.cidr) ?? 0 }));
    ctx.io.out(
      render(ctx.format, [
        { header: 'CIDR', value: (r) => r.cidr },
        { header: 'BLOCK SIZE', value: (r) => `/${r.blockSize}` },
        { header: 'DISABLED', value: (r) => String(r.disabled) },
        { header: 'NAT OUTGOING', value: (r) => String(r.natOutgoing) },
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
    const [nodes, networks] = await Promise.all([ctx.store.list(ctx.keys.nodesPrefix()), ctx.store.list(ctx.keys.networksPrefix())]);
    const names = new Map(networks.items.map((kv) => {
      const n = parseStored(Network, kv);
      return [n.id, n.name ?? n.id.slice(0, 12)];
    }));
    const rows = nodes.items.filter((kv) => kv.key.includes('/endpoints/')).map((kv) => parseStored(Endpoint, kv));
    ctx.io.out(
      render(ctx.format, [
        { header: 'NODE', value: (e) => e.node },
        { header: 'ENDPOINT', value: (e) => e.id.slice(0, 12) },
        { header: 'NETWORK', value: (e) => names.get(e.networkId) ?? e.networkId.slice(0, 12) },
        { header: 'INTERFACE', value: (e) => e.hostInterface },
        { header: 'ADDRESSES', value: (e) => [...e.ipv4, ...e.ipv6].join(',') },
        { header: 'PROFILES', value: (e) => e.profiles.join(',') },
        { header: 'LABELS', value: (e) => Object.entries(e.labels).map(([k, v]) => `${k}=${v}`).join(',') },
      ], rows),
    );
  },

  async 'ipam show'(ctx, args) {
    exactArgs(args, 0, 'ipam show');
    const pools = await ctx.allocator.listPools();
    const rows = (await ctx.allocator.listBlocks()).map(({ block }) => ({
      block: block.cidr,
      pool: pools.find((p) => containsCidr(parseCidr(p.cidr), parseCidr(block.cidr)))?.cidr ?? '',
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
};

/** Runs one command; returns the exit code. Errors are printed by the caller. */
export async function runCalicoctl(argv: string[], env: NodeJS.ProcessEnv, io: CliIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      output: { type: 'string', short: 'o' },
      disabled: { type: 'boolean', default: false },
      'nat-outgoing': { type: 'boolean', default: false },
      'block-size': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help || positionals.length === 0) {
    io.out(USAGE);
    return values.help ? 0 : 2;
  }
  const name = positionals.slice(0, 2).join(' ');
  const handler = commands[name];
  if (handler === undefined) throw new InvalidRequestError(`unknown command '${positionals.join(' ')}'\n\n${USAGE}`);
  const format = parseFormat(values.output);
  const config = parseConfig(env);
  const store = await openDatastore({ ...(config.etcd !== undefined && { etcd: config.etcd }), dataDir: config.dataDir, mode: 'client' });
  try {
    const keys = new Keys(config.datastorePrefix);
    const allocator = new Allocator({ store, keys, node: config.nodeName });
    await handler({ store, keys, allocator, format, io }, positionals.slice(2), {
      disabled: values.disabled ?? false,
      natOutgoing: values['nat-outgoing'] ?? false,
      blockSize: values['block-size'],
    });
  } finally {
    await store.close();
  }
  return 0;
}
