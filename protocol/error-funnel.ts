// The one place where any thrown value becomes a wire answer. Handlers throw typed errors; this
// picks the status and the key the interface expects (NetworkDriver: Err, IpamDriver: Error —
// Docker ignores an IPAM answer that uses Err and carries on with an empty result).
import { CalicoError, errorMessage } from '../lib/errors';

export type ErrorKey = 'Err' | 'Error';

export interface WireError {
  status: number;
  body: Record<ErrorKey, string> | Partial<Record<ErrorKey, string>>;
  /** Unexpected errors are logged with their stack; expected ones (bad input) are not. */
  unexpected: boolean;
}

interface HttpishError {
  status?: unknown;
  type?: unknown;
  expose?: unknown;
}

/** `decoded` is false when the request body could not be read or parsed: that answers 4xx, while
 * a decoded request that fails answers 200 with the error object, as libnetwork's remote drivers
 * read it. */
export function toWireError(err: unknown, key: ErrorKey, decoded: boolean): WireError {
  if (err instanceof CalicoError) {
    return { status: decoded ? 200 : err.status, body: { [key]: err.message }, unexpected: false };
  }
  const h = (typeof err === 'object' && err !== null ? err : {}) as HttpishError;
  if (h.type === 'entity.too.large') {
    return { status: 413, body: { [key]: 'request body is too large' }, unexpected: false };
  }
  if (typeof h.status === 'number' && h.status >= 400 && h.status < 500 && h.expose === true) {
    return { status: h.status, body: { [key]: `bad request: ${errorMessage(err)}` }, unexpected: false };
  }
  return { status: decoded ? 200 : 500, body: { [key]: `internal error: ${errorMessage(err)}` }, unexpected: true };
}
