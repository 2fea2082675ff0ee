// Typed errors. Every failure a user can cause or meet has a class here; the protocol layer maps
// them to the wire shape in one place (protocol/error-funnel.ts), so handlers just throw.

export abstract class CalicoError extends Error {
  /** HTTP status used when the error crosses the plugin socket. Docker reads the JSON body, so the
   * status only matters for tooling (curl, health checks). */
  abstract readonly status: number;
  /** Safe to try the same operation again (a lost compare-and-swap race, a datastore hiccup). */
  readonly retryable: boolean = false;

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The request itself is wrong: bad JSON, wrong types, an invalid CIDR, an unsupported option. */
export class InvalidRequestError extends CalicoError {
  readonly status = 400;
}

/** The thing the request names does not exist (a pool, a network, an endpoint). */
export class NotFoundError extends CalicoError {
  readonly status = 404;
}

/** The request conflicts with current state (address in use, pool still has allocations). */
export class ConflictError extends CalicoError {
  readonly status = 409;
}

/** No address is left in any usable pool or block. */
export class PoolExhaustedError extends CalicoError {
  readonly status = 409;
}

/** The datastore could not be reached or answered with an error; the operation may succeed later. */
export class DatastoreUnavailableError extends CalicoError {
  readonly status = 503;
  override readonly retryable = true;
}

/** A compare-and-swap kept losing after all retries: heavy contention on one key. */
export class ContentionError extends CalicoError {
  readonly status = 503;
  override readonly retryable = true;
}

/** Data read from the datastore does not match its schema (hand-edited, or written by a
 * different version). The message names the key; the operation fails, the daemon keeps running. */
export class CorruptDataError extends CalicoError {
  readonly status = 500;
}

/** A kernel tool (ip, sysctl, iptables) failed. The message names the operation and object. */
export class DataplaneError extends CalicoError {
  readonly status = 500;
}

/** Invalid configuration; the message names the environment variable. */
export class ConfigError extends CalicoError {
  readonly status = 500;
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
