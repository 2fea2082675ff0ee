// The NetworkDriver: Docker's side of networks and endpoints. It decodes libnetwork's requests,
// records networks and their profiles, and hands endpoints to the endpoint service
// (workload/endpoint-service.ts), which knows nothing of Docker: what is Docker's stays here.
import type { Datastore } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import { parseHostAddress, tempPeerName } from '../dataplane/names';
import { normalizeCidr, parseCidr, type IpFamily } from '../ipam/cidr';
import { InvalidRequestError, NotFoundError, errorMessage } from '../lib/errors';
import { logger } from '../lib/log';
import { parseStored, serialize } from '../model/codec';
import { Network } from '../model/network';
import { PROFILE_NAME } from '../policy/profile-resource';
import type { EndpointService } from '../workload/endpoint-service';
import { forgetNetworkRecord, recordNetworkProfile } from './network-profile';
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
import { route, type Route } from '../protocol/route';
import { decode } from '../lib/validate';
import { GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE } from './ipam-driver';

/** Looks up Docker's name for a network (CreateNetwork carries only the ID). */
export interface NetworkNameLookup {
  networkName(networkId: string): Promise<string | undefined>;
}

const log = logger('driver');

const SUPPORTED_NETWORK_OPTIONS: readonly string[] = [];

export interface NetworkDriverOptions {
  readonly store: Datastore;
  readonly keys: Keys;
  readonly endpoints: EndpointService;
  readonly names: NetworkNameLookup;
  readonly node: string;
  readonly pluginName: string;
  readonly ipamPluginName: string;
  readonly containerIfPrefix: string;
  readonly createProfiles: boolean;
  /** `global`: swarm-scoped networks (the managed plugin); `local`: an engine's own networks. */
  readonly scope?: 'local' | 'global';
}

/** Swarm's network IDs are 25 characters of base 32; an engine's own are 64 hex characters. */
function isSwarmNetworkId(id: string): boolean {
  return id.length === SWARM_NETWORK_ID_LENGTH;
}
const SWARM_NETWORK_ID_LENGTH = 25;

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
    // ConnectivityScope global is what makes swarm resolve service names and tasks.<service>.
    const scope = this.o.scope ?? 'local';
    return { Scope: scope, ConnectivityScope: scope };
  }

  /** On the swarm manager, before any node creates the network: nothing to reserve (addresses
   * come from the IPAM driver, profiles from the network's name on first use), and nothing to
   * pass to the nodes. */
  allocateNetwork(req: AllocateNetworkRequest): { Options: Record<string, string> } {
    // The manager passes no address space here; the pools are ours (RequestPool answered them).
    for (const d of [...req.IPv4Data, ...req.IPv6Data]) parseCidr(d.Pool, 'IPAM pool');
    return { Options: {} };
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

  /** Every node deletes its copy of a swarm network when its last task there goes, while other
   * nodes may still use it: the shared record stays until the manager frees the network. */
  async deleteNetwork(req: { NetworkID: string }): Promise<object> {
    if (isSwarmNetworkId(req.NetworkID)) return {};
    return this.forgetNetwork(req.NetworkID);
  }

  async freeNetwork(req: { NetworkID: string }): Promise<object> {
    return isSwarmNetworkId(req.NetworkID) ? this.forgetNetwork(req.NetworkID) : {};
  }

  private async forgetNetwork(networkId: string): Promise<object> {
    await forgetNetworkRecord(this.o.store, this.o.keys, networkId);
    return {};
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
    await this.o.endpoints.create({ id: req.EndpointID, networkId: req.NetworkID, ipv4, ipv6, mac: iface.MacAddress, profiles });
    return {};
  }

  async endpointOperInfo(req: EndpointRequest): Promise<EndpointOperInfoResponse> {
    const ep = await this.o.endpoints.get(req.EndpointID);
    return { Value: { hostInterface: ep.hostInterface, ipv4: ep.ipv4, ipv6: ep.ipv6, profiles: ep.profiles, node: ep.node } };
  }

  async deleteEndpoint(req: EndpointRequest): Promise<object> {
    await this.o.endpoints.remove(req.EndpointID);
    return {};
  }

  async join(req: JoinRequest): Promise<JoinResponse> {
    // SandboxKey is the container's network namespace: with it, a second (third, ...) network of
    // the same container gets gateways of its own instead of a clashing 169.254.1.1/32 route.
    const sandbox = req.SandboxKey === '' ? undefined : req.SandboxKey;
    const attached = await this.o.endpoints.attach(req.EndpointID, tempPeerName(req.EndpointID), sandbox);
    const routes: StaticRoute[] = [];
    const response: JoinResponse = {
      InterfaceName: { SrcName: tempPeerName(req.EndpointID), DstPrefix: this.o.containerIfPrefix },
      StaticRoutes: routes,
      DisableGatewayService: true,
    };
    if (attached.ipv4Gateway !== undefined) {
      response.Gateway = attached.ipv4Gateway;
      routes.push({ Destination: `${attached.ipv4Gateway}/32`, RouteType: 1, NextHop: '' });
    }
    if (attached.ipv6Gateway !== undefined) {
      response.GatewayIPv6 = attached.ipv6Gateway;
      routes.push({ Destination: `${attached.ipv6Gateway}/128`, RouteType: 1, NextHop: '' });
    }
    return response;
  }

  /** Answers at once: the veth is removed in the background and DeleteEndpoint, which Docker
   * sends next, waits for the removal to be complete. */
  async leave(req: EndpointRequest): Promise<object> {
    await this.o.endpoints.startDetach(req.EndpointID);
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
    return [
      route('NetworkDriver.GetCapabilities', null, () => this.getCapabilities()),
      route('NetworkDriver.CreateNetwork', CreateNetworkRequest, (r) => this.createNetwork(r)),
      route('NetworkDriver.DeleteNetwork', NetworkRequest, (r) => this.deleteNetwork(r)),
      route('NetworkDriver.AllocateNetwork', AllocateNetworkRequest, (r) => this.allocateNetwork(r)),
      route('NetworkDriver.FreeNetwork', NetworkRequest, (r) => this.freeNetwork(r)),
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
