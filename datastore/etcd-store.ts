// Datastore on etcd v3, for multi-host deployments. Conditional writes are single etcd
// transactions, so their atomicity is etcd's. Writes are never retried by the client: a retried
// transaction whose first attempt did commit would report a false conflict, and a caller's
// read-modify-write loop would then apply its change twice.
import { readFile } from 'node:fs/promises';
import { rootCertificates } from 'node:tls';
import {
  Etcd3,
  GRPCDeadlineExceededError,
  Range,
  isRecoverableError,
  type IKeyValue,
  type IOperation,
  type Lease,
  type IOptions,
  type IRangeResponse,
} from 'etcd3';
import { ConfigError, DatastoreUnavailableError, errorMessage } from '../lib/errors';
import type { Datastore, KeyValue, ListResult, TxnOp, Watch, WatchHandlers, WatchOptions } from './datastore';
import { EtcdWatch } from './etcd-watch';
import { parseRevision, requireKey, requirePrefix, requireTxnOps } from './store-args';
import { WatchCompactedError } from './store-errors';

export interface EtcdOptions {
  /** Client URLs, http:// or https://. */
  readonly endpoints: readonly string[];
  readonly caFile?: string;
  readonly certFile?: string;
  readonly keyFile?: string;
  readonly username?: string;
  readonly password?: string;
  /** How long to wait for an unreachable etcd before failing. Default 3 s. */
  readonly dialTimeoutMs?: number;
  /** Deadline of each request. Default 10 s. */
  readonly requestTimeoutMs?: number;
}

const DEFAULT_DIAL_TIMEOUT_MS = 3_000;
const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;
/** Keeps each list response far below gRPC's 4 MiB default message limit. */
const LIST_PAGE_SIZE = 256;
const LIST_ATTEMPTS = 3;
const HOLD_RETRY_MS = 2_000;

export interface HeldKey {
  /** Deletes the key now and stops renewing it. */
  release(): Promise<void>;
}

type GlobalPolicy = NonNullable<NonNullable<IOptions['faultHandling']>['global']>;

/** Runs each call once; see the header comment for why writes must not be retried. */
const SINGLE_ATTEMPT: GlobalPolicy = {
  _altReturn: undefined as never,
  onSuccess: () => ({ dispose: () => undefined }),
  onFailure: () => ({ dispose: () => undefined }),
  execute: async (fn) => fn({ signal: new AbortController().signal }),
};

export class EtcdStore implements Datastore {
  private readonly watches = new Set<Watch>();
  /** Leases of held keys: close() stops renewing them (without revoking), as a process exit would. */
  private readonly leases = new Set<Lease>();
  private closed = false;
  private readonly where: string;

  private constructor(
    private readonly client: Etcd3,
    endpoints: readonly string[],
    private readonly dialTimeoutMs: number,
  ) {
    this.where = `etcd at ${endpoints.map(redact).join(',')}`;
  }

