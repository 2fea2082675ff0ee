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
//
// When to look: Docker's event stream says when a container was connected to a network and when
// it started, and names the container. The resolver then inspects that one container (one
// request, whatever the number of containers on the host), which Docker answers once the start
// or connect holding the container's lock is done: by then its settings name its endpoints, and
// every pending endpoint among them is resolved from that one answer. A slow safety poll lists
// the network's containers in case an event was missed; without the stream (Docker unreachable,
// or the stream broke) it polls briskly instead. Polling every 25 ms for the whole of a
// container's start cost the plugin more CPU than anything else on the container path, and
// Docker as much again to answer, on a machine where Docker is busy starting the container.
import type { Datastore } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import { modifyKey } from '../datastore/cas';
import { errorMessage } from '../lib/errors';
import { logger } from '../lib/log';
import { outsideRequest } from '../lib/request-deadline';
import { parseStored, serialize } from '../model/codec';
import { Endpoint } from '../model/endpoint';
import { PROFILE_NAME } from '../policy/profile-resource';
import { containerLabelsToEndpointLabels } from './container-labels';
import type { DockerApi, ListedContainer } from './docker-api';
import { recordNetworkProfile } from './network-profile';

const log = logger('labels');
/** Without events: Docker connects the container within a few hundred milliseconds of Join, so
 * poll briskly for a while (each poll is one container-list call), then back off. */
const FAST_POLL_MS = 25;
const FAST_POLLS = 80;
/** With events: the first safety poll, doubling up to MAX_DELAY_MS (an event may come before the
 * container list shows the endpoint, or be missed while the stream reconnects). */
const SAFETY_POLL_MS = 500;
const MAX_DELAY_MS = 2_000;
/** After this long the container is gone or Docker is unreachable; the endpoint stays isolated. */
const GIVE_UP_MS = 120_000;

/** The fields of a Docker event used here. */
interface DockerEvent {
  Type?: string;
  Action?: string;
  Actor?: { ID?: string; Attributes?: Record<string, string> };
}

const CONTAINER_ID = /^[0-9a-f]{64}$/;

interface Pending {
  readonly networkId: string;
  readonly started: number;
  lookups: number;
  timer: NodeJS.Timeout | undefined;
  running: boolean;
  /** An event came while a lookup was running: look again right after it. */
  again: boolean;
}

export interface LabelResolverOptions {
  readonly docker: Pick<DockerApi, 'containersOnNetwork' | 'container' | 'events'>;
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
  private readonly pending = new Map<string, Pending>();
  /** Containers being inspected after an event (one request each, however many events). */
  private readonly inspecting = new Set<string>();
  private events: NodeJS.ReadableStream | undefined;
  private connecting = false;
  private closed = false;

  constructor(private readonly o: LabelResolverOptions) {}

  /** Starts resolving in the background; a second call for the same endpoint is ignored. The
   * timers and the event stream started here outlive the request that calls it, so they run
   * outside it (their datastore writes have their own bounds). */
  resolveLater(endpointId: string, networkId: string): void {
    outsideRequest(() => this.startResolving(endpointId, networkId));
  }

  private startResolving(endpointId: string, networkId: string): void {
    if (this.closed || this.pending.has(endpointId)) return;
    this.watchEvents();
    const p: Pending = { networkId, started: Date.now(), lookups: 0, timer: undefined, running: false, again: false };
    this.pending.set(endpointId, p);
    this.schedule(endpointId, p);
  }

  private schedule(endpointId: string, p: Pending, delayMs = this.nextDelay(p)): void {
    clearTimeout(p.timer);
    p.timer = setTimeout(() => this.lookUp(endpointId, p), delayMs);
  }

  private nextDelay(p: Pending): number {
    if (this.events !== undefined) return Math.min(SAFETY_POLL_MS * 2 ** p.lookups, MAX_DELAY_MS);
    return p.lookups < FAST_POLLS ? FAST_POLL_MS : Math.min(FAST_POLL_MS * 2 ** (p.lookups - FAST_POLLS + 1), MAX_DELAY_MS);
  }

  /** Look the endpoint up now: in `known` (an inspected container), else in the network's list. */
  private lookUp(endpointId: string, p: Pending, known?: ListedContainer): void {
    if (p.running) {
      p.again = true;
      return;
    }
    clearTimeout(p.timer);
    p.running = true;
    p.lookups++;
    this.tryOnce(endpointId, p, known).then(
      (done) => done,
      (err: unknown) => {
        log.warn('endpoint %s: label lookup failed: %s', endpointId.slice(0, 12), errorMessage(err));
        return false;
      },
    ).then((done) => {
      p.running = false;
      if (this.pending.get(endpointId) !== p) return; // closed meanwhile
      if (done || this.closed) {
        this.pending.delete(endpointId);
      } else if (Date.now() - p.started > GIVE_UP_MS) {
        this.pending.delete(endpointId);
        log.warn('endpoint %s: no container found for it in Docker after %ds; it stays isolated', endpointId.slice(0, 12), GIVE_UP_MS / 1000);
      } else if (p.again) {
        p.again = false;
        this.lookUp(endpointId, p);
      } else {
        this.schedule(endpointId, p);
      }
    }, (err: unknown) => log.warn('endpoint %s: label lookup: %s', endpointId.slice(0, 12), errorMessage(err)));
  }

