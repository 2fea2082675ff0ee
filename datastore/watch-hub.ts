// In-process watch fan-out with a bounded event history, so a watcher can resume from a revision
// it already saw (list() then watch from its revision) without the store keeping every change.
import type { Watch, WatchEvent, WatchHandlers } from './datastore';
import { WatchCompactedError } from './store-errors';

interface HistoryItem {
  readonly revision: bigint;
  readonly event: WatchEvent;
}

class HubWatcher implements Watch {
  private pending: WatchEvent[] = [];
  private scheduled = false;
  closed = false;

  constructor(
    readonly prefix: string,
    private readonly handlers: WatchHandlers,
    private readonly onClose: (w: HubWatcher) => void,
  ) {}

  push(event: WatchEvent): void {
    if (this.closed || !event.key.startsWith(this.prefix)) return;
    this.pending.push(event);
    if (!this.scheduled) {
      this.scheduled = true;
      // Deliver outside the committing code path so a handler that calls back into the store
      // cannot reorder or block commits.
      queueMicrotask(() => this.drain());
    }
  }

  fail(err: Error): void {
    if (this.closed) return;
    this.stop();
    queueMicrotask(() => this.handlers.onError(err));
  }

  async close(): Promise<void> {
    this.stop();
  }

  stop(): void {
    this.closed = true;
    this.pending = [];
    this.onClose(this);
  }

  private drain(): void {
    this.scheduled = false;
    const batch = this.pending;
    this.pending = [];
    for (const event of batch) {
      if (this.closed) return;
      try {
        this.handlers.onEvent(event);
      } catch (err) {
        // A handler that throws has lost track of state; the only safe continuation is a resync.
        this.fail(err instanceof Error ? err : new Error(String(err)));
        return;
      }
    }
  }
}

export class WatchHub {
  private readonly watchers = new Set<HubWatcher>();
  private history: HistoryItem[] = [];
  /** Every event after this revision is still in history. */
  private historyStart: bigint;

  /** Keeps at least `historyLimit` events (trimmed in batches, so up to twice that). */
  constructor(
    private readonly historyLimit: number,
    startRevision: bigint,
  ) {
    this.historyStart = startRevision;
  }

  publish(revision: bigint, event: WatchEvent): void {
    this.history.push({ revision, event });
    if (this.history.length >= this.historyLimit * 2) {
      const dropped = this.history.length - this.historyLimit;
      const last = this.history[dropped - 1];
      if (last !== undefined) this.historyStart = last.revision;
      this.history = this.history.slice(dropped);
    }
    for (const w of this.watchers) w.push(event);
  }

  watch(prefix: string, handlers: WatchHandlers, afterRevision: bigint | undefined): Watch {
    const w = new HubWatcher(prefix, handlers, (x) => this.watchers.delete(x));
    if (afterRevision !== undefined && afterRevision < this.historyStart) {
      w.fail(new WatchCompactedError(`cannot watch from revision ${afterRevision}: the store keeps changes only ` +
        `after revision ${this.historyStart}; resync with list()`));
      return w;
    }
    this.watchers.add(w);
    if (afterRevision !== undefined) {
      for (let i = this.firstAfter(afterRevision); i < this.history.length; i++) {
        const item = this.history[i];
        if (item !== undefined) w.push(item.event);
      }
    }
    return w;
  }

  closeAll(): void {
    for (const w of [...this.watchers]) w.stop();
  }

  private firstAfter(revision: bigint): number {
    let lo = 0;
    let hi = this.history.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const item = this.history[mid];
      if (item !== undefined && item.revision <= revision) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
