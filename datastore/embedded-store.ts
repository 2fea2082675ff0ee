// The default single-host datastore: an in-memory map made durable by an append-only log under
// CALICO_DATA_DIR. Mutations go through one queue, so compare-and-swap is atomic; each batch of
// queued mutations is appended and fdatasync'ed once (group commit) before any of them resolves,
// so an acknowledged write survives SIGKILL or power loss, and readers never see a write that
// could still be lost.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { CalicoError, DatastoreUnavailableError, errorMessage } from '../lib/errors';
import type { Datastore, KeyValue, ListResult, TxnOp, Watch, WatchEvent, WatchHandlers, WatchOptions } from './datastore';
import { acquireDirLock, type DirLock } from './dir-lock';
import { LogWriter, removeSnapshotLeftover, replayLog, writeSnapshot, type LogChange, type StoredEntry } from './embedded-log';
import { fsyncDir } from './fs-util';
import { parseRevision, requireKey, requirePrefix, requireTxnOps } from './store-args';
import { WatchHub } from './watch-hub';

export interface EmbeddedStoreOptions {
  /** Events kept in memory for watch replay (afterRevision). Default 10,000. */
  readonly watchHistory?: number;
  /** The log is compacted once it exceeds twice its last compacted size plus this. Default 8 MiB. */
  readonly compactSlackBytes?: number;
}

const LOG_FILE = 'store.log';
const DEFAULT_WATCH_HISTORY = 10_000;
const DEFAULT_COMPACT_SLACK_BYTES = 8 << 20;

type Lookup = (key: string) => StoredEntry | undefined;

interface Job {
  readonly kind: 'mutation';
  /** Decides the changes (one commit, all at nextRevision) against the state including earlier
   * jobs of the same batch; undefined when a condition failed. */
  plan(lookup: Lookup, nextRevision: bigint): LogChange[] | undefined;
  settle(changes: LogChange[] | undefined): void;
  fail(err: Error): void;
}

/** Work that must see no mutation in flight, such as compaction. */
interface Task {
  readonly kind: 'task';
  run(): Promise<void>;
  fail(err: Error): void;
}

export class EmbeddedStore implements Datastore {
  readonly description: string;
  private queue: Array<Job | Task> = [];
  private flushing: Promise<void> | undefined;
  private closed = false;
  private broken: Error | undefined;
  private compactedBytes = 0;
  private readonly hub: WatchHub;
  private readonly compactSlackBytes: number;

  private constructor(
    readonly dir: string,
    private readonly lock: DirLock,
    private readonly logPath: string,
    private writer: LogWriter,
    private readonly entries: Map<string, StoredEntry>,
    private revision: bigint,
    options: EmbeddedStoreOptions,
  ) {
    this.description = `embedded store in ${dir}`;
    this.hub = new WatchHub(Math.max(1, options.watchHistory ?? DEFAULT_WATCH_HISTORY), revision);
    this.compactSlackBytes = options.compactSlackBytes ?? DEFAULT_COMPACT_SLACK_BYTES;
  }

