// Serves libnetwork plugin interfaces over HTTP on a unix socket: one interface per socket (the
// legacy two-socket mode) or several on one (a managed plugin has a single socket and declares
// both NetworkDriver and IpamDriver). One generic route helper decodes the raw body (Docker sends
// no Content-Type, so body parsers keyed on it see nothing), checks it against the method's
// decoder, calls the handler and funnels every failure through toWireError with the error key of
// the interface the route belongs to.
import { chmod, mkdir, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { createConnection, type Socket } from 'node:net';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import express, { type NextFunction, type Request, type Response } from 'express';
import { InvalidRequestError, errorMessage } from '../lib/errors';
import { logger } from '../lib/log';
import { withRequestDeadline } from '../lib/request-deadline';
import { toWireError, type ErrorKey } from './error-funnel';
import type { Route } from './route';

const log = logger('server');
/** DEBUG=calico:wire: every request's body and the answer, one line each (what Docker really
 * sends, e.g. in swarm mode). */
const wire = logger('wire');

/** How long a stopping server waits for a first request on a connection that has had none. */
const CLOSE_GRACE_MS = 2_000;

export const CONTENT_TYPE = 'application/vnd.docker.plugins.v1+json';
/** Real payloads are a few hundred bytes; a swarm CreateNetwork with many options stays far below. */
export const MAX_BODY_BYTES = 64 * 1024;

/** One libnetwork interface: its name, the error key its answers use and its routes. */
export interface PluginApi {
  /** Answered in Plugin.Activate's Implements, e.g. 'NetworkDriver'. Routes of this interface are
   * named `<implements>.<Method>`. */
  readonly implements: string;
  /** NetworkDriver answers errors as `Err`, IpamDriver as `Error`. */
  readonly errorKey: ErrorKey;
  readonly routes: Route[];
}

/** Told the outcome of every request to a method we serve (metrics). Must not throw. */
export interface RequestObserver {
  /** `method` is the route's (`NetworkDriver.Join`); undecodable bodies count as errors;
   * `seconds` from the decoded body to the answer. */
  onRequest(method: string, result: 'ok' | 'error', seconds: number): void;
}

export interface PluginServerOptions {
  readonly name: string;
  readonly socketPath: string;
  readonly observer?: RequestObserver;
  /** Each request's whole allowance (its datastore operations and its waits for them), from its
   * decoded body; see lib/request-deadline.ts. Unbounded when omitted. */
  readonly requestBudgetMs?: number;
  /** One or more interfaces served on this socket; the first one's error key answers requests
   * that name no interface of ours. */
  readonly apis: readonly PluginApi[];
}

export interface PluginServer {
  readonly socketPath: string;
  /** True while the socket accepts requests (liveness). */
  serving(): boolean;
  /** Stops accepting requests, lets in-flight ones finish, removes the socket. */
  close(): Promise<void>;
}

function parseBody(raw: unknown): unknown {
  const buf = Buffer.isBuffer(raw) ? raw : Buffer.alloc(0);
  const text = buf.toString('utf8').trim();
  if (text === '') return {};
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new InvalidRequestError(`request body is not valid JSON: ${errorMessage(err)}`);
  }
}

/** The error key for a request path: that of the interface the method belongs to
 * (`/IpamDriver.RequestPool` → `Error`), else the first interface's. */
export function errorKeyFor(apis: readonly PluginApi[], path: string): ErrorKey {
  const first = apis[0];
  if (first === undefined) throw new Error('a plugin server needs at least one interface');
  const api = apis.find((a) => path.startsWith(`/${a.implements}.`));
  return (api ?? first).errorKey;
}

