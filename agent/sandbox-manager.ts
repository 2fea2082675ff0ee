// The workload routing manager: every endpoint from the datastore, planned by sandbox-plan.ts for
// this host's workloads on several networks, written into their namespaces by
// dataplane/sandbox-routing.ts. An endpoint is recorded with its namespace when it is attached,
// before the front end has moved its interface there, so a plan that names an interface not there
// yet is tried again shortly (the manager wakes itself; the datastore has nothing new to say).
import type { KeyValue } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import type { SandboxOutcome, SandboxPlan } from '../dataplane/sandbox-routing';
import { errorMessage } from '../lib/errors';
import type { Logger } from '../lib/log';
import { parseStored } from '../model/codec';
import { Endpoint } from '../model/endpoint';
import { type PlanWorkloadEndpoint, planSandboxes } from './sandbox-plan';
import type { Manager } from './sync-loop';

/** The kernel side (dataplane/sandbox-routing.ts). */
export interface SandboxApplier {
  apply(plan: SandboxPlan): Promise<SandboxOutcome>;
}

const FIRST_RETRY_MS = 50;
const MAX_RETRY_MS = 5_000;

export class SandboxManager implements Manager {
  readonly name = 'workload routing';
  private readonly endpoints = new Map<string, PlanWorkloadEndpoint>();
  /** The plan last written per namespace (as JSON); forgotten on resync, so it is read back. */
  private readonly written = new Map<string, string>();
  /** Namespaces of this host's workloads at start, checked once for what a previous run left
   * (a workload that dropped to one network while the daemon was down). */
  private startupCheck: Set<string> | undefined;
  private wake: () => void = () => undefined;
  /** Failed attempts in a row per namespace still pending, for its back-off. */
  private readonly attempts = new Map<string, number>();
  private retryTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly keys: Keys,
    private readonly node: string,
    private readonly applier: SandboxApplier,
    private readonly log: Logger,
  ) {}

  setWake(wake: () => void): void {
    this.wake = wake;
  }

  update(key: string, kv: KeyValue | undefined): boolean {
    if (!key.startsWith(this.keys.nodesPrefix()) || !key.includes('/endpoints/')) return false;
    if (kv === undefined) return this.endpoints.delete(key);
    try {
      const e = parseStored(Endpoint, kv);
      this.endpoints.set(key, {
        id: e.id,
        node: e.node,
        networkId: e.networkId,
        addresses: [...e.ipv4, ...e.ipv6],
        gatewayIndex: e.gatewayIndex,
        ...(e.sandbox !== undefined && { sandbox: e.sandbox }),
      });
    } catch (err) {
      this.log.error('ignoring %s: %s', key, errorMessage(err));
      this.endpoints.delete(key);
    }
    return true;
  }

  clear(): void {
    this.endpoints.clear();
  }

  resync(): void {
    this.written.clear();
  }

  async apply(): Promise<void> {
    const endpoints = [...this.endpoints.values()];
    this.startupCheck ??= new Set(endpoints.flatMap((e) => (e.node === this.node && e.sandbox !== undefined ? [e.sandbox] : [])));
    const desired = new Map(planSandboxes(this.node, endpoints).map((p) => [p.sandbox, p]));
    for (const sandbox of new Set([...desired.keys(), ...this.written.keys(), ...this.attempts.keys(), ...this.startupCheck])) {
      const plan = desired.get(sandbox) ?? { sandbox, rules: [], routes: [] };
      const text = JSON.stringify(plan);
      if (this.written.get(sandbox) === text) continue;
      this.written.delete(sandbox);
      let outcome: SandboxOutcome;
      try {
        outcome = await this.applier.apply(plan);
      } catch (err) {
        // One namespace that cannot be read must not hold up the others (nor resync everything).
        this.log.warn('routing in %s: %s; retrying', sandbox, errorMessage(err));
        outcome = 'pending';
      }
      if (outcome !== 'pending') this.startupCheck.delete(sandbox);
      if (outcome === 'done' && plan.rules.length + plan.routes.length > 0) this.written.set(sandbox, text);
      if (outcome === 'pending') this.attempts.set(sandbox, (this.attempts.get(sandbox) ?? 0) + 1);
      else this.attempts.delete(sandbox);
    }
    this.scheduleRetry();
  }

  /** Wakes for the namespace due soonest: a fresh workload is retried within tens of ms, one
   * whose interface never came is retried every few seconds. */
  private scheduleRetry(): void {
    if (this.retryTimer !== undefined || this.attempts.size === 0) return;
    const fewest = Math.min(...this.attempts.values());
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.wake();
    }, Math.min(FIRST_RETRY_MS * 2 ** (fewest - 1), MAX_RETRY_MS));
    this.retryTimer.unref();
  }
}
