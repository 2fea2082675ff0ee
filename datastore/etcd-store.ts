// Datastore on etcd v3, for multi-host deployments. Every write is one etcd transaction, so its
// atomicity is etcd's.
//
// Outages are bounded: each operation (with everything it does to recover) answers or fails with
// DatastoreUnavailableError within `requestTimeoutMs` (CALICO_DATASTORE_TIMEOUT), whether etcd
// refuses connections or hangs. Within that bound a member that fails is worked around: a read
// is sent again (etcd3 picks another member, and its per-member circuit breaker soon skips the
// dead one). A write is never sent again blindly: a write whose answer was lost is settled by
// reading back (write-outcome.ts), and sent again only once proven not committed, with the same
// conditions, so that at most one of its attempts can ever commit.
import { readFile } from 'node:fs/promises';
import { rootCertificates } from 'node:tls';
import {
  Etcd3,
  EtcdAuthenticationFailedError,
  EtcdPermissionDeniedError,
  EtcdRoleNotGrantedError,
  EtcdUserNotFoundError,
  GRPCDeadlineExceededError,
  GRPCFailedPreconditionError,
  GRPCInvalidArgumentError,
  GRPCNotImplementedError,
  GRPCOutOfRangeError,
  GRPCUnauthenticatedError,
  GRPCUnavailableError,
  Range,
  isRecoverableError,
  type IKeyValue,
  type IOperation,
  type Lease,
  type IOptions,
  type IRangeResponse,
} from 'etcd3';
import { ConfigError, DatastoreUnavailableError, errorMessage } from '../lib/errors';
import { logger } from '../lib/log';
import { requestDeadline } from '../lib/request-deadline';
import type { Datastore, KeyValue, ListResult, TxnOp, Watch, WatchHandlers, WatchOptions } from './datastore';
import { EtcdWatch } from './etcd-watch';
import { parseRevision, requireKey, requirePrefix, requireTxnOps } from './store-args';
import { WatchCompactedError } from './store-errors';
import { type HistoryReader, type KeyState, resolveOutcome } from './write-outcome';

export interface EtcdOptions {
  /** Client URLs, http:// or https://. */
  readonly endpoints: readonly string[];
  readonly caFile?: string;
  readonly certFile?: string;
  readonly keyFile?: string;
  readonly username?: string;
  readonly password?: string;
  /** How long to wait for an unreachable etcd at open() and for a watch to start. Default: the
   * request timeout. */
  readonly dialTimeoutMs?: number;
  /** Bound of each operation, retries and read-backs included. Default 5 s. */
  readonly requestTimeoutMs?: number;
}

export const DEFAULT_REQUEST_TIMEOUT_MS = 5_000;
/** With several members, one attempt gets at most this share of an operation's bound (but at
 * least MIN_ATTEMPT_MS), so a hung member leaves time to try another. With one member there is
 * no other to try: an attempt may use the whole bound (a loaded etcd is slow, not gone). */
const ATTEMPT_SHARE = 0.5;
const MIN_ATTEMPT_MS = 1_000;
/** A write's attempts end this share of the bound before it, so that a write whose answer is
 * lost can still be settled by reading back (with one member an attempt could otherwise take the
 * whole bound and leave the read-back none). */
const READ_BACK_SHARE = 0.25;
/** Between attempts after a fast failure (connection refused): lets the breaker and reconnects
 * move on instead of spinning. */
const RETRY_PAUSE_MS = 50;

const log = logger('etcd');
/** Keeps each list response far below gRPC's 4 MiB default message limit. */
const LIST_PAGE_SIZE = 256;
const LIST_ATTEMPTS = 3;
const HOLD_RETRY_MS = 2_000;

export interface HeldKey {
  /** Deletes the key now and stops renewing it. */
  release(): Promise<void>;
}

type GlobalPolicy = NonNullable<NonNullable<IOptions['faultHandling']>['global']>;

/** What one operation may still spend. */
interface Budget {
  readonly deadline: number;
  /** The allowance the deadline came from (for messages): the operation's own bound, or that
   * of the plugin request it serves when that ends first. */
  readonly boundMs: number;
  readonly ofRequest: boolean;
}

/** Counters of outage handling (tests, logs). */
export interface EtcdStoreStats {
  /** Reads sent again after a failed attempt. */
  readRetries: number;
  /** Writes whose answer was lost and that were settled by reading back. */
  unknownOutcomes: number;
  /** Of those, the ones found committed. */
  foundApplied: number;
  /** Writes sent again after a read-back proved them not committed. */
  resent: number;
}

interface WriteResult {
  readonly revision: string;
  /** Keys a delete removed (only meaningful for a single delete). */
  readonly deleted: boolean;
}

