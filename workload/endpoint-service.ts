// Workload endpoints, for whichever front end asks: Docker's NetworkDriver today, a CNI plugin or
// swarm's tasks later. It records an endpoint, plumbs it into the host as a routed veth, waits for
// (or starts resolving) its policy, and takes it away again; it knows nothing of Docker's or CNI's
// wire types. Each step undoes its own work when a later one fails (the veth plumbing keeps an
// explicit undo list: dataplane/veth.ts), so a failed request leaves nothing behind.
import type { Datastore, KeyValue } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import type { EndpointDataplane } from '../dataplane/endpoint-dataplane';
import { modifyKey } from '../datastore/cas';
import { assertNetnsPath, hostVethName } from '../dataplane/names';
import { MAX_WORKLOAD_INTERFACES, workloadGateways } from '../dataplane/veth';
import type { Allocator } from '../ipam/allocator';
import { addressPart, normalizeCidr } from '../ipam/cidr';
import { VXLAN_OVERHEAD } from '../ipam/pool';
import { ConflictError, InvalidRequestError, NotFoundError, errorMessage } from '../lib/errors';
import { logger } from '../lib/log';
import { outsideRequest } from '../lib/request-deadline';
import { parseStored, serialize } from '../model/codec';
import { Endpoint, listNodeEndpoints } from '../model/endpoint';
import { Network } from '../model/network';

const log = logger('endpoints');

/** How long attach waits for the agent to program a ready endpoint before answering anyway (the
 * endpoint is isolated until programmed, so answering early is safe, just less convenient). */
const PROGRAMMED_WAIT_MS = 5_000;

/** What the service needs from the policy side: who finds labels, and who programs the rules. */
export interface EndpointPolicy {
  /** Look up the workload's labels (and a pending network name) after it is attached; the
   * endpoint stays isolated until then. */
  resolveLabelsLater(endpointId: string, networkId: string): void;
  /** Resolves true once the endpoint's full policy is in the kernel (false on timeout). */
  waitProgrammed(endpointId: string, timeoutMs: number): Promise<boolean>;
}

export interface EndpointServiceOptions {
  readonly store: Datastore;
  readonly keys: Keys;
  readonly allocator: Allocator;
  readonly dataplane: EndpointDataplane;
  readonly node: string;
  readonly hostIfPrefix: string;
  readonly mtu: number;
  /** Copy workload labels to endpoints (resolved after attach; driver/label-resolver.ts). */
  readonly labelEndpoints: boolean;
  readonly policy: EndpointPolicy;
}

export interface NewEndpoint {
  readonly id: string;
  readonly networkId: string;
  /** Canonical addresses with their full-length prefix (10.0.0.5/32, fd00::5/128). */
  readonly ipv4: readonly string[];
  readonly ipv6: readonly string[];
  readonly mac: string;
  /** The network's profiles; undefined while its name is not known (the endpoint then waits,
   * isolated, for the label resolver to learn it). */
  readonly profiles: readonly string[] | undefined;
}

/** An address its front end is about to free (see removeStaleNaming). */
export interface ReleasedAddress {
  /** The address, canonical and without prefix length (10.0.0.5, fd00::5). */
  readonly ip: string;
  /** The pool the front end gave the endpoint's network (a pool CIDR, or 0.0.0.0/0 / ::/0 for
   * "any pool"): a record on a network not served by it is not the one being released. */
  readonly pool: string;
  /** The endpoint the allocation names, when it names one: another endpoint's record is left. */
  readonly allocationEndpoint: string | undefined;
  /** Why the front end's release means the endpoint is gone (logged). */
  readonly reason: string;
}

export interface Attached {
  readonly hostInterface: string;
  /** The workload's IPv4 gateway (answered by proxy ARP), when it has an IPv4 address. */
  readonly ipv4Gateway: string | undefined;
  /** The host end's link-local address, the IPv6 gateway, when it has an IPv6 address. */
  readonly ipv6Gateway: string | undefined;
}

export class EndpointService {
  constructor(private readonly o: EndpointServiceOptions) {}

