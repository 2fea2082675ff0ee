// The agent: one sync loop (sync-loop.ts) feeding this host's kernel managers: policy (iptables
// and ipsets), routes between hosts, and routing inside workloads on several networks. Each
// manager owns its kernel state and its resync.
import type { Datastore } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import { logger } from '../lib/log';
import type { BirdApplier } from '../bgp/bird-supervisor';
import { BgpManager, type BgpManagerOptions } from './bgp-manager';
import { type PolicyApplier, PolicyManager } from './policy-manager';
import type { NetworkingBackend } from './route-plan';
import { type RoutesApplier, RoutesManager } from './routes-manager';
import { type SandboxApplier, SandboxManager } from './sandbox-manager';
import { SyncLoop, type SyncObserver, type SyncStatus } from './sync-loop';

export type { PolicyApplier } from './policy-manager';
export type { RoutesApplier } from './routes-manager';
export type { SandboxApplier } from './sandbox-manager';
export type { SyncObserver, SyncStatus } from './sync-loop';

const log = logger('agent');

export class Agent {
  private readonly policy: PolicyManager;
  private readonly loop: SyncLoop;

  constructor(
    store: Datastore,
    keys: Keys,
    node: string,
    appliers: {
      readonly policy: PolicyApplier;
      readonly routes?: RoutesApplier;
      readonly sandboxes?: SandboxApplier;
      /** BGP mode: this host's BIRD and how to configure it. */
      readonly bgp?: { readonly bird: BirdApplier; readonly options: BgpManagerOptions };
    },
    observer?: SyncObserver,
    backend: NetworkingBackend = 'vxlan',
  ) {
    this.policy = new PolicyManager(keys, node, appliers.policy, log);
    const routes = appliers.routes === undefined ? [] : [new RoutesManager(keys, node, appliers.routes, log, backend)];
    const sandboxes = appliers.sandboxes === undefined ? [] : [new SandboxManager(keys, node, appliers.sandboxes, log)];
    const bgp = appliers.bgp === undefined ? [] : [new BgpManager(keys, node, appliers.bgp.bird, log, appliers.bgp.options)];
    this.loop = new SyncLoop(store, keys, [this.policy, ...routes, ...sandboxes, ...bgp], log, observer);
  }

  /** Lists the datastore and programs the kernel before resolving; throws if it cannot. */
  start(): Promise<void> {
    return this.loop.start();
  }

  /** Whether the kernel follows the datastore (readiness). */
  status(): SyncStatus {
    return this.loop.status();
  }

  waitProgrammed(endpointId: string, timeoutMs: number): Promise<boolean> {
    return this.policy.waitProgrammed(endpointId, timeoutMs);
  }

  /** Stops following the datastore; the kernel state stays (no gap across a restart). */
  async stop(): Promise<void> {
    await this.loop.stop();
    this.policy.close();
  }
}
