// One loop keeps every kernel concern of this host in line with the datastore, as Felix's
// dataplane does: it lists everything once, hands each key to the managers, lets each program its
// part, then follows a watch from the listing's revision, so no change is missed. Each change
// marks the managers it concerns dirty, and one apply loop writes what they changed (applies
// coalesce under bursts). If the watch breaks, or a manager's apply fails, it resyncs completely:
// fresh listing, and every manager rewrites its kernel state and removes strays. Nothing is
// flushed on the way, so a resync or a restart opens no gap.
import { performance } from 'node:perf_hooks';
import type { Datastore, KeyValue, ListResult, Watch } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import { errorMessage } from '../lib/errors';
import type { Logger } from '../lib/log';

const RETRY_MS = 1_000;
/** How often every manager compares the kernel with what it wrote and repairs it: other tools
 * (Docker inserting its own FORWARD rules above ours, an admin's iptables -F, ip route flush) can
 * undo our work without the datastore changing. */
const KERNEL_RESYNC_MS = 60_000;

/** One kernel concern (policy, routes, ...): it owns its kernel state and its resync. */
export interface Manager {
  readonly name: string;
  /** A key under the root changed (`kv` undefined: deleted). True when this manager's desired
   * state may have changed. */
  update(key: string, kv: KeyValue | undefined): boolean;
  /** Forget everything the datastore said (a fresh listing follows). */
  clear(): void;
  /** Bring the kernel in line with the desired state. Rejects on failure, having forgotten
   * whatever it may have written in part. */
  apply(): Promise<void>;
  /** Forget what was written: the next apply reads the kernel, rewrites and removes strays. */
  resync(): void;
  /** Given a function that schedules an apply of this manager, for work that must wait on
   * something other than the datastore (an interface still on its way into a namespace). */
  setWake?(wake: () => void): void;
}

/** Told how each manager's apply went (metrics). Must not throw. */
export interface SyncObserver {
  onApply(manager: string, seconds: number, ok: boolean): void;
  /** A full listing (start or resync) failed: the datastore could not be read. */
  onSyncFailed?(): void;
}

/** Whether the kernel follows the datastore (readiness). */
export interface SyncStatus {
  /** The first full sync completed. */
  readonly synced: boolean;
  /** Why the kernel may lag: the last apply or resync failed and no sync has succeeded since. */
  readonly failure?: string;
}

export class SyncLoop {
  private synced = false;
  private failure: string | undefined;
  private watch: Watch | undefined;
  private readonly dirty = new Set<Manager>();
  private loop: Promise<void> | undefined;
  private stopped = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private kernelTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly store: Datastore,
    private readonly keys: Keys,
    private readonly managers: readonly Manager[],
    private readonly log: Logger,
    private readonly observer?: SyncObserver,
  ) {
    for (const m of managers) m.setWake?.(() => this.markDirty([m]));
  }

  /** First full sync. Throws if the kernel cannot be programmed at all (e.g. no iptables), so the
   * daemon fails at start instead of serving endpoints it cannot protect. */
  async start(): Promise<void> {
    await this.sync();
    this.kernelTimer = setInterval(() => {
      for (const m of this.managers) m.resync();
      this.markDirty(this.managers);
    }, KERNEL_RESYNC_MS);
    this.kernelTimer.unref();
  }

  private async sync(): Promise<void> {
    await this.watch?.close();
    this.watch = undefined;
    let listing: ListResult;
    try {
      listing = await this.store.list(`${this.keys.root}/`);
    } catch (err) {
      this.observer?.onSyncFailed?.();
      throw err;
    }
    const { items, revision } = listing;
    for (const m of this.managers) {
      m.clear();
      for (const kv of items) m.update(kv.key, kv);
      m.resync();
      this.dirty.add(m);
    }
    await this.runLoop();
    this.watch = await this.store.watch(`${this.keys.root}/`, {
      onEvent: (e) => {
        const kv = e.type === 'put' ? { key: e.key, value: e.value, revision: e.revision } : undefined;
        this.markDirty(this.managers.filter((m) => m.update(e.key, kv)));
      },
      onError: (err) => {
        this.log.warn('datastore watch lost (%s); resyncing', errorMessage(err));
        this.failure = `datastore watch lost: ${errorMessage(err)}`;
        this.scheduleResync(0);
      },
    }, { afterRevision: revision });
    this.synced = true;
    this.failure = undefined;
  }

  status(): SyncStatus {
    return this.failure === undefined ? { synced: this.synced } : { synced: this.synced, failure: this.failure };
  }

  private scheduleResync(delayMs: number): void {
    if (this.stopped || this.retryTimer !== undefined) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.sync().catch((err: unknown) => {
        this.log.error('resync failed: %s; retrying in %dms', errorMessage(err), RETRY_MS);
        this.failure = `resync failed: ${errorMessage(err)}`;
        this.scheduleResync(RETRY_MS);
      });
    }, delayMs);
  }

  private markDirty(managers: readonly Manager[]): void {
    if (managers.length === 0) return;
    for (const m of managers) this.dirty.add(m);
    if (this.loop === undefined) {
      this.runLoop().catch((err: unknown) => {
        this.log.error('programming the kernel failed: %s; resyncing in %dms', errorMessage(err), RETRY_MS);
        this.failure = `programming the kernel failed: ${errorMessage(err)}`;
        this.scheduleResync(RETRY_MS);
      });
    }
  }

  /** One apply at a time; changes that arrive meanwhile are folded into the next one. */
  private runLoop(): Promise<void> {
    this.loop ??= (async () => {
      try {
        while (this.dirty.size > 0 && !this.stopped) {
          const due = this.managers.filter((m) => this.dirty.has(m));
          this.dirty.clear();
          for (const m of due) {
            const t0 = performance.now();
            try {
              await m.apply();
              this.observer?.onApply(m.name, (performance.now() - t0) / 1000, true);
            } catch (err) {
              this.observer?.onApply(m.name, (performance.now() - t0) / 1000, false);
              throw new Error(`${m.name}: ${errorMessage(err)}`, { cause: err });
            }
          }
        }
      } finally {
        this.loop = undefined;
      }
    })();
    return this.loop;
  }

  /** Stops following the datastore. What was programmed stays in the kernel: containers stay
   * protected and reachable while the daemon restarts. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    if (this.kernelTimer !== undefined) clearInterval(this.kernelTimer);
    await this.watch?.close();
    await this.loop?.catch(() => undefined);
  }
}