  /** Connects and checks that etcd answers, so a wrong endpoint fails at start, not first use. */
  static async open(options: EtcdOptions): Promise<EtcdStore> {
    if (options.endpoints.length === 0) throw new ConfigError('etcd: no endpoints given');
    const dialTimeoutMs = options.dialTimeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS;
    const requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    const credentials = await readTls(options);
    const client = new Etcd3({
      hosts: [...options.endpoints],
      dialTimeout: dialTimeoutMs,
      ...(credentials !== undefined && { credentials }),
      ...(options.username !== undefined && { auth: { username: options.username, password: options.password ?? '' } }),
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + requestTimeoutMs }),
      faultHandling: { global: SINGLE_ATTEMPT },
    });
    const store = new EtcdStore(client, options.endpoints, dialTimeoutMs);
    try {
      await client.maintenance.status({ deadline: Date.now() + dialTimeoutMs });
    } catch (err) {
      client.close();
      throw store.unavailable('connect', err);
    }
    return store;
  }

  async get(key: string): Promise<KeyValue | undefined> {
    requireKey(key);
    const res = await this.read(`get ${key}`, () => this.client.get(key).exec());
    const kv = res.kvs[0];
    return kv === undefined ? undefined : toKeyValue(kv);
  }

  async list(prefix: string): Promise<ListResult> {
    requirePrefix(prefix);
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.listPages(prefix);
      } catch (err) {
        // A compaction between pages invalidates the pinned revision; start over at a new one.
        if (attempt >= LIST_ATTEMPTS || !isCompactedError(err)) throw this.unavailable(`list ${prefix}`, err);
      }
    }
  }

  async create(key: string, value: string): Promise<KeyValue | undefined> {
    requireKey(key);
    const res = await this.once(`create ${key}`, () =>
      this.client.if(key, 'Create', '==', 0).then(this.client.put(key).value(value)).commit(),
    );
    return res.succeeded ? { key, value, revision: res.header.revision } : undefined;
  }

  async update(key: string, value: string, revision: string): Promise<KeyValue | undefined> {
    requireKey(key);
    parseRevision(revision);
    // Version > 0: an absent key has mod revision 0, and revision '0' must not create it.
    const res = await this.once(`update ${key}`, () =>
      this.client
        .if(key, 'Mod', '==', revision)
        .and(key, 'Version', '>', 0)
        .then(this.client.put(key).value(value))
        .commit(),
    );
    return res.succeeded ? { key, value, revision: res.header.revision } : undefined;
  }

  async delete(key: string, revision?: string): Promise<boolean> {
    requireKey(key);
    if (revision === undefined) {
      const res = await this.once(`delete ${key}`, () => this.client.delete().key(key).exec());
      return res.deleted !== '0';
    }
    parseRevision(revision);
    const res = await this.once(`delete ${key}`, () =>
      this.client.if(key, 'Mod', '==', revision).and(key, 'Version', '>', 0).then(this.client.delete().key(key)).commit(),
    );
    return res.succeeded && res.responses[0]?.response_delete_range.deleted !== '0';
  }

  async commit(ops: readonly TxnOp[]): Promise<string | undefined> {
    requireTxnOps(ops);
    const first = ops[0];
    if (first === undefined) return undefined;
    // Every txn needs a first compare; a key's version is never negative, so this one always holds.
    let txn = this.client.if(first.key, 'Version', '>', -1);
    const writes: IOperation[] = [];
    for (const op of ops) {
      switch (op.type) {
        case 'create':
          txn = txn.and(op.key, 'Create', '==', 0);
          writes.push(this.client.put(op.key).value(op.value));
          break;
        case 'update':
          txn = txn.and(op.key, 'Mod', '==', op.revision).and(op.key, 'Version', '>', 0);
          writes.push(this.client.put(op.key).value(op.value));
          break;
        case 'delete':
          if (op.revision !== undefined) txn = txn.and(op.key, 'Mod', '==', op.revision).and(op.key, 'Version', '>', 0);
          writes.push(this.client.delete().key(op.key));
          break;
        case 'check':
          txn = txn.and(op.key, 'Mod', '==', op.revision).and(op.key, 'Version', '>', 0);
          break;
      }
    }
    const res = await this.once(`commit ${ops.length} operation${ops.length === 1 ? '' : 's'} on ${first.key}`, () =>
      txn.then(...writes).commit(),
    );
    return res.succeeded ? res.header.revision : undefined;
  }

  /** Keeps `key` = `value` for as long as this client lives: bound to an etcd lease of
   * `ttlSeconds` that the client renews; if this process dies the key goes after the TTL. A lease
   * lost while etcd was unreachable is granted again once etcd answers. release() deletes it now. */
  async holdKey(key: string, value: string, ttlSeconds: number): Promise<HeldKey> {
    requireKey(key);
    this.assertOpen();
    let released = false;
    let lease: Lease | undefined;
    let retry: NodeJS.Timeout | undefined;
    const grant = async (): Promise<void> => {
      if (lease !== undefined) this.leases.delete(lease);
      const next = this.client.lease(ttlSeconds);
      lease = next;
      this.leases.add(next);
      next.on('lost', () => {
        if (!released && !this.closed) retry = setTimeout(regrant, HOLD_RETRY_MS);
      });
      await next.put(key).value(value);
    };
    const regrant = (): void => {
      grant().catch(() => {
        if (!released && !this.closed) retry = setTimeout(regrant, HOLD_RETRY_MS);
      });
    };
    try {
      await grant();
    } catch (err) {
      lease?.release();
      throw this.unavailable(`hold ${key}`, err);
    }
    return {
      release: async () => {
        released = true;
        clearTimeout(retry);
        if (lease !== undefined) this.leases.delete(lease);
        await lease?.revoke().catch(() => undefined);
      },
    };
  }

  async watch(prefix: string, handlers: WatchHandlers, options: WatchOptions = {}): Promise<Watch> {
    requirePrefix(prefix);
    const after = options.afterRevision === undefined ? undefined : parseRevision(options.afterRevision);
    this.assertOpen();
    const builder = this.client.watch().inRange(Range.prefix(prefix));
    const start = after === undefined ? undefined : (after + 1n).toString();
    if (start !== undefined) builder.startRevision(start);
    const watch: EtcdWatch = new EtcdWatch(
      builder.watcher(),
      handlers,
      (err, cause) => this.classifyWatchError(err, cause, prefix, start),
      // A watch that fails ends on its own; keep only live ones for close().
      () => this.watches.delete(watch),
    );
    await watch.start(this.dialTimeoutMs);
    // It may already have ended: a handler that threw on an early event fails it during start().
    if (!watch.ended) this.watches.add(watch);
    return {
      close: async () => {
        this.watches.delete(watch);
        await watch.close();
      },
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.watches].map((w) => w.close()));
    this.watches.clear();
    for (const lease of this.leases) lease.release();
    this.leases.clear();
    this.client.close();
  }

  private async listPages(prefix: string): Promise<ListResult> {
    const whole = Range.prefix(prefix);
    const items: KeyValue[] = [];
    let start = whole.start;
    let revision: string | undefined;
    for (;;) {
      const builder = this.client.getAll().inRange(new Range(start, whole.end)).sort('Key', 'Ascend').limit(LIST_PAGE_SIZE);
      if (revision !== undefined) builder.revision(revision);
      const res: IRangeResponse = await this.call(() => builder.exec());
      revision ??= res.header.revision;
      items.push(...res.kvs.map(toKeyValue));
      const last = res.kvs[res.kvs.length - 1];
      if (!res.more || last === undefined) return { items, revision };
      start = Buffer.concat([last.key, Buffer.from([0])]);
    }
  }

  /** Reads are idempotent, so one retry covers a dead endpoint among several. */
  private async read<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await this.call(fn);
    } catch (err) {
      if (!(err instanceof Error) || !isRecoverableError(err)) throw this.unavailable(what, err);
      return this.once(what, fn);
    }
  }

  /** One attempt, failures reported as DatastoreUnavailableError: all that writes get (see the
   * header), and a read's second try. */
  private async once<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await this.call(fn);
    } catch (err) {
      throw this.unavailable(what, err);
    }
  }

  private call<T>(fn: () => Promise<T>): Promise<T> {
    this.assertOpen();
    return fn();
  }

  private async classifyWatchError(err: unknown, cause: string, prefix: string, start: string | undefined): Promise<Error> {
    // etcd cancels a watch whose start revision was compacted away with an empty cancel reason,
    // which etcd3 does not surface; asking etcd for that revision tells compaction apart.
    if (cause === 'error' && start !== undefined && !this.closed) {
      try {
        await this.client.get(prefix === '' ? '\0' : prefix).revision(start).exec();
      } catch (probe) {
        if (isCompactedError(probe)) {
          return new WatchCompactedError(`watch ${prefix} from revision ${start}: ${this.where} has compacted that history; resync with list()`);
        }
      }
    }
    return this.unavailable(`watch ${prefix}`, err);
  }

  private assertOpen(): void {
    if (this.closed) throw new DatastoreUnavailableError(`${this.where}: client is closed`);
  }

  private unavailable(what: string, err: unknown): DatastoreUnavailableError {
    if (err instanceof DatastoreUnavailableError) return err;
    const detail =
      err instanceof GRPCDeadlineExceededError
        ? `no answer within the deadline (${errorMessage(err)})`
        : /circuit breaker is open/.test(errorMessage(err))
          ? 'recent requests failed, so requests are held back for a few seconds'
          : errorMessage(err);
    return new DatastoreUnavailableError(`${this.where}: ${what}: ${detail}`, { cause: err });
  }
}

