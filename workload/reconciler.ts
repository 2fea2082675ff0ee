// Carries out the reconcile plan (workload/reconcile-plan.ts) on this host: once the front end
// (Docker) answers after start, then on a slow timer. It reads the kernel first, then the endpoint
// records, then the allocations, then asks the front end (see the plan for why the order matters),
// and removes or releases with one log line per thing. Every action is one the normal paths take:
// the endpoint service's remove (veth, routes, record), the allocator's release (conditional on
// the allocation being exactly the one read), so a reconcile racing a request changes nothing the
// request depends on.
import type { Datastore } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import type { Allocator } from '../ipam/allocator';
import { listAllocations } from '../ipam/block';
import { addressPart } from '../ipam/cidr';
import { errorMessage } from '../lib/errors';
import { logger } from '../lib/log';
import { listNodeEndpoints } from '../model/endpoint';
import type { EndpointService } from './endpoint-service';
import { allocationKey, isOwnAllocation, planReconcile, type PlanAllocation, type ReconcilePlan } from './reconcile-plan';

const log = logger('reconcile');

export interface ReconcilerOptions {
  readonly store: Datastore;
  readonly keys: Keys;
  readonly node: string;
  readonly allocator: Allocator;
  readonly endpoints: EndpointService;
  /** Endpoint IDs the front end knows; undefined when it cannot be asked (nothing is then
   * taken as stale). */
  readonly knownEndpoints: () => Promise<ReadonlySet<string> | undefined>;
  /** Whether the front end answers at all (start-up waits for it). */
  readonly frontEndReady: () => Promise<boolean>;
  /** This host's endpoint veths (host ends). */
  readonly listLinks: () => Promise<string[]>;
  /** Deletes a veth (and with it its routes); succeeds when it is gone. */
  readonly removeLink: (name: string) => Promise<void>;
  readonly ownsHandle: (handle: string) => boolean;
  /** The host interface prefix (`cali`). */
  readonly hostIfPrefix: string;
  readonly intervalMs: number;
  readonly graceMs: number;
  /** Between tries while the front end does not answer at start. */
  readonly retryMs?: number;
}

export interface ReconcileResult {
  readonly plan: ReconcilePlan;
  readonly removedEndpoints: number;
  readonly removedLinks: number;
  readonly released: number;
}

export class Reconciler {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> | undefined;
  private stopped = false;
  private wake: (() => void) | undefined;
  private readonly firstSeen = new Map<string, number>();

  constructor(private readonly o: ReconcilerOptions) {}