/** Runs each call once: this class retries itself, reads freely, writes only after reading back. */
const SINGLE_ATTEMPT: GlobalPolicy = {
  _altReturn: undefined as never,
  onSuccess: () => ({ dispose: () => undefined }),
  onFailure: () => ({ dispose: () => undefined }),
  execute: async (fn) => fn({ signal: new AbortController().signal }),
};

/** Connection failures in a row after which a member is held back. */
const BREAK_AFTER = 3;
const HOLD_BACK_MS = 1_000;

/** Per member: after BREAK_AFTER connection failures in a row (refused, dropped: a dead member)
 * calls skip it for HOLD_BACK_MS, then one call tries it again. Unlike etcd3's default breaker,
 * a missed deadline does not count: on a loaded machine etcd is slow, not gone, and holding back
 * the only member would fail requests that could have waited, including the read-back that
 * settles a write. Holding back is said with cockatiel's words, which callers recognise. */
function memberBreaker(): GlobalPolicy {
  let failures = 0;
  let heldUntil = 0;
  return {
    ...SINGLE_ATTEMPT,
    execute: async (fn) => {
      if (Date.now() < heldUntil) throw new Error('Execution prevented because the circuit breaker is open');
      try {
        const result = await fn({ signal: new AbortController().signal });
        failures = 0;
        return result;
      } catch (err) {
        if (err instanceof GRPCUnavailableError || (err instanceof Error && /UNAVAILABLE|ECONNREFUSED/.test(err.message))) {
          failures++;
          if (failures >= BREAK_AFTER) {
            heldUntil = Date.now() + HOLD_BACK_MS;
            failures = BREAK_AFTER - 1; // the trial call after the hold decides alone
          }
        }
        throw err;
      }
    },
  };
}

export class EtcdStore implements Datastore {
  readonly stats: EtcdStoreStats = { readRetries: 0, unknownOutcomes: 0, foundApplied: 0, resent: 0 };
  private readonly watches = new Set<Watch>();
  /** Leases of held keys: close() stops renewing them (without revoking), as a process exit would. */
  private readonly leases = new Set<Lease>();
  private closed = false;
  readonly description: string;
  /** The newest store revision any answer carried: a write sent after it commits above it. */
  private seenRevision = 0n;

  private constructor(
    private readonly client: Etcd3,
    endpoints: readonly string[],
    private readonly dialTimeoutMs: number,
    private readonly requestTimeoutMs: number,
    private readonly attemptMs: number,
  ) {
    this.description = `etcd at ${endpoints.map(redact).join(',')}`;
  }

