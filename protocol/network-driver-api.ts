// NetworkDriver wire types, named as libnetwork names them, with their request decoders.
import { array, num, object, optional, pattern, record, str, unknownValue, withDefault, type Decoder } from '../lib/validate';

export const NETWORK_DRIVER = 'NetworkDriver';

/** Docker's network and endpoint IDs: 64 hex characters (we accept 12+ for hand-made requests). */
export const dockerId = pattern(/^[0-9a-f]{12,64}$/, 'a Docker ID (12 to 64 lower-case hex characters)');
/** Network IDs: an engine's own are hex like every Docker ID; swarm's are 25 characters of
 * lower-case base 32 (e.g. ib3bdajqhe7vu5mplcwtjcfzg). */
export const networkId = pattern(/^(?:[0-9a-f]{12,64}|[0-9a-z]{25})$/, 'a Docker network ID (12 to 64 lower-case hex characters, or a swarm ID of 25 lower-case letters and digits)');

const options = withDefault(record(unknownValue), {});

export const IPAMData = object({
  AddressSpace: withDefault(str, ''),
  Pool: str,
  Gateway: withDefault(str, ''),
  AuxAddresses: withDefault(record(str), {}),
});
export type IPAMData = ReturnType<typeof IPAMData>;

export const CreateNetworkRequest = object({
  NetworkID: networkId,
  Options: options,
  IPv4Data: withDefault(array(IPAMData), []),
  IPv6Data: withDefault(array(IPAMData), []),
});
export type CreateNetworkRequest = ReturnType<typeof CreateNetworkRequest>;

export const NetworkRequest = object({ NetworkID: networkId });
export type NetworkRequest = ReturnType<typeof NetworkRequest>;

export const EndpointInterface = object({
  Address: withDefault(str, ''),
  AddressIPv6: withDefault(str, ''),
  MacAddress: withDefault(str, ''),
});

export const CreateEndpointRequest = object({
  NetworkID: networkId,
  EndpointID: dockerId,
  Options: options,
  Interface: optional(EndpointInterface),
});
export type CreateEndpointRequest = ReturnType<typeof CreateEndpointRequest>;

export const EndpointRequest = object({ NetworkID: networkId, EndpointID: dockerId });
export type EndpointRequest = ReturnType<typeof EndpointRequest>;

export const JoinRequest = object({
  NetworkID: networkId,
  EndpointID: dockerId,
  SandboxKey: str,
  Options: options,
});
export type JoinRequest = ReturnType<typeof JoinRequest>;

export const ExternalConnectivityRequest = object({
  NetworkID: networkId,
  EndpointID: dockerId,
  Options: options,
});
export type ExternalConnectivityRequest = ReturnType<typeof ExternalConnectivityRequest>;

export const DiscoveryRequest = object({
  DiscoveryType: num,
  DiscoveryData: optional(unknownValue),
});

export const AllocateNetworkRequest = object({
  NetworkID: networkId,
  Options: options,
  IPv4Data: withDefault(array(IPAMData), []),
  IPv6Data: withDefault(array(IPAMData), []),
});
export type AllocateNetworkRequest = ReturnType<typeof AllocateNetworkRequest>;

export interface StaticRoute {
  Destination: string;
  /** 0: via NextHop, 1: connected (on-link). */
  RouteType: 0 | 1;
  NextHop: string;
}

export interface JoinResponse {
  InterfaceName: { SrcName: string; DstPrefix: string };
  Gateway?: string;
  GatewayIPv6?: string;
  StaticRoutes: StaticRoute[];
  DisableGatewayService: boolean;
}

export interface CapabilitiesResponse {
  Scope: 'local' | 'global';
  ConnectivityScope: 'local' | 'global';
}

export interface CreateEndpointResponse {
  Interface?: { Address?: string; AddressIPv6?: string; MacAddress?: string };
}

export interface EndpointOperInfoResponse {
  Value: Record<string, unknown>;
}

/** Docker's generic (`-o key=value`) options live under this key of CreateNetwork.Options. */
export const GENERIC_OPTIONS = 'com.docker.network.generic';
export const ENABLE_IPV6_OPTION = 'com.docker.network.enable_ipv6';
export const PORT_MAP_OPTION = 'com.docker.network.portmap';

export const PortBinding = object({
  Proto: optional(num),
  IP: optional(str),
  Port: optional(num),
  HostIP: optional(str),
  HostPort: optional(num),
  HostPortEnd: optional(num),
});
export const PortMap: Decoder<ReturnType<typeof PortBinding>[]> = withDefault(array(PortBinding), []);
