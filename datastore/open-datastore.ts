// Picks the datastore backend from configuration. The embedded store admits one process, so the
// daemon opens it and serves it on a socket; calicoctl uses that socket when the daemon runs and
// opens the directory itself when it does not.
import type { Datastore } from './datastore';
import { EmbeddedStore, type EmbeddedStoreOptions } from './embedded-store';
import type { EtcdOptions } from './etcd-store';
import { RemoteStore } from './remote-store';
import { storeSocketPath } from './store-socket';
import { StoreLockedError } from './store-errors';

export { storeSocketPath };

export interface OpenDatastoreOptions {
  /** Use etcd; absent: the embedded store under dataDir. */
  readonly etcd?: EtcdOptions;
  readonly dataDir: string;
  /** daemon: owns the embedded store. client: reaches it through the daemon when one runs. */
  readonly mode: 'daemon' | 'client';
  readonly embedded?: EmbeddedStoreOptions;
}

const PING_TIMEOUT_MS = 1_000;
/** A daemon takes the directory lock a moment before its socket answers. */
const STARTING_DAEMON_WAIT_MS = 3_000;
const RETRY_INTERVAL_MS = 200;

export async function openDatastore(opts: OpenDatastoreOptions): Promise<Datastore> {
  if (opts.etcd !== undefined) {
    // Loaded only for etcd: the client and its gRPC stack take 150 ms to load, which every
    // calicoctl call and every daemon start on the embedded store would pay for nothing.
    const { EtcdStore } = await import('./etcd-store.js');
    return EtcdStore.open(opts.etcd);
  }
  if (opts.mode === 'daemon') return EmbeddedStore.open(opts.dataDir, opts.embedded);
  const remote = new RemoteStore(storeSocketPath(opts.dataDir));
  const deadline = Date.now() + STARTING_DAEMON_WAIT_MS;
  for (;;) {
    if (await remote.ping(PING_TIMEOUT_MS)) return remote;
    try {
      return await EmbeddedStore.open(opts.dataDir, opts.embedded);
    } catch (err) {
      if (!(err instanceof StoreLockedError) || Date.now() >= deadline) throw err;
    }
    await new Promise((resolve) => setTimeout(resolve, RETRY_INTERVAL_MS));
  }
}
