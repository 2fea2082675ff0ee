// The NetworkDriver: records networks and endpoints in the datastore and plumbs each endpoint into
// the host as a routed veth. Each request changes one thing at most, or undoes its own work when a
// later step fails (the veth plumbing keeps an explicit undo list: dataplane/veth.ts), so a failed
// request leaves nothing behind.
import type { Datastore } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import { hostVethName, parseHostAddress, tempPeerName } from '../dataplane/names';
import type { EndpointDataplane } from '../dataplane/endpoint-dataplane';
import { CONTAINER_GATEWAY_V4 } from '../dataplane/veth';
import type { Allocator } from '../ipam/allocator';
import { addressPart, normalizeCidr, parseCidr, type IpFamily } from '../ipam/cidr';
import { VXLAN_OVERHEAD } from '../ipam/pool';
import { ConflictError, InvalidRequestError, NotFoundError, errorMessage } from '../lib/errors';
import { logger } from '../lib/log';
import { parseStored, serialize } from '../model/codec';
import { Endpoint } from '../model/endpoint';
import { Network } from '../model/network';
import { decodeProfile } from '../model/profile';
import { CREATED_BY_ANNOTATION, PROFILE_NAME } from '../policy/profile-resource';
import { recordNetworkProfile } from './network-profile';
import {
  AllocateNetworkRequest,
  CreateEndpointRequest,
  CreateNetworkRequest,
  DiscoveryRequest,
  ENABLE_IPV6_OPTION,
  EndpointRequest,
  ExternalConnectivityRequest,
  GENERIC_OPTIONS,
  JoinRequest,
  NetworkRequest,
  PORT_MAP_OPTION,
  PortMap,
  type CapabilitiesResponse,
  type EndpointOperInfoResponse,
  type IPAMData,
  type JoinResponse,
  type StaticRoute,
} from '../protocol/network-driver-api';
import { route, type Route } from '../protocol/plugin-server';
import { decode } from '../lib/validate';
import { GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE } from './ipam-driver';

/** What the driver needs from the policy side: who finds labels, and who programs the rules. */
export interface EndpointPolicy {
  /** Look up the container's labels after Join; the endpoint stays isolated until then. */
  resolveLabelsLater(endpointId: string, networkId: string): void;
  /** Resolves true once the endpoint's full policy is in the kernel (false on timeout). */
  waitProgrammed(endpointId: string, timeoutMs: number): Promise<boolean>;
}

/** Looks up Docker's name for a network (CreateNetwork carries only the ID). */
export interface NetworkNameLookup {
  networkName(networkId: string): Promise<string | undefined>;
}

const log = logger('driver');

const SUPPORTED_NETWORK_OPTIONS: readonly string[] = [];

export interface NetworkDriverOptions {
  readonly store: Datastore;
  readonly keys: Keys;
  readonly allocator: Allocator;
  readonly dataplane: EndpointDataplane;
  readonly names: NetworkNameLookup;
  readonly node: string;
  readonly pluginName: string;
  readonly ipamPluginName: string;
  readonly hostIfPrefix: string;
  readonly containerIfPrefix: string;
  readonly mtu: number;
  readonly createProfiles: boolean;
  /** Copy container labels to endpoints (they are resolved after Join; see label-resolver.ts). */
  readonly labelEndpoints: boolean;
  readonly policy: EndpointPolicy;
}

/** How long Join waits for the agent to program a ready endpoint before answering anyway (the
 * endpoint is isolated until programmed, so answering early is safe, just less convenient). */
const PROGRAMMED_WAIT_MS = 5_000;

/** A container address as the endpoint records it: canonical, with its full-length prefix. */
function hostAddress(text: string, family: IpFamily, field: string): string {
  try {
    return normalizeCidr(parseHostAddress(text, family).cidr, field);
  } catch (err) {
    throw new InvalidRequestError(`${field}: ${errorMessage(err)}`);
  }
}

export class NetworkDriver {
  constructor(private readonly o: NetworkDriverOptions) {}

  getCapabilities(): CapabilitiesResponse {
    return { Scope: 'local', ConnectivityScope: 'local' };
  }