  /** Waits (in the background) until the front end answers, reconciles, then every interval. */
  start(): void {
    const retryMs = this.o.retryMs ?? 1_000;
    const first = async (): Promise<void> => {
      while (!this.stopped && !(await this.o.frontEndReady().catch(() => false))) await this.sleep(retryMs);
      if (this.stopped) return;
      log.info('Docker answers: reconciling this host, then every %ds', Math.round(this.o.intervalMs / 1000));
      await this.runLogged();
      this.schedule();
    };
    this.running = first();
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.runLogged().finally(() => this.schedule());
    }, this.o.intervalMs);
  }

  /** Resolves after ms, or at once when stopped. */
  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.wake = resolve;
      this.timer = setTimeout(resolve, ms);
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.wake?.();
    await this.running?.catch(() => undefined);
    if (this.timer !== undefined) clearTimeout(this.timer);
  }

  private async runLogged(): Promise<void> {
    try {
      await this.reconcileOnce();
    } catch (err) {
      log.warn('reconcile failed (tried again in %ds): %s', Math.round(this.o.intervalMs / 1000), errorMessage(err));
    }
  }

  /** One pass: read, plan, act. Exposed for tests and operators. */
  async reconcileOnce(): Promise<ReconcileResult> {
    // Kernel first, then records, then allocations, then Docker (see reconcile-plan.ts).
    const links = await this.o.listLinks();
    const records = await listNodeEndpoints(this.o.store, this.o.keys, this.o.node);
    const allocations: PlanAllocation[] = (await this.o.allocator.listBlocks()).flatMap((b) => listAllocations(b.block));
    const knownEndpoints = await this.o.knownEndpoints();
    const now = Date.now();
    this.noteFirstSeen(allocations, now);
    const plan = planReconcile({
      node: this.o.node,
      now,
      graceMs: this.o.graceMs,
      records,
      knownEndpoints,
      links,
      hostIfPrefix: this.o.hostIfPrefix,
      allocations,
      ownsHandle: this.o.ownsHandle,
      firstSeen: this.firstSeen,
    });
    if (knownEndpoints === undefined) log.warn('Docker cannot be asked for its endpoints: no endpoint record is taken as stale this time');
    let removedEndpoints = 0;
    // An endpoint whose removal failed keeps its veth and route: its addresses must stay held, or
    // they could be handed out again while the old route still points at the old veth.
    const kept = new Set<string>();
    const stale = await this.confirmStale(plan.staleEndpoints);
    for (const { endpoint } of plan.staleEndpoints) {
      if (stale.has(endpoint.id)) continue;
      kept.add(endpoint.id);
      for (const a of [...endpoint.ipv4, ...endpoint.ipv6]) kept.add(addressPart(a));
    }
    for (const { endpoint, reason } of plan.staleEndpoints) {
      if (!stale.has(endpoint.id)) continue;
      try {
        await this.o.endpoints.remove(endpoint.id);
        removedEndpoints++;
        const addresses = [...endpoint.ipv4, ...endpoint.ipv6].map(addressPart).join(', ') || 'no address';
        log.info('removed endpoint %s (%s, veth %s): %s', endpoint.id.slice(0, 12), addresses, endpoint.hostInterface, reason);
      } catch (err) {
        log.warn('removing stale endpoint %s: %s; its addresses stay held until it is removed', endpoint.id.slice(0, 12), errorMessage(err));
        kept.add(endpoint.id);
        for (const a of [...endpoint.ipv4, ...endpoint.ipv6]) kept.add(addressPart(a));
      }
    }
    let removedLinks = 0;
    for (const link of plan.strayLinks) {
      try {
        await this.o.removeLink(link);
        removedLinks++;
        log.info('removed veth %s: no endpoint record names it', link);
      } catch (err) {
        log.warn('removing stray veth %s: %s', link, errorMessage(err));
      }
    }
    for (const link of plan.keptLinks) log.warn('veth %s has no endpoint record but Docker still knows its endpoint: left alone', link);
    let released = 0;
    for (const r of plan.releases) {
      if (kept.has(r.ip) || (r.owner.endpointId !== undefined && kept.has(r.owner.endpointId))) continue;
      try {
        const outcome = await this.o.allocator.release({ ip: r.ip, requester: { node: r.owner.node, handle: r.owner.handle }, ifOwner: r.owner });
        if (outcome.status === 'released') {
          released++;
          log.info('released address %s (held by %s): %s', r.ip, r.owner.handle, reason(r.reason, r.owner.allocatedAt));
        }
      } catch (err) {
        log.warn('releasing address %s: %s', r.ip, errorMessage(err));
      }
    }
    return { plan, removedEndpoints, removedLinks, released };
  }

  /** The IDs of the endpoints planned as stale that Docker still does not know when asked again.
   * Removing a live workload's endpoint cuts it off, so one answer does not decide it: an answer
   * that missed a container (a loaded Docker, a container list taken mid-start) would have to miss
   * it twice. One listing more, and only when something looks stale; if Docker cannot be asked
   * now, nothing is removed this pass. */
  private async confirmStale(planned: ReconcilePlan['staleEndpoints']): Promise<ReadonlySet<string>> {
    if (planned.length === 0) return new Set();
    const again = await this.o.knownEndpoints().catch(() => undefined);
    if (again === undefined) {
      log.warn('Docker could not be asked again before removing %d endpoint record(s): left for the next pass', planned.length);
      return new Set();
    }
    const confirmed = new Set(planned.filter((s) => !again.has(s.endpoint.id)).map((s) => s.endpoint.id));
    for (const s of planned) {
      if (!confirmed.has(s.endpoint.id)) log.warn('endpoint %s: missing from Docker\'s first answer but in its second: left alone', s.endpoint.id.slice(0, 12));
    }
    return confirmed;
  }

  /** Ages allocations that carry no time from the first pass that saw them. */
  private noteFirstSeen(allocations: readonly PlanAllocation[], now: number): void {
    const seen = new Set<string>();
    for (const a of allocations) {
      if (a.owner.allocatedAt !== undefined || !isOwnAllocation(a.owner, this.o.node, this.o.ownsHandle)) continue;
      const key = allocationKey(a);
      seen.add(key);
      if (!this.firstSeen.has(key)) this.firstSeen.set(key, now);
    }
    for (const key of [...this.firstSeen.keys()]) if (!seen.has(key)) this.firstSeen.delete(key);
  }
}

function reason(text: string, allocatedAt: string | undefined): string {
  return allocatedAt === undefined ? text : `${text} (allocated ${allocatedAt})`;
}
