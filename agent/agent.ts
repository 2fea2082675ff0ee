// The policy agent: keeps this host's iptables/ipsets in line with the datastore. It lists
// everything once, programs it, then follows a watch from the listing's revision, so no change is
// missed; each change marks the model dirty and one apply loop writes the difference (applies
// coalesce under bursts). If the watch breaks, or an apply fails, it resyncs completely: fresh
// listing, and a kernel resync that removes strays. It never flushes its chains on the way, so a
// resync or a restart opens no gap in enforcement.
import type { Datastore, Watch } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import { errorMessage } from '../lib/errors';
import { logger } from '../lib/log';
import type { PolicyModel } from '../policy/render';
import { PolicyState } from './policy-model';

const log = logger('agent');
const RETRY_MS = 1_000;
/** How often the kernel is compared with what we wrote and repaired: other tools (Docker
 * restarting and inserting its own FORWARD rules above ours, an admin's iptables -F) can undo our
 * work without the datastore changing. */
const KERNEL_RESYNC_MS = 60_000;

/** The kernel side (dataplane/policy-dataplane.ts), reduced to what the agent drives. */
export interface PolicyApplier {
  /** Rejects on failure, and then has already forgotten whatever it may have written in part (the
   * next apply reads the kernel and repairs it), so the caller need not call resync(). */
  apply(input: PolicyModel): Promise<unknown>;
  /** Forget what was applied: the next apply rewrites everything and removes strays. */
  resync(): void;
}

interface Waiter {
  readonly endpointId: string;
  readonly resolve: (programmed: boolean) => void;
  readonly timer: NodeJS.Timeout;
}

export class PolicyAgent {
  private readonly model: PolicyState;
  private watch: Watch | undefined;
  private dirty = false;
  private loop: Promise<void> | undefined;
  private stopped = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private kernelTimer: NodeJS.Timeout | undefined;
  private readonly waiters = new Set<Waiter>();
  /** Local endpoints that were ready in the last successful apply. */
  private programmed = new Set<string>();

  constructor(
    private readonly store: Datastore,
    private readonly keys: Keys,
    node: string,
    private readonly applier: PolicyApplier,
  ) {
    this.model = new PolicyState(keys, node, log);
  }

  /** First full sync. Throws if the kernel cannot be programmed at all (e.g. no iptables), so the
   * daemon fails at start instead of serving endpoints it cannot protect. */
  async start(): Promise<void> {
    await this.sync();
    this.kernelTimer = setInterval(() => {
      this.applier.resync();
      this.markDirty();
    }, KERNEL_RESYNC_MS);
    this.kernelTimer.unref();
  }

  private async sync(): Promise<void> {
    await this.watch?.close();
    this.watch = undefined;
    const { items, revision } = await this.store.list(`${this.keys.root}/`);
    this.model.clear();
    for (const kv of items) this.model.update(kv.key, kv);
    this.applier.resync();
    this.dirty = true;
    await this.runLoop();
    this.watch = await this.store.watch(`${this.keys.root}/`, {
      onEvent: (e) => {
        const changed = this.model.update(e.key, e.type === 'put' ? { key: e.key, value: e.value, revision: e.revision } : undefined);
        if (changed) this.markDirty();
      },
      onError: (err) => {
        log.warn('datastore watch lost (%s); resyncing', errorMessage(err));
        this.scheduleResync(0);
      },
    }, { afterRevision: revision });
  }

  private scheduleResync(delayMs: number): void {
    if (this.stopped || this.retryTimer !== undefined) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.sync().catch((err: unknown) => {
        log.error('resync failed: %s; retrying in %dms', errorMessage(err), RETRY_MS);
        this.scheduleResync(RETRY_MS);
      });
    }, delayMs);
  }

  private markDirty(): void {
    this.dirty = true;
    if (this.loop === undefined) {
      this.runLoop().catch((err: unknown) => {
        log.error('programming policy failed: %s; resyncing in %dms', errorMessage(err), RETRY_MS);
        this.scheduleResync(RETRY_MS);
      });
    }
  }

  /** One apply at a time; changes that arrive meanwhile are folded into the next apply. */
  private runLoop(): Promise<void> {
    this.loop ??= (async () => {
      try {
        while (this.dirty && !this.stopped) {
          this.dirty = false;
          const input = this.model.input();
          await this.applier.apply(input);
          this.programmed = new Set(input.localEndpoints.filter((e) => e.ready).map((e) => e.id));
          this.wakeWaiters();
        }
      } finally {
        this.loop = undefined;
      }
    })();
    return this.loop;
  }

  private wakeWaiters(): void {
    for (const w of this.waiters) {
      if (!this.programmed.has(w.endpointId)) continue;
      clearTimeout(w.timer);
      this.waiters.delete(w);
      w.resolve(true);
    }
  }

  waitProgrammed(endpointId: string, timeoutMs: number): Promise<boolean> {
    if (this.programmed.has(endpointId) && this.loop === undefined && !this.dirty) return Promise.resolve(true);
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

  /** Stops following the datastore. The rules stay in the kernel: containers stay protected
   * while the daemon restarts. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    if (this.kernelTimer !== undefined) clearInterval(this.kernelTimer);
    await this.watch?.close();
    await this.loop?.catch(() => undefined);
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.resolve(false);
    }
    this.waiters.clear();
  }
}