  async createNetwork(req: CreateNetworkRequest): Promise<object> {
    const ipamData = [...req.IPv4Data, ...req.IPv6Data];
    this.checkIpam(ipamData);
    const generic = req.Options[GENERIC_OPTIONS];
    const options = typeof generic === 'object' && generic !== null ? (generic as Record<string, unknown>) : {};
    const unsupported = Object.keys(options).filter((k) => !SUPPORTED_NETWORK_OPTIONS.includes(k));
    if (unsupported.length > 0) {
      throw new InvalidRequestError(`unsupported network option ${unsupported.map((k) => `'${k}'`).join(', ')}: ${this.o.pluginName} takes no -o options`);
    }
    if (req.Options[ENABLE_IPV6_OPTION] === true && req.IPv6Data.length === 0) {
      throw new InvalidRequestError('--ipv6 was requested but Docker passed no IPv6 pool');
    }
    const network: Network = {
      id: req.NetworkID,
      ipv4Pools: req.IPv4Data.map((d) => d.Pool),
      ipv6Pools: req.IPv6Data.map((d) => d.Pool),
      profile: '',
      profileCreated: false,
      options,
      createdBy: this.o.node,
      createdAt: new Date().toISOString(),
    };
    const created = await this.o.store.create(this.o.keys.network(req.NetworkID), serialize(network));
    if (created === undefined) log.debug('network %s already recorded', req.NetworkID);
    return {};
  }

  private checkIpam(data: IPAMData[]): void {
    for (const d of data) {
      if (d.AddressSpace !== LOCAL_ADDRESS_SPACE && d.AddressSpace !== GLOBAL_ADDRESS_SPACE) {
        throw new InvalidRequestError(
          `${this.o.pluginName} networks need the ${this.o.ipamPluginName} IPAM driver: docker network create -d ${this.o.pluginName} --ipam-driver ${this.o.ipamPluginName} ...`,
        );
      }
      parseCidr(d.Pool, 'IPAM pool');
    }
  }

  async deleteNetwork(req: { NetworkID: string }): Promise<object> {
    const key = this.o.keys.network(req.NetworkID);
    const kv = await this.o.store.get(key);
    if (kv === undefined) return {};
    const network = parseStored(Network, kv);
    await this.o.store.delete(key, kv.revision);
    if (network.profileCreated && network.profile !== '') await this.deleteProfileIfUnused(network.profile);
    return {};
  }

  private async deleteProfileIfUnused(name: string): Promise<void> {
    const { items } = await this.o.store.list(this.o.keys.networksPrefix());
    if (items.some((kv) => parseStored(Network, kv).profile === name)) return;
    const kv = await this.o.store.get(this.o.keys.profile(name));
    if (kv === undefined) return;
    const profile = decodeProfile(kv);
    // Only a profile we created; one an operator wrote for this name stays.
    if (profile.annotations[CREATED_BY_ANNOTATION] === undefined) return;
    await this.o.store.delete(kv.key, kv.revision);
  }

  private async getNetwork(networkId: string): Promise<{ network: Network }> {
    const kv = await this.o.store.get(this.o.keys.network(networkId));
    if (kv === undefined) {
      throw new NotFoundError(`network ${networkId.slice(0, 12)} is not known to ${this.o.pluginName}: create it with docker network create -d ${this.o.pluginName} --ipam-driver ${this.o.ipamPluginName}`);
    }
    return { network: parseStored(Network, kv) };
  }

  /** The network's profile, created with the defaults on first use. Docker stores the network
   * (and so its name) only after CreateNetwork returns, which is why this runs at CreateEndpoint.
   * undefined: Docker cannot tell the name now (the endpoint then waits for it, isolated). */
  private async ensureProfile(networkId: string, network: Network): Promise<string[] | undefined> {
    if (!this.o.createProfiles) return [];
    if (network.profile !== '') return [network.profile];
    const dockerName = await this.o.names.networkName(networkId);
    if (dockerName === undefined || !PROFILE_NAME.test(dockerName)) return undefined;
    return [await recordNetworkProfile(this.o.store, this.o.keys, this.o.node, networkId, dockerName)];
  }

