// Datastore client for a store served on a unix socket by serveStore (store-socket.ts). Each call
// is its own connection: unix-socket connects are cheap, and a reused keep-alive connection that
// the server closes just as a write is sent would leave the write's outcome unknown.
import { request, type ClientRequest, type IncomingMessage } from 'node:http';
import { DatastoreUnavailableError, errorMessage } from '../lib/errors';
import type { Datastore, KeyValue, ListResult, TxnOp, Watch, WatchEvent, WatchHandlers, WatchOptions } from './datastore';
import {
  STORE_API_PREFIX,
  asFields,
  decodeError,
  decodeListResult,
  decodeOptionalKeyValue,
  decodeWatchLine,
  parseJson,
  type Fields,
  type StoreOp,
} from './store-wire';

export interface RemoteStoreOptions {
  /** Deadline of each call, and of establishing a watch. Default 30 s. */
  readonly requestTimeoutMs?: number;
}

const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;

export class RemoteStore implements Datastore {
  readonly description: string;
  private readonly watches = new Set<RemoteWatch>();
  private readonly timeoutMs: number;
  private closed = false;

  constructor(
    readonly socketPath: string,
    options: RemoteStoreOptions = {},
  ) {
    this.timeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.description = `embedded store served on ${socketPath}`;
  }

  /** True if a store server answers on the socket. */
  async ping(timeoutMs: number = this.timeoutMs): Promise<boolean> {
    try {
      const f = await this.call('ping', {}, timeoutMs);
      return f['ok'] === true;
    } catch {
      return false;
    }
  }

  async get(key: string): Promise<KeyValue | undefined> {
    return decodeOptionalKeyValue((await this.call('get', { key }))['kv'], 'get reply');
  }

  async list(prefix: string): Promise<ListResult> {
    return decodeListResult(await this.call('list', { prefix }), 'list reply');
  }

  async create(key: string, value: string): Promise<KeyValue | undefined> {
    return decodeOptionalKeyValue((await this.call('create', { key, value }))['kv'], 'create reply');
  }

  async update(key: string, value: string, revision: string): Promise<KeyValue | undefined> {
    return decodeOptionalKeyValue((await this.call('update', { key, value, revision }))['kv'], 'update reply');
  }

  async delete(key: string, revision?: string): Promise<boolean> {
    const deleted = (await this.call('delete', { key, revision }))['deleted'];
    if (typeof deleted !== 'boolean') throw this.unavailable('delete', new Error("reply lacks 'deleted'"));
    return deleted;
  }

  async commit(ops: readonly TxnOp[]): Promise<string | undefined> {
    const revision = (await this.call('commit', { ops }))['revision'];
    if (revision !== null && typeof revision !== 'string') throw this.unavailable('commit', new Error("reply lacks 'revision'"));
    return revision ?? undefined;
  }