  /** Connects and checks that etcd answers, so a wrong endpoint fails at start, not first use. */
  static async open(options: EtcdOptions): Promise<EtcdStore> {
    if (options.endpoints.length === 0) throw new ConfigError('etcd: no endpoints given');
    const requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    const dialTimeoutMs = options.dialTimeoutMs ?? requestTimeoutMs;
    const credentials = await readTls(options);
    const client = new Etcd3({
      hosts: [...options.endpoints],
      dialTimeout: dialTimeoutMs,
      ...(credentials !== undefined && { credentials }),
      ...(options.username !== undefined && { auth: { username: options.username, password: options.password ?? '' } }),
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + requestTimeoutMs }),
      faultHandling: { global: SINGLE_ATTEMPT, host: () => memberBreaker() },
    });
    const attemptMs = options.endpoints.length > 1 ? Math.max(MIN_ATTEMPT_MS, requestTimeoutMs * ATTEMPT_SHARE) : requestTimeoutMs;
    const store = new EtcdStore(client, options.endpoints, dialTimeoutMs, requestTimeoutMs, attemptMs);
    try {
      const status = await client.maintenance.status({ deadline: Date.now() + dialTimeoutMs });
      store.see(status.header.revision);
    } catch (err) {
      client.close();
      throw store.unavailable('connect', err, { boundMs: dialTimeoutMs, ofRequest: false });
    }
    return store;
  }

  async get(key: string): Promise<KeyValue | undefined> {
    requireKey(key);
    const res = await this.read(`get ${key}`, this.budget(), (o) => this.client.get(key).options(o).exec());
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
    const res = await this.write(`create ${key}`, [{ type: 'create', key, value }]);
    return res === undefined ? undefined : { key, value, revision: res.revision };
  }

  async update(key: string, value: string, revision: string): Promise<KeyValue | undefined> {
    requireKey(key);
    parseRevision(revision);
    const res = await this.write(`update ${key}`, [{ type: 'update', key, value, revision }]);
    return res === undefined ? undefined : { key, value, revision: res.revision };
  }

  async delete(key: string, revision?: string): Promise<boolean> {
    requireKey(key);
    if (revision !== undefined) parseRevision(revision);
    const res = await this.write(`delete ${key}`, [{ type: 'delete', key, ...(revision !== undefined && { revision }) }]);
    return res?.deleted ?? false;
  }

  async commit(ops: readonly TxnOp[]): Promise<string | undefined> {
    requireTxnOps(ops);
    const first = ops[0];
    if (first === undefined) return undefined;
    const res = await this.write(`commit ${ops.length} operation${ops.length === 1 ? '' : 's'} on ${first.key}`, ops);
    return res?.revision;
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
      const from = start;
      const pinned = revision;
      // Each page has the whole bound: a large listing is progress, not a hung etcd.
      const res: IRangeResponse = await this.read(`list ${prefix}`, this.budget(), (o) => {
        const builder = this.client.getAll().inRange(new Range(from, whole.end)).sort('Key', 'Ascend').limit(LIST_PAGE_SIZE).options(o);
        if (pinned !== undefined) builder.revision(pinned);
        return builder.exec();
      });
      revision ??= res.header.revision;
      items.push(...res.kvs.map(toKeyValue));
      const last = res.kvs[res.kvs.length - 1];
      if (!res.more || last === undefined) return { items, revision };
      start = Buffer.concat([last.key, Buffer.from([0])]);
    }
  }

  /** The operation's own bound, cut short by the deadline of the plugin request it serves. */
  private budget(): Budget {
    const own = Date.now() + this.requestTimeoutMs;
    const request = requestDeadline();
    return request !== undefined && request.at < own
      ? { deadline: request.at, boundMs: request.budgetMs, ofRequest: true }
      : { deadline: own, boundMs: this.requestTimeoutMs, ofRequest: false };
  }

  /** A request that spent its time waiting (for a turn, for earlier operations) sends nothing. */
  private requireTime(what: string, b: Budget): void {
    if (Date.now() < b.deadline) return;
    throw new DatastoreUnavailableError(`${this.description}: ${what}: not sent: the request's ${b.boundMs} ms (CALICO_DATASTORE_TIMEOUT) ran out before it`);
  }

  /** gRPC options of one attempt within the budget. */
  private attempt(b: Budget): { deadline: number } {
    return { deadline: Math.min(b.deadline, Date.now() + this.attemptMs) };
  }

  private see(revision: string): void {
    const r = BigInt(revision);
    if (r > this.seenRevision) this.seenRevision = r;
  }

  /** Reads are idempotent: sent again while the budget lasts, so a dead or hung member among
   * several costs time, not the request. */
  private async read<T extends { header: { revision: string } }>(what: string, b: Budget, fn: (options: { deadline: number }) => Promise<T>): Promise<T> {
    this.requireTime(what, b);
    for (;;) {
      this.assertOpen();
      try {
        const res = await fn(this.attempt(b));
        this.see(res.header.revision);
        return res;
      } catch (err) {
        if (!this.mayRetry(err, b)) throw this.unavailable(what, err, b);
        this.stats.readRetries++;
        await sleep(RETRY_PAUSE_MS);
      }
    }
  }

  private mayRetry(err: unknown, b: Budget): boolean {
    return !this.closed && err instanceof Error && isRecoverableError(err) && Date.now() + RETRY_PAUSE_MS < b.deadline;
  }

  /** One transaction: the conditions of `ops`, then their writes. Undefined when a condition did
   * not hold. An attempt whose answer is lost is settled by reading back (see the header). */
  private async write(what: string, ops: readonly TxnOp[]): Promise<WriteResult | undefined> {
    const b = this.budget();
    this.requireTime(what, b);
    // Attempts end early enough to leave the read-back its share of the time.
    const sending: Budget = { ...b, deadline: b.deadline - (b.deadline - Date.now()) * READ_BACK_SHARE };
    const sentAfter = this.seenRevision.toString();
    let lost: unknown; // the error of an attempt whose outcome was unknown
    for (;;) {
      this.assertOpen();
      try {
        const res = await this.txn(ops).options(this.attempt(sending)).commit();
        this.see(res.header.revision);
        // Only the requested kind of a response is set (a oneof), whatever the typings say.
        const deleted = res.responses.some((r) => (r.response_delete_range as { deleted: string } | null | undefined)?.deleted !== undefined && r.response_delete_range.deleted !== '0');
        if (res.succeeded) return { revision: res.header.revision, deleted };
        // A lost condition after a lost answer may be our own earlier attempt: settle it.
        if (lost === undefined) return undefined;
      } catch (err) {
        if (!mayHaveBeenApplied(err) && lost === undefined) throw this.unavailable(what, err, b);
        lost ??= err;
      }
      this.stats.unknownOutcomes++;
      let outcome;
      try {
        outcome = await resolveOutcome(ops, sentAfter, this.history(b));
      } catch (err) {
        throw this.unavailable(`${what}: its outcome is unknown (it may or may not have been applied; reading back failed: ${errorMessage(err)})`, lost, b);
      }
      // One line per settled write: an operator sees a member failing without any request failing.
      log.warn('%s: %s: answer lost (%s); read back: %s', this.description, what, errorMessage(lost),
        outcome.kind === 'applied' ? `it was applied at revision ${outcome.revision}` : outcome.kind === 'conflict' ? 'not applied, another writer came first' : 'not applied, sending it again');
      if (outcome.kind === 'applied') {
        this.stats.foundApplied++;
        return { revision: outcome.revision, deleted: true };
      }
      if (outcome.kind === 'conflict') return undefined;
      if (Date.now() + RETRY_PAUSE_MS >= sending.deadline) throw this.unavailable(`${what} (not applied when read back; an attempt still in flight may apply later)`, lost, b);
      this.stats.resent++;
    }
  }

  private txn(ops: readonly TxnOp[]): ReturnType<Etcd3['if']> {
    const first = ops[0];
    if (first === undefined) throw new Error('unreachable: empty transaction');
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
          // Version > 0: an absent key has mod revision 0, and revision '0' must not create it.
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
    return txn.then(...writes);
  }

  /** Past and present states of keys, for settling a write; reads share the write's budget. */
  private history(b: Budget): HistoryReader {
    return {
      read: async (keys, revision) => {
        let at = revision;
        const states = new Map<string, KeyState | undefined>();
        for (const key of keys) {
          const pinned = at;
          const res = await this.read(`read back ${key}`, b, (o) => {
            const builder = this.client.get(key).options(o);
            if (pinned !== undefined) builder.revision(pinned);
            return builder.exec();
          });
          at ??= res.header.revision;
          const kv = res.kvs[0];
          states.set(key, kv === undefined ? undefined : { value: kv.value.toString('utf8'), modRevision: kv.mod_revision, createRevision: kv.create_revision });
        }
        if (at === undefined) throw new Error('unreachable: no keys read');
        return { revision: at, states };
      },
    };
  }

  private async classifyWatchError(err: unknown, cause: string, prefix: string, start: string | undefined): Promise<Error> {
    // etcd cancels a watch whose start revision was compacted away with an empty cancel reason,
    // which etcd3 does not surface; asking etcd for that revision tells compaction apart.
    if (cause === 'error' && start !== undefined && !this.closed) {
      try {
        await this.client.get(prefix === '' ? '\0' : prefix).revision(start).exec();
      } catch (probe) {
        if (isCompactedError(probe)) {
          return new WatchCompactedError(`watch ${prefix} from revision ${start}: ${this.description} has compacted that history; resync with list()`);
        }
      }
    }
    return this.unavailable(`watch ${prefix}`, err);
  }

  private assertOpen(): void {
    if (this.closed) throw new DatastoreUnavailableError(`${this.description}: client is closed`);
  }

  private unavailable(what: string, err: unknown, b?: Pick<Budget, 'boundMs' | 'ofRequest'>): DatastoreUnavailableError {
    if (err instanceof DatastoreUnavailableError) return err;
    const bound = b?.ofRequest === true ? `within the request's ${b.boundMs} ms` : `within ${b?.boundMs ?? this.requestTimeoutMs} ms`;
    const detail =
      err instanceof GRPCDeadlineExceededError
        ? `no answer ${bound} (CALICO_DATASTORE_TIMEOUT; ${errorMessage(err)})`
        : /circuit breaker is open/.test(errorMessage(err))
          ? `it refused connections just now, so requests are held back for ${HOLD_BACK_MS} ms`
          : errorMessage(err);
    return new DatastoreUnavailableError(`${this.description}: ${what}: ${detail}`, { cause: err });
  }
}

/** etcd's refusals: the request was answered and nothing was written. */
const REFUSALS = [
  EtcdPermissionDeniedError,
  EtcdAuthenticationFailedError,
  EtcdRoleNotGrantedError,
  EtcdUserNotFoundError,
  GRPCInvalidArgumentError,
  GRPCUnauthenticatedError,
  GRPCFailedPreconditionError,
  GRPCOutOfRangeError,
  GRPCNotImplementedError,
] as const;

/** Whether a failed write may still have committed. Only two kinds of failure say for sure that
 * it did not: the call never went out (every member's circuit breaker open, client closed), or
 * etcd refused it. Anything else (connection lost, deadline, leader change, an error this list
 * does not know) leaves the outcome open, and reading back costs little. */
export function mayHaveBeenApplied(err: unknown): boolean {
  if (!(err instanceof Error)) return true;
  if (/circuit breaker is open|Connection pool has no hosts|client was already closed/.test(err.message)) return false;
  return !REFUSALS.some((c) => err instanceof c);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
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