  async createEndpoint(req: CreateEndpointRequest): Promise<object> {
    const iface = req.Interface ?? { Address: '', AddressIPv6: '', MacAddress: '' };
    if (iface.Address === '' && iface.AddressIPv6 === '') {
      throw new InvalidRequestError(`endpoint ${req.EndpointID.slice(0, 12)} has no address: ${this.o.pluginName} networks need --ipam-driver ${this.o.ipamPluginName}`);
    }
    const ipv4 = iface.Address === '' ? [] : [hostAddress(iface.Address, 4, 'Interface.Address')];
    const ipv6 = iface.AddressIPv6 === '' ? [] : [hostAddress(iface.AddressIPv6, 6, 'Interface.AddressIPv6')];
    // Known network first, also without profiles: an endpoint of a foreign network is refused.
    const { network } = await this.getNetwork(req.NetworkID);
    const profiles = await this.ensureProfile(req.NetworkID, network);
    const endpoint: Endpoint = {
      id: req.EndpointID,
      networkId: req.NetworkID,
      node: this.o.node,
      hostInterface: hostVethName(this.o.hostIfPrefix, req.EndpointID),
      ipv4,
      ipv6,
      mac: iface.MacAddress,
      profiles: profiles ?? [],
      labels: {},
      ready: !this.o.labelEndpoints && profiles !== undefined,
      profilesPending: profiles === undefined,
      createdAt: new Date().toISOString(),
    };
    const key = this.o.keys.endpoint(this.o.node, req.EndpointID);
    if ((await this.o.store.create(key, serialize(endpoint))) === undefined) {
      throw new ConflictError(`endpoint ${req.EndpointID.slice(0, 12)} already exists on ${this.o.node}`);
    }
    // Naming the endpoint on its allocations is bookkeeping for operators (ipam show), not needed
    // to serve Docker: it runs after the answer, off the container start path.
    void this.recordEndpointOnAllocations(req.EndpointID, [...ipv4, ...ipv6]);
    return {};
  }

  private async recordEndpointOnAllocations(endpointId: string, addresses: string[]): Promise<void> {
    for (const cidr of addresses) {
      try {
        await this.o.allocator.setEndpoint(addressPart(cidr), endpointId);
      } catch (err) {
        // NotFound: the container is already gone and its address released.
        if (!(err instanceof NotFoundError)) log.warn('recording endpoint %s on address %s: %s', endpointId.slice(0, 12), cidr, errorMessage(err));
      }
    }
  }

  private async getEndpoint(endpointId: string): Promise<Endpoint> {
    const kv = await this.o.store.get(this.o.keys.endpoint(this.o.node, endpointId));
    if (kv === undefined) throw new NotFoundError(`endpoint ${endpointId.slice(0, 12)} does not exist on ${this.o.node}`);
    return parseStored(Endpoint, kv);
  }

  async endpointOperInfo(req: EndpointRequest): Promise<EndpointOperInfoResponse> {
    const ep = await this.getEndpoint(req.EndpointID);
    return { Value: { hostInterface: ep.hostInterface, ipv4: ep.ipv4, ipv6: ep.ipv6, profiles: ep.profiles, node: ep.node } };
  }

  async deleteEndpoint(req: EndpointRequest): Promise<object> {
    // Leave normally removed the veth already; a crash between the two must not leak it.
    await this.o.dataplane.detach(await this.hostInterfaceOf(req.EndpointID));
    await this.o.store.delete(this.o.keys.endpoint(this.o.node, req.EndpointID));
    return {};
  }

  /** The recorded interface name; derived from the ID when the record is already gone. */
  private async hostInterfaceOf(endpointId: string): Promise<string> {
    const kv = await this.o.store.get(this.o.keys.endpoint(this.o.node, endpointId));
    return kv === undefined ? hostVethName(this.o.hostIfPrefix, endpointId) : parseStored(Endpoint, kv).hostInterface;
  }

  /** The configured MTU, less VXLAN's overhead when any pool encapsulates (as Calico: one MTU for
   * every workload, so a container's packets fit whichever way they leave). */
  private async vethMtu(): Promise<number> {
    const pools = await this.o.allocator.listPools();
    return pools.some((p) => p.vxlanMode !== 'Never') ? this.o.mtu - VXLAN_OVERHEAD : this.o.mtu;
  }