  async watch(prefix: string, handlers: WatchHandlers, options: WatchOptions = {}): Promise<Watch> {
    this.assertOpen();
    const req = this.post('watch', { prefix, afterRevision: options.afterRevision });
    const watch = new RemoteWatch(req, handlers, (err) => this.unavailable(`watch ${prefix}`, err), () => this.watches.delete(watch));
    this.watches.add(watch);
    await watch.established(this.timeoutMs);
    return watch;
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.watches].map((w) => w.close()));
  }

  private call(op: Exclude<StoreOp, 'watch'>, body: object, timeoutMs: number = this.timeoutMs): Promise<Fields> {
    this.assertOpen();
    return new Promise<Fields>((resolve, reject) => {
      const req = this.post(op, body);
      const timer = setTimeout(() => req.destroy(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
      req.on('error', (err) => {
        clearTimeout(timer);
        reject(this.unavailable(op, err));
      });
      req.on('response', (res) => {
        readAll(res).then(
          (text) => {
            clearTimeout(timer);
            try {
              const fields = parseJson(text, `store socket ${op} reply`);
              if (res.statusCode === 200) resolve(fields);
              else reject(decodeError(wireError(fields), `store socket ${this.socketPath}`));
            } catch (err) {
              reject(this.unavailable(op, err));
            }
          },
          (err: unknown) => {
            clearTimeout(timer);
            reject(this.unavailable(op, err));
          },
        );
      });
    });
  }

  private post(op: StoreOp, body: object): ClientRequest {
    const payload = JSON.stringify(body);
    const req = request({
      socketPath: this.socketPath,
      method: 'POST',
      path: STORE_API_PREFIX + op,
      agent: false,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
    });
    req.end(payload);
    return req;
  }

  private assertOpen(): void {
    if (this.closed) throw new DatastoreUnavailableError(`store socket ${this.socketPath}: client is closed`);
  }

  private unavailable(op: string, err: unknown): Error {
    if (err instanceof DatastoreUnavailableError) return err;
    return new DatastoreUnavailableError(`store socket ${this.socketPath}: ${op}: ${errorMessage(err)}` +
      ' (is the calico-libnetwork daemon running?)', { cause: err });
  }
}

/** One watch stream: resolves `established` on the server's {ready} line, then relays events. */
class RemoteWatch implements Watch {
  private state: 'connecting' | 'open' | 'done' = 'connecting';
  private ready!: { resolve: () => void; reject: (err: Error) => void };
  private readonly readyPromise = new Promise<void>((resolve, reject) => {
    this.ready = { resolve, reject };
  });
  private partial = '';

  constructor(
    private readonly req: ClientRequest,
    private readonly handlers: WatchHandlers,
    private readonly wrap: (err: unknown) => Error,
    private readonly onDone: () => void,
  ) {
    // established() observes the outcome; this keeps a rejection after close() from going unhandled.
    this.readyPromise.catch(() => undefined);
    req.on('error', (err) => this.fail(this.wrap(err)));
    req.on('response', (res) => this.onResponse(res));
  }

  async established(timeoutMs: number): Promise<void> {
    const timer = setTimeout(() => this.fail(this.wrap(new Error(`not established within ${timeoutMs} ms`))), timeoutMs);
    try {
      await this.readyPromise;
    } finally {
      clearTimeout(timer);
    }
  }

  async close(): Promise<void> {
    if (this.state === 'done') return;
    this.finish();
    this.ready.reject(this.wrap(new Error('watch closed')));
  }

  private onResponse(res: IncomingMessage): void {
    if (res.statusCode !== 200) {
      readAll(res).then(
        (text) => this.fail(decodeError(wireError(parseJson(text, 'watch reply')), 'store socket watch')),
        (err: unknown) => this.fail(this.wrap(err)),
      );
      return;
    }
    res.setEncoding('utf8');
    res.on('data', (chunk: string) => this.onData(chunk));
    res.on('close', () => this.fail(this.wrap(new Error('the server ended the watch'))));
  }

  private onData(chunk: string): void {
    const lines = (this.partial + chunk).split('\n');
    this.partial = lines.pop() ?? '';
    for (const line of lines) {
      if (this.state === 'done') return;
      try {
        const msg = decodeWatchLine(line, 'watch stream');
        if (msg.kind === 'ready') {
          this.state = 'open';
          this.ready.resolve();
        } else if (msg.kind === 'event') {
          this.deliver(msg.event);
        } else {
          this.fail(decodeError(msg.error, 'store socket watch'));
        }
      } catch (err) {
        this.fail(this.wrap(err));
      }
    }
  }

  private deliver(event: WatchEvent): void {
    try {
      this.handlers.onEvent(event);
    } catch (err) {
      // A handler that throws has lost track of state; the only safe continuation is a resync.
      this.fail(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private fail(err: Error): void {
    if (this.state === 'done') return;
    const wasOpen = this.state === 'open';
    this.finish();
    if (wasOpen) this.handlers.onError(err);
    else this.ready.reject(err);
  }

  private finish(): void {
    this.state = 'done';
    this.onDone();
    this.req.destroy();
  }
}

function readAll(res: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    res.on('data', (c: Buffer) => chunks.push(c));
    res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    res.on('error', reject);
    res.on('aborted', () => reject(new Error('connection closed mid-reply')));
  });
}

function wireError(fields: Fields): { name: string; message: string } {
  const e = asFields(fields['error'], 'error reply');
  const name = e['name'];
  const message = e['message'];
  return { name: typeof name === 'string' ? name : 'Error', message: typeof message === 'string' ? message : 'unknown error' };
}
