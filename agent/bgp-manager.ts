// The BGP manager (CALICO_NETWORKING_BACKEND=bird): nodes, BGP settings and peers, blocks and this
// host's endpoints from the datastore, planned by bgp/bgp-plan.ts, rendered by bgp/bird-config.ts
// and handed to this host's BIRD (bgp/bird-supervisor.ts). Refused peer records are reported once
// each and left out; the rest of the configuration still applies.
import { type BgpNodeSettings, type BgpPeerRecord, BgpNodeSettings as NodeSettingsDecoder, BgpPeerRecord as PeerDecoder, BgpSettings } from '../bgp/bgp-model';
import { type BgpPlanNode, planBgp } from '../bgp/bgp-plan';
import { type BirdTimers, renderBirdConfig } from '../bgp/bird-config';
import type { BirdApplier } from '../bgp/bird-supervisor';
import type { KeyValue } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import { errorMessage } from '../lib/errors';
import type { Logger } from '../lib/log';
import { parseStored } from '../model/codec';
import { Endpoint } from '../model/endpoint';
import { Node } from '../model/node';
import type { Manager } from './sync-loop';

export interface BgpManagerOptions {
  readonly timers: BirdTimers;
  readonly logFile?: string;
}

export class BgpManager implements Manager {
  readonly name = 'bgp';
  private readonly nodes = new Map<string, BgpPlanNode>();
  private readonly blocks = new Map<string, { cidr: string; affinity: string | null }>();
  private readonly endpoints = new Map<string, readonly string[]>();
  private readonly nodeSettings = new Map<string, BgpNodeSettings>();
  private readonly globalPeers = new Map<string, BgpPeerRecord>();
  private readonly nodePeers = new Map<string, BgpPeerRecord>();
  private settings: BgpSettings | undefined;
  private reported = new Set<string>();
  private lastReason = '';

  constructor(
    private readonly keys: Keys,
    private readonly node: string,
    private readonly applier: BirdApplier,
    private readonly log: Logger,
    private readonly options: BgpManagerOptions,
  ) {}

  update(key: string, kv: KeyValue | undefined): boolean {
    const k = this.keys;
    try {
      if (key === k.bgpConfig()) {
        this.settings = kv === undefined ? undefined : parseStored(BgpSettings, kv);
      } else if (key.startsWith(k.bgpNodesPrefix())) {
        setOrDelete(this.nodeSettings, key.slice(k.bgpNodesPrefix().length), kv && parseStored(NodeSettingsDecoder, kv));
      } else if (key.startsWith(k.bgpGlobalPeersPrefix())) {
        setOrDelete(this.globalPeers, key, kv && parseStored(PeerDecoder, kv));
      } else if (key.startsWith(k.bgpNodePeersPrefix())) {
        if (!key.startsWith(`${k.bgpNodePeersPrefix()}${this.node}/`)) return false;
        setOrDelete(this.nodePeers, key, kv && parseStored(PeerDecoder, kv));
      } else if (key.startsWith(k.blocksPrefix())) {
        setOrDelete(this.blocks, key, kv && blockOf(kv));
      } else if (key.startsWith(k.endpointsPrefix(this.node))) {
        setOrDelete(this.endpoints, key, kv && ((e) => [...e.ipv4])(parseStored(Endpoint, kv)));
      } else if (key.startsWith(k.nodesPrefix()) && key.endsWith('/info')) {
        setOrDelete(this.nodes, key, kv && ((n) => ({ name: n.name, ...(n.ipv4Address !== undefined && { ipv4Address: n.ipv4Address }) }))(parseStored(Node, kv)));
      } else {
        return false;
      }
    } catch (err) {
      // Refused before it reaches BIRD: the record is left out as if absent.
      this.log.error('BGP: ignoring %s: %s', key, errorMessage(err));
      for (const map of [this.nodeSettings, this.globalPeers, this.nodePeers, this.blocks, this.endpoints, this.nodes] as Map<string, unknown>[]) map.delete(key);
      if (key === k.bgpConfig()) this.settings = undefined;
      if (key.startsWith(k.bgpNodesPrefix())) this.nodeSettings.delete(key.slice(k.bgpNodesPrefix().length));
    }
    return true;
  }

  clear(): void {
    for (const map of [this.nodeSettings, this.globalPeers, this.nodePeers, this.blocks, this.endpoints, this.nodes] as Map<string, unknown>[]) map.clear();
    this.settings = undefined;
  }

  resync(): void {
    this.applier.resync();
  }

  async apply(): Promise<void> {
    const plan = planBgp({
      node: this.node,
      nodes: [...this.nodes.values()],
      ...(this.settings !== undefined && { settings: this.settings }),
      nodeSettings: this.nodeSettings,
      globalPeers: [...this.globalPeers.values()],
      nodePeers: [...this.nodePeers.values()],
      blocks: [...this.blocks.values()],
      localAddresses: [...this.endpoints.values()].flat(),
      timers: this.options.timers,
    });
    const refused = new Set(plan.refused);
    for (const r of refused) if (!this.reported.has(r)) this.log.error('BGP: refused %s', r);
    this.reported = refused;
    if (!plan.ok) {
      if (plan.reason !== this.lastReason) this.log.warn('BGP: %s', plan.reason);
      this.lastReason = plan.reason;
      // Taken out for good: its routes go from every peer now, not after a hold time.
      if (!this.nodes.has(this.keys.node(this.node))) await this.applier.withdraw();
      return;
    }
    let config: string;
    try {
      config = renderBirdConfig({ ...plan.input, ...(this.options.logFile !== undefined && { logFile: this.options.logFile }) });
    } catch (err) {
      // Nothing a retry would change: said once, BIRD keeps what it runs.
      const reason = `not reconfiguring BIRD: ${errorMessage(err)}`;
      if (reason !== this.lastReason) this.log.error('BGP: %s', reason);
      this.lastReason = reason;
      return;
    }
    this.lastReason = '';
    await this.applier.apply(config);
  }
}

function setOrDelete<T>(map: Map<string, T>, key: string, value: T | undefined): void {
  if (value === undefined) map.delete(key);
  else map.set(key, value);
}

function blockOf(kv: KeyValue): { cidr: string; affinity: string | null } {
  const raw: unknown = JSON.parse(kv.value);
  const cidr: unknown = typeof raw === 'object' && raw !== null ? Reflect.get(raw, 'cidr') : undefined;
  const affinity: unknown = typeof raw === 'object' && raw !== null ? Reflect.get(raw, 'affinity') : undefined;
  if (typeof cidr !== 'string' || (affinity !== null && typeof affinity !== 'string')) throw new Error('not an allocation block (cidr, affinity)');
  return { cidr, affinity };
}
