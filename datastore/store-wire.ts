// The store socket's wire format, shared by server and client: POST /v1/<op> with a JSON body;
// answers are JSON, or for watch an NDJSON stream of {ready} then {event}… and at most one {error}.
// Everything read off the socket is validated here, so neither side handles unchecked JSON.
import { CalicoError, DatastoreUnavailableError, InvalidRequestError, errorMessage } from '../lib/errors';
import type { KeyValue, ListResult, TxnOp, WatchEvent } from './datastore';
import { WatchCompactedError } from './store-errors';

export const STORE_API_PREFIX = '/v1/';
/** Values are JSON documents of a few KiB; this leaves a wide margin and still bounds memory. */
export const MAX_BODY_BYTES = 8 << 20;

export type StoreOp = 'ping' | 'get' | 'list' | 'create' | 'update' | 'delete' | 'commit' | 'watch';

export interface WireError {
  readonly name: string;
  readonly message: string;
}

export type WatchLine =
  | { readonly kind: 'ready' }
  | { readonly kind: 'event'; readonly event: WatchEvent }
  | { readonly kind: 'error'; readonly error: WireError };

export type Fields = Readonly<Record<string, unknown>>;

export function parseJson(text: string, what: string): Fields {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new InvalidRequestError(`${what}: invalid JSON: ${errorMessage(err)}`);
  }
  return asFields(raw, what);
}

export function asFields(raw: unknown, what: string): Fields {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new InvalidRequestError(`${what}: expected a JSON object`);
  return Object.fromEntries(Object.entries(raw));
}

export function str(f: Fields, name: string, what: string): string {
  const v = f[name];
  if (typeof v !== 'string') throw new InvalidRequestError(`${what}: '${name}' must be a string`);
  return v;
}

export function optStr(f: Fields, name: string, what: string): string | undefined {
  return f[name] === undefined || f[name] === null ? undefined : str(f, name, what);
}

export function decodeKeyValue(raw: unknown, what: string): KeyValue {
  const f = asFields(raw, what);
  return { key: str(f, 'key', what), value: str(f, 'value', what), revision: str(f, 'revision', what) };
}

export function decodeOptionalKeyValue(raw: unknown, what: string): KeyValue | undefined {
  return raw === null || raw === undefined ? undefined : decodeKeyValue(raw, what);
}

export function decodeListResult(f: Fields, what: string): ListResult {
  const items = f['items'];
  if (!Array.isArray(items)) throw new InvalidRequestError(`${what}: 'items' must be an array`);
  return { items: items.map((i: unknown) => decodeKeyValue(i, what)), revision: str(f, 'revision', what) };
}

export function decodeTxnOps(raw: unknown, what: string): TxnOp[] {
  if (!Array.isArray(raw)) throw new InvalidRequestError(`${what}: 'ops' must be an array`);
  return (raw as unknown[]).map((item): TxnOp => {
    const f = asFields(item, what);
    const type = f['type'];
    const key = str(f, 'key', what);
    switch (type) {
      case 'create':
        return { type, key, value: str(f, 'value', what) };
      case 'update':
        return { type, key, value: str(f, 'value', what), revision: str(f, 'revision', what) };
      case 'delete': {
        const revision = optStr(f, 'revision', what);
        return revision === undefined ? { type, key } : { type, key, revision };
      }
      case 'check':
        return { type, key, revision: str(f, 'revision', what) };
      default:
        throw new InvalidRequestError(`${what}: unknown operation type '${String(type)}'`);
    }
  });
}

export function decodeWatchLine(line: string, what: string): WatchLine {
  const f = parseJson(line, what);
  if (f['ready'] === true) return { kind: 'ready' };
  if (f['error'] !== undefined) {
    const e = asFields(f['error'], what);
    return { kind: 'error', error: { name: str(e, 'name', what), message: str(e, 'message', what) } };
  }
  const e = asFields(f['event'], what);
  const type = e['type'];
  const key = str(e, 'key', what);
  const revision = str(e, 'revision', what);
  if (type === 'put') return { kind: 'event', event: { type, key, value: str(e, 'value', what), revision } };
  if (type === 'delete') return { kind: 'event', event: { type, key, revision } };
  throw new InvalidRequestError(`${what}: unknown watch event type`);
}

export function encodeError(err: unknown): { status: number; body: { error: WireError } } {
  const status = err instanceof CalicoError ? err.status : 500;
  const name = err instanceof CalicoError ? err.name : 'Error';
  return { status, body: { error: { name, message: errorMessage(err) } } };
}

/** Rebuilds the typed error the server's store threw; anything else means the store is unusable. */
export function decodeError(error: WireError, context: string): Error {
  switch (error.name) {
    case 'InvalidRequestError':
      return new InvalidRequestError(error.message);
    case 'WatchCompactedError':
      return new WatchCompactedError(error.message);
    default:
      return new DatastoreUnavailableError(`${context}: ${error.message}`);
  }
}
