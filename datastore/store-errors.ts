// Datastore-specific failures that callers must tell apart from a plain outage.
import { CalicoError, DatastoreUnavailableError } from '../lib/errors';

/** watch() was asked to replay from a revision the store no longer keeps history for. The caller
 * must resync from list() and watch from the listing's revision. */
export class WatchCompactedError extends CalicoError {
  readonly status = 410;
  override readonly retryable = true;
}

/** Another live process owns the embedded store directory. Retryable: a starting daemon holds the
 * lock a moment before its store socket answers. */
export class StoreLockedError extends DatastoreUnavailableError {
  constructor(
    readonly dir: string,
    readonly pid: number,
    lockPath: string,
  ) {
    super(`datastore directory ${dir} is in use by process ${pid} (lock file ${lockPath}); ` +
      "stop that process or reach the store through the daemon's socket");
  }
}