  /** Opens Docker's event stream unless it is open or opening; on failure the resolver polls. */
  private watchEvents(): void {
    if (this.events !== undefined || this.connecting || this.closed) return;
    this.connecting = true;
    this.o.docker.events({ type: ['network', 'container'], event: ['connect', 'start'] }).then(
      (stream) => {
        this.connecting = false;
        if (this.closed) {
          destroy(stream);
          return;
        }
        this.events = stream;
        let buffered = '';
        stream.on('data', (chunk: Buffer | string) => {
          buffered += chunk.toString();
          const lines = buffered.split('\n');
          buffered = lines.pop() ?? '';
          for (const line of lines) if (line.trim() !== '') this.onEvent(line);
        });
        const lost = (why: string): void => {
          if (this.events !== stream) return;
          this.events = undefined;
          // Lookups scheduled from now on poll briskly again; the next resolveLater reconnects.
          if (!this.closed) log.debug('Docker event stream %s: polling for labels', why);
        };
        stream.on('end', () => lost('ended'));
        stream.on('close', () => lost('closed'));
        stream.on('error', (err: unknown) => lost(`failed: ${errorMessage(err)}`));
      },
      (err: unknown) => {
        this.connecting = false;
        log.debug('Docker events unavailable (%s): polling for labels', errorMessage(err));
      },
    );
  }

  private onEvent(line: string): void {
    let event: DockerEvent;
    try {
      event = JSON.parse(line) as DockerEvent;
    } catch {
      return; // not an event this version of Docker sends: the safety poll covers it
    }
    const connect = event.Type === 'network' && event.Action === 'connect';
    if (!connect && !(event.Type === 'container' && event.Action === 'start')) return;
    const network = connect ? event.Actor?.ID : undefined;
    const waiting = [...this.pending].filter(([, p]) => network === undefined || p.networkId === network);
    if (waiting.length === 0) return;
    const container = connect ? event.Actor?.Attributes?.['container'] : event.Actor?.ID;
    if (container !== undefined && CONTAINER_ID.test(container)) {
      this.inspect(container, waiting, `${event.Type} ${event.Action}`);
      return;
    }
    for (const [endpointId, p] of waiting) {
      log.debug('endpoint %s: looking up after Docker event %s %s', endpointId.slice(0, 12), event.Type, event.Action);
      this.lookUp(endpointId, p);
    }
  }

  /** One inspection of the container an event named; each pending endpoint it has is resolved
   * from the answer. The endpoints the event may concern wait for it instead of polling. */
  private inspect(containerId: string, waiting: readonly (readonly [string, Pending])[], why: string): void {
    if (this.inspecting.has(containerId)) return; // the answer still to come covers this event too
    this.inspecting.add(containerId);
    // Docker answers when the container's start is done (about a second into a `docker run`):
    // the safety poll waits its longest meanwhile instead of listing the network. It is also what
    // finds the endpoint should an answer come before the endpoint is in the container's settings.
    for (const [endpointId, p] of waiting) if (!p.running) this.schedule(endpointId, p, MAX_DELAY_MS);
    log.debug('container %s: inspecting after Docker event %s', containerId.slice(0, 12), why);
    this.o.docker.container(containerId).then(
      (container) => {
        for (const n of Object.values(container?.NetworkSettings?.Networks ?? {})) {
          const endpointId = n?.EndpointID;
          const p = endpointId === undefined ? undefined : this.pending.get(endpointId);
          if (endpointId !== undefined && p !== undefined && container !== undefined) this.lookUp(endpointId, p, container);
        }
      },
      (err: unknown) => log.debug('container %s: inspection failed (%s); the safety poll looks again', containerId.slice(0, 12), errorMessage(err)),
    ).finally(() => this.inspecting.delete(containerId));
  }

  /** True when finished: labels written, or the endpoint no longer exists. */
  private async tryOnce(endpointId: string, p: Pending, known?: ListedContainer): Promise<boolean> {
    const networkId = p.networkId;
    const key = this.o.keys.endpoint(this.o.node, endpointId);
    const kv = await this.o.store.get(key);
    if (kv === undefined) return true;
    const containers = known !== undefined ? [known] : await this.o.docker.containersOnNetwork(networkId);
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
    log.debug('endpoint %s ready with labels %o after %d lookups', endpointId.slice(0, 12), labels, p.lookups);
    return true;
  }

  close(): void {
    this.closed = true;
    for (const p of this.pending.values()) clearTimeout(p.timer);
    this.pending.clear();
    if (this.events !== undefined) destroy(this.events);
    this.events = undefined;
  }
}

function destroy(stream: NodeJS.ReadableStream): void {
  (stream as NodeJS.ReadableStream & { destroy?: () => void }).destroy?.();
}
