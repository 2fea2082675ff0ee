// Copies a container's Calico labels (org.projectcalico.label.<key>=<value>) onto its endpoint.
//
// Docker tells the driver nothing about the container, and while it calls Join it holds the
// container's lock, so the container cannot be inspected from inside Join. The endpoint is
// therefore created not ready (isolated by the policy agent: fail closed) and this resolver looks
// the container up right after Join returns: the container list (a lock-free snapshot) shows the
// endpoint ID once Docker has finished connecting it. When the labels are on the record, the
// endpoint is marked ready and the agent programs its full policy. The same listing names the
// container's networks, which is how an endpoint whose network name Docker could not tell at
// CreateEndpoint gets its profile.
import type { Datastore } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import { modifyKey } from '../datastore/cas';
import { errorMessage } from '../lib/errors';
import { logger } from '../lib/log';
import { parseStored, serialize } from '../model/codec';
import { Endpoint } from '../model/endpoint';
import { PROFILE_NAME } from '../policy/profile-resource';
import { containerLabelsToEndpointLabels } from './container-labels';
import type { DockerApi } from './docker-api';
import { recordNetworkProfile } from './network-profile';

const log = logger('labels');
/** Docker connects the container within a few hundred milliseconds of Join: poll briskly for a
 * while (each poll is one container-list call), then back off. */
const FAST_POLL_MS = 25;
const FAST_POLLS = 80;
const MAX_DELAY_MS = 2_000;
/** After this long the container is gone or Docker is unreachable; the endpoint stays isolated. */
const GIVE_UP_MS = 120_000;

export interface LabelResolverOptions {
  readonly docker: Pick<DockerApi, 'containersOnNetwork'>;
  readonly store: Datastore;
  readonly keys: Keys;
  readonly node: string;
  /** Copy the container's Calico labels (CALICO_LIBNETWORK_LABEL_ENDPOINTS); without, the
   * resolver only learns a pending network name. Default true. */
  readonly copyLabels?: boolean;
  /** Told the workload's container once it is known, with the endpoint's addresses (the daemon
   * records it on their allocations, so each names its container as well as its pool). */
  readonly onContainer?: (endpointId: string, containerId: string, addresses: readonly string[]) => void;
}

export class LabelResolver {
  private readonly pending = new Map<string, NodeJS.Timeout>();
  private closed = false;

  constructor(private readonly o: LabelResolverOptions) {}

  /** Starts resolving in the background; a second call for the same endpoint is ignored. */
  resolveLater(endpointId: string, networkId: string): void {
    if (this.closed || this.pending.has(endpointId)) return;
    const started = Date.now();
    let polls = 0;
    const next = (delay: number): number => (++polls < FAST_POLLS ? FAST_POLL_MS : Math.min(delay * 2, MAX_DELAY_MS));
    const attempt = (delay: number): void => {
      const timer = setTimeout(() => {
        this.tryOnce(endpointId, networkId).then(
          (done) => {
            if (done || this.closed) {
              this.pending.delete(endpointId);
            } else if (Date.now() - started > GIVE_UP_MS) {
              this.pending.delete(endpointId);
              log.warn('endpoint %s: no container found for it in Docker after %ds; it stays isolated', endpointId.slice(0, 12), GIVE_UP_MS / 1000);
            } else {
              attempt(next(delay));
            }
          },
          (err: unknown) => {
            log.warn('endpoint %s: label lookup failed: %s', endpointId.slice(0, 12), errorMessage(err));
            attempt(next(delay));
          },
        );
      }, delay);
      this.pending.set(endpointId, timer);
    };
    attempt(FAST_POLL_MS);
  }

  /** True when finished: labels written, or the endpoint no longer exists. */
  private async tryOnce(endpointId: string, networkId: string): Promise<boolean> {
    const key = this.o.keys.endpoint(this.o.node, endpointId);
    const kv = await this.o.store.get(key);
    if (kv === undefined) return true;
    const containers = await this.o.docker.containersOnNetwork(networkId);
    const container = containers.find((c) => Object.values(c.NetworkSettings?.Networks ?? {}).some((n) => n?.EndpointID === endpointId));
    if (container === undefined) return false;
    // The network's name, when CreateEndpoint could not learn it: the container's network entry
    // for this endpoint is keyed by it.
    let profiles: string[] | undefined;
    if (parseStored(Endpoint, kv).profilesPending) {
      const name = Object.entries(container.NetworkSettings?.Networks ?? {}).find(([, n]) => n?.EndpointID === endpointId)?.[0];
      if (name === undefined || !PROFILE_NAME.test(name)) return false;
      profiles = [await recordNetworkProfile(this.o.store, this.o.keys, this.o.node, networkId, name)];
    }
    const labels = this.o.copyLabels === false ? undefined : containerLabelsToEndpointLabels(container.Labels ?? {});
    let addresses: string[] | undefined;
    await modifyKey(this.o.store, key, `record labels of endpoint ${endpointId.slice(0, 12)}`, (current) => {
      if (current === undefined) return undefined; // the endpoint went away meanwhile: nothing to label
      const ep = parseStored(Endpoint, current);
      addresses = [...ep.ipv4, ...ep.ipv6];
      return serialize({
        ...ep,
        ...(labels !== undefined && { labels }),
        ...(profiles !== undefined && { profiles, profilesPending: false }),
        ready: true,
        ...(container.Id !== undefined && { containerId: container.Id }),
      });
    });
    if (addresses !== undefined && container.Id !== undefined) this.o.onContainer?.(endpointId, container.Id, addresses);
    log.debug('endpoint %s ready with labels %o', endpointId.slice(0, 12), labels);
    return true;
  }

  close(): void {
    this.closed = true;
    for (const t of this.pending.values()) clearTimeout(t);
    this.pending.clear();
  }
}
