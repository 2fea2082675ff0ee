// The agent: one sync loop (sync-loop.ts) feeding this host's kernel managers. Today: policy
// (iptables and ipsets). Each manager owns its kernel state and its resync.
import type { Datastore } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import { logger } from '../lib/log';
import { type PolicyApplier, PolicyManager } from './policy-manager';
import { SyncLoop } from './sync-loop';

export type { PolicyApplier } from './policy-manager';

const log = logger('agent');

export class Agent {
  private readonly policy: PolicyManager;
  private readonly loop: SyncLoop;

  constructor(store: Datastore, keys: Keys, node: string, policy: PolicyApplier) {
    this.policy = new PolicyManager(keys, node, policy, log);
    this.loop = new SyncLoop(store, keys, [this.policy], log);
  }

  /** Lists the datastore and programs the kernel before resolving; throws if it cannot. */
  start(): Promise<void> {
    return this.loop.start();
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
