// The routes manager: nodes, blocks and every host's endpoints from the datastore, planned by
// route-plan.ts and written by the routes dataplane (dataplane/routes.ts), with the pools' VXLAN
// modes (the VXLAN device and its entries: dataplane/vxlan.ts).
import type { KeyValue } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import { decodePool } from '../ipam/pool';
import { errorMessage } from '../lib/errors';
import type { Logger } from '../lib/log';
import { parseStored } from '../model/codec';
import { Endpoint } from '../model/endpoint';
import { Node } from '../model/node';
import { type NetworkingBackend, type PlanBlock, type PlanEndpoint, type PlanNode, type PlanPool, type Route, type VxlanPlan, planRoutes } from './route-plan';
import type { Manager } from './sync-loop';

/** The kernel side (dataplane/routes.ts), reduced to what the manager drives. */
export interface RoutesApplier {
  /** `vxlan` undefined: no VXLAN device (removed if there is one). */
  apply(routes: readonly Route[], vxlan: VxlanPlan | undefined): Promise<void>;
  resync(): void;
}

export class RoutesManager implements Manager {
  readonly name = 'routes';
  private readonly nodes = new Map<string, PlanNode>();
  private readonly blocks = new Map<string, PlanBlock>();
  private readonly endpoints = new Map<string, PlanEndpoint>();
  private readonly pools = new Map<string, PlanPool>();
  private lastUnreachable = '';

  constructor(
    private readonly keys: Keys,
    private readonly node: string,
    private readonly applier: RoutesApplier,
    private readonly log: Logger,
    private readonly backend: NetworkingBackend = 'vxlan',
  ) {}

  /** True when what the plan reads changed. Most writes in a cluster are allocations in blocks
   * and labels on endpoints, which leave a block's CIDR and host, and an endpoint's host and
   * addresses, as they were: those do not replan every route. */
  update(key: string, kv: KeyValue | undefined): boolean {
    const kind = this.kindOf(key);
    if (kind === undefined) return false;
    const map: Map<string, unknown> = kind === 'node' ? this.nodes : kind === 'block' ? this.blocks : kind === 'pool' ? this.pools : this.endpoints;
    if (kv === undefined) return map.delete(key);
    let value: PlanNode | PlanBlock | PlanEndpoint | PlanPool;
    try {
      if (kind === 'pool') {
        const p = decodePool(kv.value, key);
        value = { cidr: p.cidr, vxlanMode: p.vxlanMode };
      } else if (kind === 'node') {
        const n = parseStored(Node, kv);
        value = { name: n.name, ...(n.ipv4Address !== undefined && { ipv4Address: n.ipv4Address }), ...(n.ipv6Address !== undefined && { ipv6Address: n.ipv6Address }) };
      } else if (kind === 'endpoint') {
        const e = parseStored(Endpoint, kv);
        value = { node: e.node, addresses: [...e.ipv4, ...e.ipv6] };
      } else {
        value = blockOf(kv);
      }
    } catch (err) {
      this.log.error('ignoring %s: %s', key, errorMessage(err));
      return map.delete(key);
    }
    const before = map.get(key);
    map.set(key, value);
    return before === undefined || JSON.stringify(before) !== JSON.stringify(value);
  }

  clear(): void {
    this.nodes.clear();
    this.blocks.clear();
    this.endpoints.clear();
    this.pools.clear();
  }

  resync(): void {
    this.applier.resync();
  }

  async apply(): Promise<void> {
    const plan = planRoutes({
      node: this.node,
      nodes: [...this.nodes.values()],
      blocks: [...this.blocks.values()],
      endpoints: [...this.endpoints.values()],
      pools: [...this.pools.values()],
      backend: this.backend,
    });
    const unreachable = plan.unreachable.join(', ');
    if (unreachable !== this.lastUnreachable && unreachable !== '') {
      this.log.warn('no route to the containers of %s: no address, or on another subnet (needs a pool with vxlanMode CrossSubnet or Always)', unreachable);
    }
    this.lastUnreachable = unreachable;
    await this.applier.apply(plan.routes, plan.vxlan);
  }

  private kindOf(key: string): 'node' | 'block' | 'endpoint' | 'pool' | undefined {
    if (key.startsWith(this.keys.blocksPrefix())) return 'block';
    if (key.startsWith(this.keys.poolsPrefix())) return 'pool';
    if (!key.startsWith(this.keys.nodesPrefix())) return undefined;
    if (key.endsWith('/info')) return 'node';
    if (key.includes('/endpoints/')) return 'endpoint';
    return undefined;
  }
}

/** Only the CIDR and affinity matter here; the allocator validates blocks fully. */
function blockOf(kv: KeyValue): PlanBlock {
  const raw: unknown = JSON.parse(kv.value);
  const cidr: unknown = typeof raw === 'object' && raw !== null ? Reflect.get(raw, 'cidr') : undefined;
  const affinity: unknown = typeof raw === 'object' && raw !== null ? Reflect.get(raw, 'affinity') : undefined;
  if (typeof cidr !== 'string' || (affinity !== null && typeof affinity !== 'string')) {
    throw new Error('not an allocation block (cidr, affinity)');
  }
  return { cidr, affinity };
}