  async create(spec: NewEndpoint): Promise<Endpoint> {
    const endpoint: Endpoint = {
      id: spec.id,
      networkId: spec.networkId,
      node: this.o.node,
      hostInterface: hostVethName(this.o.hostIfPrefix, spec.id),
      ipv4: [...spec.ipv4],
      ipv6: [...spec.ipv6],
      mac: spec.mac,
      profiles: [...(spec.profiles ?? [])],
      labels: {},
      ready: !this.o.labelEndpoints && spec.profiles !== undefined,
      profilesPending: spec.profiles === undefined,
      gatewayIndex: 0,
      createdAt: new Date().toISOString(),
    };
    const key = this.o.keys.endpoint(this.o.node, spec.id);
    if ((await this.o.store.create(key, serialize(endpoint))) === undefined) {
      throw new ConflictError(`endpoint ${spec.id.slice(0, 12)} already exists on ${this.o.node}`);
    }
    // Naming the endpoint on its allocations is bookkeeping for operators (ipam show), not needed
    // to serve the workload: it runs after the answer, off the start path, with its own bounds
    // (not the request's deadline).
    outsideRequest(() => void this.recordEndpointOnAllocations(spec.id, [...spec.ipv4, ...spec.ipv6]));
    return endpoint;
  }

  async get(endpointId: string): Promise<Endpoint> {
    const kv = await this.o.store.get(this.o.keys.endpoint(this.o.node, endpointId));
    if (kv === undefined) throw new NotFoundError(`endpoint ${endpointId.slice(0, 12)} does not exist on ${this.o.node}`);
    return parseStored(Endpoint, kv);
  }

  /** Creates the veth (the workload end named `peerIf`, for the front end to move into the
   * workload's network namespace `sandbox`), routes the addresses to the host end, and waits for
   * the endpoint's policy, or starts learning what it still lacks. A workload attached to several
   * networks gets distinct gateways on each interface; the agent programs its routing
   * (agent/sandbox-manager.ts) once the interfaces are in its namespace. */
  async attach(endpointId: string, peerIf: string, sandbox?: string): Promise<Attached> {
    const { ep, gatewayIndex, recorded } = sandbox === undefined
      ? { ep: await this.get(endpointId), gatewayIndex: 0, recorded: Promise.resolve() }
      : await this.placeInSandbox(endpointId, assertNetnsPath(sandbox));
    // The recorded name is the one policy programs, even if the prefix changed since.
    const veth = this.o.dataplane.attach({
      hostIf: ep.hostInterface,
      peerIf,
      mtu: await this.vethMtu(),
      ipv4: ep.ipv4.map(addressPart),
      ipv6: ep.ipv6.map(addressPart),
      gatewayIndex,
    });
    // The namespace is recorded while the kernel creates the veth: neither waits for the other.
    const [plumbed, noted] = await Promise.allSettled([veth, recorded]);
    if (plumbed.status === 'rejected') {
      // A failed attach changes nothing: the record names the namespace it was in before (a
      // second Join of an attached endpoint, refused because its veth exists, must not move it).
      // The undo gets its own bound: the request's may be what ran out.
      if (noted.status === 'fulfilled' && sandbox !== undefined) await outsideRequest(() => this.restoreSandbox(endpointId, ep));
      throw plumbed.reason;
    }
    if (noted.status === 'rejected') {
      await this.o.dataplane.detach(ep.hostInterface);
      throw noted.reason;
    }
    const attached = plumbed.value;
    if (ep.ready) {
      if (!(await this.o.policy.waitProgrammed(endpointId, PROGRAMMED_WAIT_MS))) {
        log.warn('endpoint %s: policy not programmed after %dms; it stays isolated until it is', endpointId.slice(0, 12), PROGRAMMED_WAIT_MS);
      }
    } else {
      this.o.policy.resolveLabelsLater(endpointId, ep.networkId);
    }
    return {
      hostInterface: ep.hostInterface,
      ipv4Gateway: ep.ipv4.length > 0 ? workloadGateways(gatewayIndex).v4 : undefined,
      ipv6Gateway: ep.ipv6.length > 0 ? attached.ipv6Gateway : undefined,
    };
  }

