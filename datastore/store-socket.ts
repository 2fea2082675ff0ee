// Serves a Datastore on a unix socket, so calicoctl can use the embedded store the daemon holds
// open (the store's directory lock admits one process). Access control is the file mode: 0600 on
// the socket, inside the 0700 data directory.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { chmod, lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { DatastoreUnavailableError, InvalidRequestError } from '../lib/errors';
import type { Datastore, Watch, WatchEvent } from './datastore';
import { errno, unlinkIfPresent } from './fs-util';
import { MAX_BODY_BYTES, STORE_API_PREFIX, decodeTxnOps, encodeError, optStr, parseJson, str, type Fields, type StoreOp } from './store-wire';

export { RemoteStore } from './remote-store';

export interface StoreServer {
  /** Stops serving and removes the socket; open watches end, so clients resync. The store stays open. */
  close(): Promise<void>;
}

/** A watcher that reads slower than the store changes is cut off rather than buffered forever. */
const MAX_WATCH_BUFFER_BYTES = 16 << 20;
const PROBE_TIMEOUT_MS = 1_000;

/** Where the daemon serves its embedded store: inside the store's own 0700 directory. */
export function storeSocketPath(dataDir: string): string {
  return join(dataDir, 'store.sock');
}

type Route = (store: Datastore, body: Fields) => Promise<unknown>;

const ROUTES: Readonly<Record<Exclude<StoreOp, 'watch'>, Route>> = {
  ping: async () => ({ ok: true }),
  get: async (s, b) => ({ kv: (await s.get(str(b, 'key', 'get'))) ?? null }),
  list: async (s, b) => s.list(str(b, 'prefix', 'list')),
  create: async (s, b) => ({ kv: (await s.create(str(b, 'key', 'create'), str(b, 'value', 'create'))) ?? null }),
  update: async (s, b) => ({
    kv: (await s.update(str(b, 'key', 'update'), str(b, 'value', 'update'), str(b, 'revision', 'update'))) ?? null,
  }),
  delete: async (s, b) => ({ deleted: await s.delete(str(b, 'key', 'delete'), optStr(b, 'revision', 'delete')) }),
  commit: async (s, b) => ({ revision: (await s.commit(decodeTxnOps(b['ops'], 'commit'))) ?? null }),
};

export async function serveStore(store: Datastore, socketPath: string): Promise<StoreServer> {
  await removeStaleSocket(socketPath);
  const streams = new Set<() => void>();
  const server = createServer((req, res) => void handle(store, req, res, streams));
  await listen(server, socketPath);
  try {
    await chmod(socketPath, 0o600);
  } catch (err) {
    // Never leave a socket with the default (umask) mode being served, nor a stray socket file.
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await unlinkIfPresent(socketPath);
    throw err;
  }
  let closing: Promise<void> | undefined;
  return {
    close: () => {
      closing ??= (async () => {
        for (const end of [...streams]) end();
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeAllConnections();
        await closed;
        await unlinkIfPresent(socketPath);
      })();
      return closing;
    },
  };
}

async function handle(store: Datastore, req: IncomingMessage, res: ServerResponse, streams: Set<() => void>): Promise<void> {
  try {
    const op = (req.url ?? '').startsWith(STORE_API_PREFIX) ? (req.url ?? '').slice(STORE_API_PREFIX.length) : '';
    if (req.method !== 'POST') throw new InvalidRequestError(`store socket: use POST, not ${req.method ?? '?'}`);
    const body = parseJson(await readBody(req), `store socket ${op}`);
    if (op === 'watch') return await serveWatch(store, body, res, streams);
    if (!isRoute(op)) throw new InvalidRequestError(`store socket: unknown operation '${op}'`);
    sendJson(res, 200, await ROUTES[op](store, body));
  } catch (err) {
    const { status, body } = encodeError(err);
    if (!res.headersSent) sendJson(res, status, body);
    else res.destroy();
  }
}

async function serveWatch(store: Datastore, body: Fields, res: ServerResponse, streams: Set<() => void>): Promise<void> {
  const prefix = str(body, 'prefix', 'watch');
  const afterRevision = optStr(body, 'afterRevision', 'watch');
  // Events can arrive before store.watch() resolves; hold them until the stream is open.
  let early: string[] | undefined = [];
  let failedEarly = false;
  let watch: Watch | undefined;
  let ended = false;
  const write = (line: object): void => {
    const text = JSON.stringify(line) + '\n';
    if (early !== undefined) early.push(text);
    else if (!ended) res.write(text);
  };
  const end = (): void => {
    if (ended) return;
    ended = true;
    streams.delete(end);
    if (!res.writableEnded) res.end();
    void watch?.close();
  };
  res.on('close', end);
  streams.add(end);
  watch = await store.watch(
    prefix,
    {
      onEvent: (event: WatchEvent) => {
        write({ event });
        if (res.writableLength > MAX_WATCH_BUFFER_BYTES) {
          write(encodeError(new DatastoreUnavailableError('watch reader is too slow; resync')).body);
          end();
        }
      },
      onError: (err: Error) => {
        write(encodeError(err).body);
        if (early === undefined) end();
        else failedEarly = true;
      },
    },
    afterRevision === undefined ? {} : { afterRevision },
  ).catch((err: unknown) => {
    streams.delete(end);
    throw err;
  });
  if (ended) {
    await watch.close();
    return;
  }
  res.writeHead(200, { 'content-type': 'application/x-ndjson' });
  const buffered = early;
  early = undefined;
  res.write(JSON.stringify({ ready: true }) + '\n');
  for (const text of buffered) res.write(text);
  if (failedEarly) end();
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? 0);
    const tooLarge = (): void => {
      reject(new InvalidRequestError(`store socket: request body exceeds ${MAX_BODY_BYTES} bytes`));
      // Discard the rest unbuffered, so the client still reads the error instead of a reset.
      chunks.length = 0;
      req.removeAllListeners('data');
      req.resume();
    };
    const chunks: Buffer[] = [];
    let size = 0;
    if (declared > MAX_BODY_BYTES) {
      tooLarge();
      return;
    }
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) tooLarge();
      else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const payload = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) });
  res.end(payload);
}

function isRoute(op: string): op is Exclude<StoreOp, 'watch'> {
  return Object.hasOwn(ROUTES, op);
}

function listen(server: Server, socketPath: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** A socket file left by a crashed daemon blocks listen(); one a live server answers on must stay. */
async function removeStaleSocket(socketPath: string): Promise<void> {
  try {
    const st = await lstat(socketPath);
    if (!st.isSocket()) throw new DatastoreUnavailableError(`store socket path ${socketPath} exists and is not a socket`);
  } catch (err) {
    if (errno(err) === 'ENOENT') return;
    throw err;
  }
  if (await socketAnswers(socketPath)) {
    throw new DatastoreUnavailableError(`store socket ${socketPath} is already served by another process`);
  }
  await unlinkIfPresent(socketPath);
}

export function socketAnswers(socketPath: string, timeoutMs: number = PROBE_TIMEOUT_MS): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect(socketPath);
    const done = (answered: boolean): void => {
      sock.destroy();
      resolve(answered);
    };
    sock.setTimeout(timeoutMs, () => done(true));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}
