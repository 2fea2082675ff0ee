// What a harness plugin holds, read from its datastore (through the daemon's store socket, in
// process: cheap enough to sample during a run) and from the kernel: for the load runs' "nothing
// leaked, nothing handed out twice" checks.
import { run } from '../../dataplane/exec';
import { RemoteStore } from '../../datastore/remote-store';
import { storeSocketPath } from '../../datastore/open-datastore';
import { Keys } from '../../datastore/keys';
import { Allocator } from '../../ipam/allocator';
import { handleFamily, listAllocations, type Allocation } from '../../ipam/block';
import { linksWithPrefix, type Plugin } from './plugin';

export interface PluginState {
  /** Endpoint records of this host (IDs). */
  readonly endpoints: string[];
  /** Every allocation in the store, whoever holds it. */
  readonly allocations: Allocation[];
  /** Network records (IDs). */
  readonly networks: string[];
  /** Profile names. */
  readonly profiles: string[];
}

export interface KernelState {
  /** Host ends of our veths (the instance's interface prefix). */
  readonly veths: string[];
  /** Host routes (/32, /128) into the given ranges: one per local container. Block routes
   * (blackholes for a whole block) are not counted: a block's affinity outlives its addresses. */
  readonly routes: string[];
  /** Our iptables chains (the instance's chain prefix), filter and raw/mangle/nat tables. */
  readonly chains: string[];
  /** Our ipsets. */
  readonly sets: string[];
}

/** A client of the daemon's embedded store, in this process. Close it when done. */
export class PluginStore {
  private readonly store: RemoteStore;
  private readonly keys: Keys;
  private readonly allocator: Allocator;

  constructor(private readonly plugin: Plugin) {
    const dataDir = plugin.env['CALICO_DATA_DIR'];
    const prefix = plugin.env['CALICO_DATASTORE_PREFIX'];
    if (dataDir === undefined || prefix === undefined) throw new Error('plugin has no data directory or datastore prefix');
    this.store = new RemoteStore(storeSocketPath(dataDir), { requestTimeoutMs: 10_000 });
    this.keys = new Keys(prefix);
    this.allocator = new Allocator({ store: this.store, keys: this.keys, node: plugin.node });
  }

  async read(): Promise<PluginState> {
    const [endpoints, blocks, networks, profiles] = await Promise.all([
      this.store.list(this.keys.endpointsPrefix(this.plugin.node)),
      this.allocator.listBlocks(),
      this.store.list(this.keys.networksPrefix()),
      this.store.list(this.keys.profilesPrefix()),
    ]);
    const last = (key: string): string => key.slice(key.lastIndexOf('/') + 1);
    return {
      endpoints: endpoints.items.map((kv) => last(kv.key)),
      allocations: blocks.flatMap((b) => listAllocations(b.block)),
      networks: networks.items.map((kv) => last(kv.key)),
      profiles: profiles.items.map((kv) => last(kv.key)),
    };
  }

  /** What requests may change, canonically: network and endpoint records as stored, and who
   * holds which address (not the bookkeeping the daemon adds after answering: which endpoint and
   * container an allocation serves, and the endpoint it appends to the handle, so the handle's
   * family). Equal snapshots: nothing was changed. */
  async snapshot(): Promise<string> {
    const [endpoints, blocks, networks] = await Promise.all([
      this.store.list(this.keys.endpointsPrefix(this.plugin.node)),
      this.allocator.listBlocks(),
      this.store.list(this.keys.networksPrefix()),
    ]);
    return JSON.stringify({
      endpoints: endpoints.items.map((kv) => [kv.key, kv.value]).sort(),
      networks: networks.items.map((kv) => [kv.key, kv.value]).sort(),
      allocations: blocks.flatMap((b) => listAllocations(b.block)).map((a) => `${a.ip} ${a.owner.node} ${handleFamily(a.owner.handle)}`).sort(),
    });
  }

  async close(): Promise<void> {
    await this.store.close();
  }
}

/** `prefixes`: how the ranges' addresses start, e.g. '198.18.7.' for 198.18.7.0/24. */
export async function readKernel(plugin: Plugin, prefixes: readonly string[]): Promise<KernelState> {
  const [routes, chains, sets, veths] = await Promise.all([
    Promise.all(['-4', '-6'].map((family) => run('ip', ['-j', family, 'route', 'show'], `list IPv${family.slice(1)} routes`))),
    Promise.all(['filter', 'raw', 'mangle', 'nat'].map((table) => run('iptables', ['-t', table, '-S'], `list ${table} chains`))),
    run('ipset', ['list', '-n'], 'list ipsets'),
    linksWithPrefix(plugin.ifPrefix),
  ]);
  return {
    veths,
    routes: routes.flatMap((r) => JSON.parse(r.stdout || '[]') as { dst: string }[]).map((r) => r.dst)
      // ip prints a host route without its /32 (/128).
      .filter((d) => !d.includes('/') && prefixes.some((p) => d.startsWith(p))),
    chains: chains.flatMap((c) => c.stdout.split('\n'))
      .filter((l) => l.startsWith(`-N ${plugin.chainPrefix}-`))
      .map((l) => l.slice(3)),
    sets: sets.stdout.split('\n').filter((n) => n.startsWith(plugin.chainPrefix)),
  };
}

/** Addresses held by more than one allocation (different blocks that overlap would do it). */
export function duplicateAllocations(allocations: readonly Allocation[]): string[] {
  const seen = new Set<string>();
  const dup = new Set<string>();
  for (const a of allocations) {
    if (seen.has(a.ip)) dup.add(a.ip);
    seen.add(a.ip);
  }
  return [...dup];
}

/** What is in `now` but not in `before` (chains, sets made since a baseline). */
export function added(before: readonly string[], now: readonly string[]): string[] {
  const b = new Set(before);
  return now.filter((x) => !b.has(x));
}