  async join(req: JoinRequest): Promise<JoinResponse> {
    const ep = await this.getEndpoint(req.EndpointID);
    // The recorded name is the one policy programs, even if the prefix changed since.
    const hostIf = ep.hostInterface;
    const attached = await this.o.dataplane.attach({
      hostIf,
      peerIf: tempPeerName(req.EndpointID),
      mtu: await this.vethMtu(),
      ipv4: ep.ipv4.map(addressPart),
      ipv6: ep.ipv6.map(addressPart),
    });
    if (ep.ready) {
      if (!(await this.o.policy.waitProgrammed(req.EndpointID, PROGRAMMED_WAIT_MS))) {
        log.warn('endpoint %s: policy not programmed after %dms; it stays isolated until it is', req.EndpointID.slice(0, 12), PROGRAMMED_WAIT_MS);
      }
    } else {
      this.o.policy.resolveLabelsLater(req.EndpointID, req.NetworkID);
    }
    const routes: StaticRoute[] = [];
    const response: JoinResponse = {
      InterfaceName: { SrcName: tempPeerName(req.EndpointID), DstPrefix: this.o.containerIfPrefix },
      StaticRoutes: routes,
      DisableGatewayService: true,
    };
    if (ep.ipv4.length > 0) {
      response.Gateway = CONTAINER_GATEWAY_V4;
      routes.push({ Destination: `${CONTAINER_GATEWAY_V4}/32`, RouteType: 1, NextHop: '' });
    }
    if (ep.ipv6.length > 0 && attached.ipv6Gateway !== undefined) {
      response.GatewayIPv6 = attached.ipv6Gateway;
      routes.push({ Destination: `${attached.ipv6Gateway}/128`, RouteType: 1, NextHop: '' });
    }
    return response;
  }

  /** Answers at once: the veth is removed in the background and DeleteEndpoint, which Docker
   * sends next, waits for the removal to be complete. */
  async leave(req: EndpointRequest): Promise<object> {
    this.o.dataplane.startDetach(await this.hostInterfaceOf(req.EndpointID));
    return {};
  }

  programExternalConnectivity(req: { Options: Record<string, unknown> }): object {
    const published = decode(PortMap, req.Options[PORT_MAP_OPTION]).filter((p) => (p.HostPort ?? 0) !== 0);
    if (published.length > 0) {
      throw new InvalidRequestError(`publishing ports (-p) is not supported on ${this.o.pluginName} networks: containers are routed, reach them at their own IP address`);
    }
    return {};
  }

  routes(): Route[] {
    const swarmOnly = (): never => {
      throw new InvalidRequestError(`swarm-scoped networks are not supported by this version of ${this.o.pluginName}`);
    };
    return [
      route('NetworkDriver.GetCapabilities', null, () => this.getCapabilities()),
      route('NetworkDriver.CreateNetwork', CreateNetworkRequest, (r) => this.createNetwork(r)),
      route('NetworkDriver.DeleteNetwork', NetworkRequest, (r) => this.deleteNetwork(r)),
      route('NetworkDriver.AllocateNetwork', AllocateNetworkRequest, swarmOnly),
      route('NetworkDriver.FreeNetwork', NetworkRequest, swarmOnly),
      route('NetworkDriver.CreateEndpoint', CreateEndpointRequest, (r) => this.createEndpoint(r)),
      route('NetworkDriver.EndpointOperInfo', EndpointRequest, (r) => this.endpointOperInfo(r)),
      route('NetworkDriver.DeleteEndpoint', EndpointRequest, (r) => this.deleteEndpoint(r)),
      route('NetworkDriver.Join', JoinRequest, (r) => this.join(r)),
      route('NetworkDriver.Leave', EndpointRequest, (r) => this.leave(r)),
      route('NetworkDriver.DiscoverNew', DiscoveryRequest, () => ({})),
      route('NetworkDriver.DiscoverDelete', DiscoveryRequest, () => ({})),
      route('NetworkDriver.ProgramExternalConnectivity', ExternalConnectivityRequest, (r) => this.programExternalConnectivity(r)),
      route('NetworkDriver.RevokeExternalConnectivity', EndpointRequest, () => ({})),
    ];
  }
}
