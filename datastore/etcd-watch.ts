// Adapts an etcd3 Watcher to the Datastore watch contract. etcd3 silently reconnects a broken watch
// stream and resumes from the last revision it saw; the contract instead reports any break, so the
// caller resyncs from list() and nothing that happened during the outage can be missed.
import type { IKeyValue, IWatchResponse, Watcher } from 'etcd3';
import type { Watch, WatchEvent, WatchHandlers } from './datastore';

/** Upper bound on waiting for etcd to confirm a cancel; a dead connection never will. */
const CANCEL_TIMEOUT_MS = 2_000;

type Failure = 'disconnected' | 'error' | 'timeout';

export class EtcdWatch implements Watch {
  private state: 'connecting' | 'open' | 'done' = 'connecting';
  /** Events that arrive with or right after etcd's "created" reply, before start(). */
  private early: WatchEvent[] = [];
  private settle: { resolve: () => void; reject: (err: Error) => void } | undefined;

  /** Listeners go on at once: etcd can send the first events in the same read as "created". */
  constructor(
    private readonly watcher: Watcher,
    private readonly handlers: WatchHandlers,
    /** Turns an etcd3 watch error into the typed error handed to the caller. */
    private readonly classify: (err: unknown, cause: Failure) => Promise<Error>,
    /** Called once when the watch ends on its own (not by close()), so the store forgets it. */
    private readonly onDone: () => void = () => undefined,
  ) {
    watcher.on('data', (res: IWatchResponse) => this.onData(res));
    watcher.on('connected', () => this.settle?.resolve());
    watcher.on('disconnected', (err: unknown) => void this.fail(err, 'disconnected'));
    watcher.on('error', (err: unknown) => void this.fail(err, 'error'));
  }

  /** True once the watch has failed or been closed. */
  get ended(): boolean {
    return this.state === 'done';
  }

  /** Resolves once etcd confirms the watch, then delivers what arrived meanwhile. */
  async start(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        this.settle = { resolve, reject };
        if (this.watcher.id !== null) resolve();
        timer = setTimeout(() => void this.fail(new Error(`not established within ${timeoutMs} ms`), 'timeout'), timeoutMs);
      });
    } finally {
      clearTimeout(timer);
      this.settle = undefined;
    }
    if (this.state !== 'connecting') return;
    this.state = 'open';
    const early = this.early;
    this.early = [];
    for (const event of early) this.deliver(event);
  }

  async close(): Promise<void> {
    if (this.state === 'done') return;
    this.state = 'done';
    await cancelWatcher(this.watcher);
  }

  private onData(res: IWatchResponse): void {
    for (const ev of res.events) {
      const event = toWatchEvent(ev.type, ev.kv);
      if (this.state === 'connecting') this.early.push(event);
      else this.deliver(event);
    }
  }

  private deliver(event: WatchEvent): void {
    if (this.state !== 'open') return;
    try {
      this.handlers.onEvent(event);
    } catch (err) {
      // A handler that throws has lost track of state; the only safe continuation is a resync.
      const error = err instanceof Error ? err : new Error(String(err));
      void this.fail(error, 'error', error);
    }
  }

  private async fail(err: unknown, cause: Failure, known?: Error): Promise<void> {
    if (this.state === 'done') return;
    const wasOpen = this.state === 'open';
    this.state = 'done';
    this.onDone();
    void cancelWatcher(this.watcher);
    const error = known ?? (await this.classify(err, cause));
    if (wasOpen) this.handlers.onError(error);
    else this.settle?.reject(error);
  }
}

/** Detaches the watcher from etcd3's shared stream, giving up after a bound. */
async function cancelWatcher(watcher: Watcher): Promise<void> {
  watcher.removeAllListeners('data');
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, CANCEL_TIMEOUT_MS);
  });
  try {
    await Promise.race([watcher.cancel().catch(() => undefined), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function toWatchEvent(type: string, kv: IKeyValue): WatchEvent {
  const key = kv.key.toString('utf8');
  return type === 'Delete'
    ? { type: 'delete', key, revision: kv.mod_revision }
    : { type: 'put', key, value: kv.value.toString('utf8'), revision: kv.mod_revision };
}