function toKeyValue(kv: IKeyValue): KeyValue {
  return { key: kv.key.toString('utf8'), value: kv.value.toString('utf8'), revision: kv.mod_revision };
}

function isCompactedError(err: unknown): boolean {
  return err instanceof Error && err.message.includes('required revision has been compacted');
}

async function readTls(options: EtcdOptions): Promise<IOptions['credentials']> {
  if (options.caFile === undefined && options.certFile === undefined && options.keyFile === undefined) return undefined;
  const read = async (what: string, path: string | undefined): Promise<Buffer | undefined> => {
    if (path === undefined) return undefined;
    try {
      return await readFile(path);
    } catch (err) {
      throw new ConfigError(`etcd TLS ${what} file ${path}: ${errorMessage(err)}`, { cause: err });
    }
  };
  const [ca, cert, key] = await Promise.all([
    read('CA', options.caFile),
    read('certificate', options.certFile),
    read('key', options.keyFile),
  ]);
  return {
    // A client certificate without a CA file still has to trust the server: use the system roots.
    rootCertificate: ca ?? Buffer.from(rootCertificates.join('\n')),
    ...(key !== undefined && { privateKey: key }),
    ...(cert !== undefined && { certChain: cert }),
  };
}

/** Endpoints appear in error messages; never let a URL's user:password reach a log. */
function redact(endpoint: string): string {
  try {
    const url = new URL(endpoint);
    url.username = '';
    url.password = '';
    return url.toString().replace(/\/$/, '');
  } catch {
    return endpoint.replace(/\/\/[^@/]*@/, '//');
  }
}
