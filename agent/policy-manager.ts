// The policy manager: profiles, pools and every endpoint of every host (PolicyState), rendered
// and written by the policy dataplane (iptables, ipsets). It also tells the driver when a local
// endpoint's policy is in the kernel (waitProgrammed), which Join waits for when labels are off.
import type { KeyValue } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import type { Logger } from '../lib/log';
import type { PolicyModel } from '../policy/render';
import { PolicyState } from './policy-model';
import type { Manager } from './sync-loop';

/** The kernel side (dataplane/policy-dataplane.ts), reduced to what the manager drives. */
export interface PolicyApplier {
  /** Rejects on failure, and then has already forgotten whatever it may have written in part (the
   * next apply reads the kernel and repairs it). */
  apply(input: PolicyModel): Promise<unknown>;
  /** Forget what was applied: the next apply rewrites everything and removes strays. */
  resync(): void;
}

interface Waiter {
  readonly endpointId: string;
  readonly resolve: (programmed: boolean) => void;
  readonly timer: NodeJS.Timeout;
}

export class PolicyManager implements Manager {
  readonly name = 'policy';
  private readonly state: PolicyState;
  /** Local endpoints that were ready in the last successful apply. */
  private programmed = new Set<string>();
  /** Something changed since the last apply started. */
  private pending = true;
  private applying = false;
  private readonly waiters = new Set<Waiter>();

  constructor(
    keys: Keys,
    node: string,
    private readonly applier: PolicyApplier,
    log: Logger,
  ) {
    this.state = new PolicyState(keys, node, log);
  }

  update(key: string, kv: KeyValue | undefined): boolean {
    const changed = this.state.update(key, kv);
    if (changed) this.pending = true;
    return changed;
  }

  clear(): void {
    this.state.clear();
    this.pending = true;
  }

  resync(): void {
    this.applier.resync();
    this.pending = true;
  }

  async apply(): Promise<void> {
    this.pending = false;
    this.applying = true;
    try {
      const input = this.state.input();
      await this.applier.apply(input);
      this.programmed = new Set(input.localEndpoints.filter((e) => e.ready).map((e) => e.id));
    } finally {
      this.applying = false;
    }
    for (const w of this.waiters) {
      if (!this.programmed.has(w.endpointId)) continue;
      clearTimeout(w.timer);
      this.waiters.delete(w);
      w.resolve(true);
    }
  }

  /** Resolves true once the endpoint's policy is in the kernel, false after timeoutMs. */
  waitProgrammed(endpointId: string, timeoutMs: number): Promise<boolean> {
    if (this.programmed.has(endpointId) && !this.pending && !this.applying) return Promise.resolve(true);
    return new Promise((resolve) => {
      const waiter: Waiter = {
        endpointId,
        resolve,
        timer: setTimeout(() => {
          this.waiters.delete(waiter);
          resolve(false);
        }, timeoutMs),
      };
      this.waiters.add(waiter);
    });
  }

  /** Answers every waiter with false (the daemon is stopping). */
  close(): void {
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.resolve(false);
    }
    this.waiters.clear();
  }
}