  /** Opens (creating if needed) the store in `dir`, taking exclusive ownership of the directory. */
  static async open(dir: string, options: EmbeddedStoreOptions = {}): Promise<EmbeddedStore> {
    let lock: DirLock;
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      lock = await acquireDirLock(dir);
    } catch (err) {
      throw err instanceof CalicoError ? err : unavailable(`open embedded datastore ${dir}`, err);
    }
    try {
      const logPath = join(dir, LOG_FILE);
      await removeSnapshotLeftover(logPath);
      const replay = await replayLog(logPath);
      const writer = await LogWriter.open(logPath, replay);
      return new EmbeddedStore(dir, lock, logPath, writer, replay.entries, replay.revision, options);
    } catch (err) {
      await lock.release();
      throw err instanceof CalicoError ? err : unavailable(`open embedded datastore ${dir}`, err);
    }
  }

  async get(key: string): Promise<KeyValue | undefined> {
    requireKey(key);
    this.assertOpen();
    const entry = this.entries.get(key);
    return entry === undefined ? undefined : toKeyValue(key, entry);
  }

  async list(prefix: string): Promise<ListResult> {
    requirePrefix(prefix);
    this.assertOpen();
    const items: KeyValue[] = [];
    for (const [key, entry] of this.entries) {
      if (key.startsWith(prefix)) items.push(toKeyValue(key, entry));
    }
    items.sort((a, b) => compareKeys(a.key, b.key));
    return { items, revision: this.revision.toString() };
  }

  async create(key: string, value: string): Promise<KeyValue | undefined> {
    requireKey(key);
    return this.enqueue(
      (lookup, next) => (lookup(key) === undefined ? [{ key, value, revision: next }] : undefined),
      (changes) => (changes?.[0] === undefined ? undefined : changeToKeyValue(changes[0], value)),
    );
  }

  async update(key: string, value: string, revision: string): Promise<KeyValue | undefined> {
    requireKey(key);
    const expected = parseRevision(revision);
    return this.enqueue(
      (lookup, next) => (lookup(key)?.revision === expected ? [{ key, value, revision: next }] : undefined),
      (changes) => (changes?.[0] === undefined ? undefined : changeToKeyValue(changes[0], value)),
    );
  }

  async delete(key: string, revision?: string): Promise<boolean> {
    requireKey(key);
    const expected = revision === undefined ? undefined : parseRevision(revision);
    return this.enqueue(
      (lookup, next) => {
        const current = lookup(key);
        if (current === undefined || (expected !== undefined && current.revision !== expected)) return undefined;
        return [{ key, revision: next }];
      },
      (changes) => changes !== undefined,
    );
  }

  async commit(ops: readonly TxnOp[]): Promise<string | undefined> {
    requireTxnOps(ops);
    const checked = ops.map((op) => ({ op, expected: 'revision' in op && op.revision !== undefined ? parseRevision(op.revision) : undefined }));
    return this.enqueue(
      (lookup, next) => {
        const changes: LogChange[] = [];
        for (const { op, expected } of checked) {
          const current = lookup(op.key);
          switch (op.type) {
            case 'create':
              if (current !== undefined) return undefined;
              changes.push({ key: op.key, value: op.value, revision: next });
              break;
            case 'update':
              if (current?.revision !== expected) return undefined;
              changes.push({ key: op.key, value: op.value, revision: next });
              break;
            case 'delete':
              if (expected !== undefined && current?.revision !== expected) return undefined;
              if (current !== undefined) changes.push({ key: op.key, revision: next });
              break;
            case 'check':
              if (current?.revision !== expected) return undefined;
              break;
          }
        }
        return changes;
      },
      (changes) => (changes === undefined ? undefined : (changes[0]?.revision ?? this.revision).toString()),
    );
  }

  async watch(prefix: string, handlers: WatchHandlers, options: WatchOptions = {}): Promise<Watch> {
    requirePrefix(prefix);
    const after = options.afterRevision === undefined ? undefined : parseRevision(options.afterRevision);
    this.assertOpen();
    return this.hub.watch(prefix, handlers, after);
  }

  /** Rewrites the log to just the live keys now rather than when it next outgrows the threshold. */
  async compact(): Promise<void> {
    return this.enqueueMaintenance(() => this.compactNow());
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    while (this.flushing !== undefined) await this.flushing;
    this.hub.closeAll();
    try {
      await this.writer.close();
    } finally {
      await this.lock.release();
    }
  }

  private enqueue<T>(plan: Job['plan'], outcome: (changes: LogChange[] | undefined) => T): Promise<T> {
    this.assertOpen();
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ kind: 'mutation', plan, settle: (changes) => resolve(outcome(changes)), fail: reject });
      this.kick();
    });
  }

  private enqueueMaintenance(task: () => Promise<void>): Promise<void> {
    this.assertOpen();
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ kind: 'task', run: () => task().then(resolve), fail: reject });
      this.kick();
    });
  }

  private kick(): void {
    if (this.flushing !== undefined) return;
    this.flushing = this.flushLoop().finally(() => {
      this.flushing = undefined;
      if (this.queue.length > 0) this.kick();
    });
  }

  private async flushLoop(): Promise<void> {
    for (let item = this.queue[0]; item !== undefined; item = this.queue[0]) {
      if (item.kind === 'task') {
        this.queue.shift();
        await item.run().catch((err: unknown) => item.fail(err instanceof Error ? err : new Error(String(err))));
        continue;
      }
      const end = this.queue.findIndex((j) => j.kind === 'task');
      const jobs = this.queue.splice(0, end < 0 ? this.queue.length : end).filter((j): j is Job => j.kind === 'mutation');
      await this.commitBatch(jobs);
      await this.compactIfLarge();
    }
  }

  private async commitBatch(jobs: Job[]): Promise<void> {
    if (this.broken !== undefined) {
      for (const job of jobs) job.fail(this.brokenError());
      return;
    }
    const overlay = new Map<string, StoredEntry | undefined>();
    const lookup: Lookup = (key) => (overlay.has(key) ? overlay.get(key) : this.entries.get(key));
    const planned: Array<{ job: Job; changes: LogChange[] | undefined }> = [];
    const commits: LogChange[][] = [];
    let next = this.revision;
    for (const job of jobs) {
      const changes = job.plan(lookup, next + 1n);
      if (changes !== undefined && changes.length > 0) {
        next += 1n;
        for (const c of changes) overlay.set(c.key, c.value === undefined ? undefined : { value: c.value, revision: c.revision });
        commits.push(changes);
      }
      planned.push({ job, changes });
    }
    if (commits.length > 0) {
      try {
        await this.writer.append(commits);
      } catch (err) {
        this.broken = err instanceof Error ? err : new Error(String(err));
        for (const { job } of planned) job.fail(this.brokenError());
        return;
      }
      for (const change of commits.flat()) this.apply(change);
    }
    for (const { job, changes } of planned) job.settle(changes);
  }

  private apply(change: LogChange): void {
    const revision = change.revision.toString();
    let event: WatchEvent;
    if (change.value === undefined) {
      this.entries.delete(change.key);
      event = { type: 'delete', key: change.key, revision };
    } else {
      this.entries.set(change.key, { value: change.value, revision: change.revision });
      event = { type: 'put', key: change.key, value: change.value, revision };
    }
    this.revision = change.revision;
    this.hub.publish(change.revision, event);
  }

  private async compactIfLarge(): Promise<void> {
    if (this.broken !== undefined || this.writer.bytes <= this.compactedBytes * 2 + this.compactSlackBytes) return;
    try {
      await this.compactNow();
    } catch {
      // The old log is still intact and in use; try again once it has grown as much again.
      this.compactedBytes = this.writer.bytes;
    }
  }

  private async compactNow(): Promise<void> {
    if (this.broken !== undefined) throw this.brokenError();
    const size = await writeSnapshot(this.logPath, this.entries, this.revision);
    // The rename happened: the old handle now appends to an unlinked file, so nothing may be
    // written before the switch, and a failure from here on leaves no trustworthy log handle.
    const old = this.writer;
    try {
      this.writer = await LogWriter.open(this.logPath, { exists: true, fileBytes: size, validBytes: size });
      await fsyncDir(this.dir);
    } catch (err) {
      this.broken = err instanceof Error ? err : new Error(String(err));
      throw this.brokenError();
    } finally {
      await old.close().catch(() => undefined);
    }
    this.compactedBytes = size;
  }

  private assertOpen(): void {
    if (this.closed) throw new DatastoreUnavailableError(`embedded datastore ${this.dir} is closed`);
  }

  private brokenError(): DatastoreUnavailableError {
    return new DatastoreUnavailableError(
      `embedded datastore ${this.dir} stopped accepting writes after a storage error ` +
        `(${errorMessage(this.broken)}); restart the process to recover`,
      { cause: this.broken },
    );
  }
}

function toKeyValue(key: string, entry: StoredEntry): KeyValue {
  return { key, value: entry.value, revision: entry.revision.toString() };
}

function changeToKeyValue(change: LogChange, value: string): KeyValue {
  return { key: change.key, value, revision: change.revision.toString() };
}

/** UTF-8 byte order, as etcd sorts: UTF-16 code-unit order differs for characters above U+FFFF. */
function compareKeys(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) return astralRank(x) - astralRank(y);
  }
  return a.length - b.length;
}

function astralRank(unit: number): number {
  return unit >= 0xd800 && unit <= 0xdfff ? unit + 0x10000 : unit;
}

function unavailable(what: string, err: unknown): DatastoreUnavailableError {
  return new DatastoreUnavailableError(`${what}: ${errorMessage(err)}`, { cause: err });
}