  /** Records the endpoint's namespace and picks its interface number there: the lowest one the
   * namespace's other endpoints on this host leave free. Front ends attach one endpoint of a
   * workload at a time (Docker serialises Join and Leave per sandbox), so two never pick alike. */
  private async placeInSandbox(endpointId: string, sandbox: string): Promise<{ ep: Endpoint; gatewayIndex: number; recorded: Promise<unknown> }> {
    // One read of this host's records; only the namespace's own are parsed (a raw match first:
    // a host may hold hundreds of endpoints, a namespace a handful).
    const key = this.o.keys.endpoint(this.o.node, endpointId);
    const { items } = await this.o.store.list(this.o.keys.endpointsPrefix(this.o.node));
    const own = items.find((kv) => kv.key === key);
    if (own === undefined) throw new NotFoundError(`endpoint ${endpointId.slice(0, 12)} does not exist on ${this.o.node}`);
    const ep = parseStored(Endpoint, own);
    if (ep.sandbox === sandbox) return { ep, gatewayIndex: ep.gatewayIndex, recorded: Promise.resolve() };
    const quoted = JSON.stringify(sandbox);
    const used = new Set(items
      .filter((kv) => kv.key !== key && kv.value.includes(quoted))
      .map((kv) => parseStored(Endpoint, kv))
      .filter((e) => e.sandbox === sandbox)
      .map((e) => e.gatewayIndex));
    let gatewayIndex = 0;
    while (used.has(gatewayIndex)) gatewayIndex++;
    if (gatewayIndex >= MAX_WORKLOAD_INTERFACES) {
      throw new InvalidRequestError(`${sandbox} already has ${MAX_WORKLOAD_INTERFACES} interfaces on our networks`);
    }
    const record = (kv: KeyValue | undefined): string => {
      if (kv === undefined) throw new NotFoundError(`endpoint ${endpointId.slice(0, 12)} does not exist on ${this.o.node}`);
      return serialize({ ...parseStored(Endpoint, kv), sandbox, gatewayIndex });
    };
    // Conditional on the revision just read; only if someone wrote meanwhile (the label
    // resolver), read again and retry.
    const recorded = this.o.store.update(key, record(own), own.revision).then((written) =>
      written !== undefined ? undefined : modifyKey(this.o.store, key, `record the namespace of endpoint ${endpointId.slice(0, 12)}`, record));
    // Awaited by attach after the veth; handled here so a quick failure is never "unhandled".
    recorded.catch(() => undefined);
    return { ep, gatewayIndex, recorded };
  }

  /** Puts back the namespace and interface number `before` recorded (undo of placeInSandbox). */
  private async restoreSandbox(endpointId: string, before: Endpoint): Promise<void> {
    const key = this.o.keys.endpoint(this.o.node, endpointId);
    try {
      await modifyKey(this.o.store, key, `restore the namespace of endpoint ${endpointId.slice(0, 12)}`, (kv) => {
        if (kv === undefined) return undefined;
        const current = parseStored(Endpoint, kv);
        if (current.sandbox === before.sandbox && current.gatewayIndex === before.gatewayIndex) return undefined;
        const { sandbox: _moved, ...rest } = current;
        return serialize({ ...rest, ...(before.sandbox !== undefined && { sandbox: before.sandbox }), gatewayIndex: before.gatewayIndex });
      });
    } catch (err) {
      log.warn('endpoint %s: restoring its namespace after a failed attach: %s', endpointId.slice(0, 12), errorMessage(err));
    }
  }

  /** Starts removing the veth; remove() waits for it. Both succeed when things are gone. */
  async startDetach(endpointId: string): Promise<void> {
    this.o.dataplane.startDetach(await this.hostInterfaceOf(endpointId));
  }