export function buildApp(opts: PluginServerOptions): express.Express {
  if (opts.apis.length === 0) throw new Error(`plugin server ${opts.name}: no interface to serve`);
  const names = opts.apis.map((a) => a.implements);
  if (new Set(names).size !== names.length) throw new Error(`plugin server ${opts.name}: interface served twice (${names.join(', ')})`);
  for (const api of opts.apis) {
    const foreign = api.routes.filter((r) => !r.method.startsWith(`${api.implements}.`));
    if (foreign.length > 0) throw new Error(`plugin server ${opts.name}: ${foreign.map((r) => r.method).join(', ')} listed under ${api.implements}`);
  }
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  const send = (res: Response, status: number, body: object): void => {
    // Set by hand: express's send() would append '; charset=utf-8' to the plugin media type.
    res.status(status).setHeader('Content-Type', CONTENT_TYPE);
    res.end(JSON.stringify(body));
  };
  const fail = (req: Request, res: Response, err: unknown, decoded: boolean): void => {
    const wire = toWireError(err, errorKeyFor(opts.apis, req.path), decoded);
    if (wire.unexpected) log.error('%s %s failed: %s', opts.name, req.path, err instanceof Error ? (err.stack ?? err.message) : String(err));
    else log.debug('%s %s refused: %s', opts.name, req.path, errorMessage(err));
    send(res, wire.status, wire.body);
  };

  app.use(express.raw({ type: () => true, limit: MAX_BODY_BYTES }));
  app.post('/Plugin.Activate', (_req, res) => send(res, 200, { Implements: names }));
  for (const r of opts.apis.flatMap((a) => a.routes)) {
    app.post(`/${r.method}`, async (req, res) => {
      let body: unknown;
      const started = process.hrtime.bigint();
      const observe = (result: 'ok' | 'error'): void => opts.observer?.onRequest(r.method, result, Number(process.hrtime.bigint() - started) / 1e9);
      try {
        body = parseBody(req.body);
      } catch (err) {
        observe('error');
        fail(req, res, err, false);
        return;
      }
      wire.debug('%s %s <- %j', opts.name, r.method, body);
      try {
        const answer = await (opts.requestBudgetMs === undefined ? r.handle(body) : withRequestDeadline(opts.requestBudgetMs, () => r.handle(body)));
        log.debug('%s %s ok in %dus', opts.name, r.method, Number((process.hrtime.bigint() - started) / 1000n));
        wire.debug('%s %s -> %j', opts.name, r.method, answer);
        send(res, 200, answer);
        observe('ok');
      } catch (err) {
        wire.debug('%s %s -> error: %s', opts.name, r.method, errorMessage(err));
        fail(req, res, err, true);
        observe('error');
      }
    });
  }
  // Docker treats 404 as "method not implemented".
  app.use((req: Request, res: Response) => send(res, 404, { [errorKeyFor(opts.apis, req.path)]: `${req.method} ${req.path} is not implemented by ${opts.name}` }));
  // Body-parser failures (too large, aborted) land here before any route runs.
  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => fail(req, res, err, false));
  return app;
}

/** Refuses to steal a socket another live process is serving. */
export async function assertSocketFree(path: string): Promise<void> {
  const live = await new Promise<boolean>((resolve) => {
    const c = createConnection(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (live) throw new Error(`another process is already serving ${path}; stop it or choose another plugin name`);
}

/** Refuses to steal a live socket; removes a stale one. */
async function clearSocket(path: string): Promise<void> {
  await assertSocketFree(path);
  await rm(path, { force: true });
}

export async function startPluginServer(opts: PluginServerOptions): Promise<PluginServer> {
  const app = buildApp(opts);
  await mkdir(dirname(opts.socketPath), { recursive: true, mode: 0o755 });
  await clearSocket(opts.socketPath);
  const server: Server = await new Promise((resolve, reject) => {
    const s = app.listen(opts.socketPath, (err?: Error) => (err ? reject(err) : resolve(s)));
    s.once('error', reject);
  });
  // Never close an idle connection of Docker's: if we close one just as Docker sends its next
  // request on it, Docker's plugin client retries that request with an empty body (moby#35459,
  // moby#39331), which shows up as "NetworkID must be a string, got undefined" on a container
  // start. Docker closes its idle connections itself; ours are on a local socket.
  server.keepAliveTimeout = 0;
  // Only root (Docker) may talk to the plugin: it can create interfaces and routes.
  await chmod(opts.socketPath, 0o660);
  log.debug('%s listening on %s', opts.name, opts.socketPath);
  // Requests in progress per connection. On close, idle connections (a request answered, none
  // since) go at once, as with Node's own close; one that has had no request yet gets
  // CLOSE_GRACE_MS, since its first request may be on the wire unread, and is dropped if it still
  // holds none; the others go as soon as their last answer is out. Node's own close would wait
  // for every connection that has not finished a request, and Docker keeps connections open on
  // which it never sends anything (seen: one with 0 bytes read for minutes, which held a stopping
  // daemon forever).
  const inFlight = new Map<Socket, number>();
  let closing: Promise<void> | undefined;
  server.on('connection', (socket: Socket) => {
    inFlight.set(socket, 0);
    socket.once('close', () => inFlight.delete(socket));
  });
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket;
    inFlight.set(socket, (inFlight.get(socket) ?? 0) + 1);
    res.once('close', () => {
      const left = (inFlight.get(socket) ?? 1) - 1;
      inFlight.set(socket, left);
      if (closing !== undefined && left === 0) socket.destroy();
    });
  });
  return {
    socketPath: opts.socketPath,
    serving: () => server.listening && closing === undefined,
    close() {
      closing ??= new Promise<void>((resolve) => {
        const silent = setTimeout(() => {
          for (const [socket, n] of inFlight) if (n === 0) socket.destroy();
        }, CLOSE_GRACE_MS);
        server.close(() => {
          clearTimeout(silent);
          resolve();
        });
        server.closeIdleConnections();
      }).then(() => rm(opts.socketPath, { force: true }));
      return closing;
    },
  };
}