  async remove(endpointId: string): Promise<void> {
    // Detach normally removed the veth already; a crash between the two must not leak it.
    await this.o.dataplane.detach(await this.hostInterfaceOf(endpointId));
    await this.o.store.delete(this.o.keys.endpoint(this.o.node, endpointId));
  }

  /** Removes this host's endpoints that still name an address their front end is freeing: a
   * front end deletes an endpoint before it frees its address, so a record still naming it is one
   * the front end dropped without telling us (Docker restoring after a restart). Left until the
   * reconciler's next pass it would keep the address in its old network's ipsets (and its route
   * and veth) while the address is handed to a new workload. Removed the way the reconciler
   * removes (remove(): veth and route, then record), before the caller frees the address; throws
   * if any removal fails, and the caller must then keep the address. One listing of this host's
   * endpoints. Returns the IDs removed. */
  async removeStaleNaming(released: ReleasedAddress): Promise<string[]> {
    const pool = normalizeCidr(released.pool);
    const naming = (await listNodeEndpoints(this.o.store, this.o.keys, this.o.node)).filter((ep) =>
      [...ep.ipv4, ...ep.ipv6].some((a) => addressPart(a) === released.ip)
      && (released.allocationEndpoint === undefined || released.allocationEndpoint === ep.id));
    const removed: string[] = [];
    for (const ep of naming) {
      if (!(await this.networkServedBy(ep.networkId, pool))) continue;
      try {
        await this.remove(ep.id);
      } catch (err) {
        throw new ConflictError(`address ${released.ip} is still used by endpoint ${ep.id.slice(0, 12)} (${released.reason}), and removing that endpoint failed: ${errorMessage(err)}; the address stays allocated until the endpoint is removed`);
      }
      log.info('removed endpoint %s: %s', ep.id.slice(0, 12), released.reason);
      removed.push(ep.id);
    }
    return removed;
  }

  /** Whether the network's record lists the pool. A network without a record (or one whose pools
   * do not parse) proves nothing: its endpoints are left to the reconciler. */
  private async networkServedBy(networkId: string, pool: string): Promise<boolean> {
    const kv = await this.o.store.get(this.o.keys.network(networkId));
    if (kv === undefined) return false;
    const network = parseStored(Network, kv);
    return [...network.ipv4Pools, ...network.ipv6Pools].some((p) => {
      try {
        return normalizeCidr(p) === pool;
      } catch {
        return false;
      }
    });
  }

  /** The recorded interface name; derived from the ID when the record is already gone. */
  private async hostInterfaceOf(endpointId: string): Promise<string> {
    const kv = await this.o.store.get(this.o.keys.endpoint(this.o.node, endpointId));
    return kv === undefined ? hostVethName(this.o.hostIfPrefix, endpointId) : parseStored(Endpoint, kv).hostInterface;
  }

  /** The configured MTU, less VXLAN's overhead when any pool encapsulates (as Calico: one MTU for
   * every workload, so a workload's packets fit whichever way they leave). */
  private async vethMtu(): Promise<number> {
    const pools = await this.o.allocator.knownPools();
    return pools.some((p) => p.vxlanMode !== 'Never') ? this.o.mtu - VXLAN_OVERHEAD : this.o.mtu;
  }

  /** Names the workload on the endpoint's allocations once its front end knows it (bookkeeping
   * for operators and for tracing an address to its container; never on a request path). */
  recordWorkload(endpointId: string, containerId: string, addresses: readonly string[]): void {
    void this.recordEndpointOnAllocations(endpointId, addresses, containerId);
  }

  private async recordEndpointOnAllocations(endpointId: string, addresses: readonly string[], containerId?: string): Promise<void> {
    for (const cidr of addresses) {
      try {
        await this.o.allocator.setEndpoint(addressPart(cidr), endpointId, containerId);
      } catch (err) {
        // NotFound: the workload is already gone and its address released.
        if (!(err instanceof NotFoundError)) log.warn('recording endpoint %s on address %s: %s', endpointId.slice(0, 12), cidr, errorMessage(err));
      }
    }
  }
}
