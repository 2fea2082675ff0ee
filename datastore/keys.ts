// The key layout, in one place. Everything lives under one root so a shared etcd can hold other
// data, and so tests can run under a unique root (CALICO_DATASTORE_PREFIX) without colliding.
//
//   <root>/ipam/pools/<cidr>            IP pool            (ipam/pool.ts)
//   <root>/ipam/blocks/<pool>/<cidr>    allocation block   (ipam/block.ts), under its pool, so
//                                       a pool's blocks are one prefix listing
//   <root>/ipam/affinity/<node>/<pool>/<cidr>   index of the blocks a host holds
//                                       (written with the block in one commit)
//   <root>/networks/<networkId>         Docker network     (model/network.ts)
//   <root>/profiles/<name>              policy profile     (model/profile.ts)
//   <root>/nodes/<node>/info            host registration  (model/node.ts)
//   <root>/nodes/<node>/alive           present while the host's daemon runs (etcd lease)
//   <root>/nodes/<node>/endpoints/<id>  workload endpoint  (model/endpoint.ts)
//   <root>/bgp/config                   BGP settings: mesh on/off, default AS (bgp/bgp-model.ts)
//   <root>/bgp/nodes/<node>             a host's AS override and route reflector cluster ID
//   <root>/bgp/peers/global/<address>   a peer of every host
//   <root>/bgp/peers/node/<node>/<address>   a peer of one host
//
// CIDRs are written with '-' for '/', as Calico did (10.0.0.0-26, fd00::-122), so a key segment
// never contains a slash.

export const DEFAULT_ROOT = '/calico/libnetwork/v1';

export function cidrToSegment(cidr: string): string {
  return cidr.replace('/', '-');
}

export function segmentToCidr(segment: string): string {
  const i = segment.lastIndexOf('-');
  return i < 0 ? segment : `${segment.slice(0, i)}/${segment.slice(i + 1)}`;
}

export class Keys {
  constructor(readonly root: string = DEFAULT_ROOT) {
    if (!root.startsWith('/') || root.endsWith('/')) {
      throw new Error(`datastore prefix must start with '/' and not end with '/': ${root}`);
    }
  }

  poolsPrefix(): string {
    return `${this.root}/ipam/pools/`;
  }
  pool(cidr: string): string {
    return this.poolsPrefix() + cidrToSegment(cidr);
  }
  blocksPrefix(): string {
    return `${this.root}/ipam/blocks/`;
  }
  poolBlocksPrefix(pool: string): string {
    return `${this.blocksPrefix()}${cidrToSegment(pool)}/`;
  }
  block(pool: string, cidr: string): string {
    return this.poolBlocksPrefix(pool) + cidrToSegment(cidr);
  }
  affinitiesPrefix(): string {
    return `${this.root}/ipam/affinity/`;
  }
  hostAffinityPrefix(node: string): string {
    return `${this.affinitiesPrefix()}${node}/`;
  }
  affinity(node: string, pool: string, cidr: string): string {
    return `${this.hostAffinityPrefix(node)}${cidrToSegment(pool)}/${cidrToSegment(cidr)}`;
  }
  networksPrefix(): string {
    return `${this.root}/networks/`;
  }
  network(networkId: string): string {
    return this.networksPrefix() + networkId;
  }
  profilesPrefix(): string {
    return `${this.root}/profiles/`;
  }
  profile(name: string): string {
    return this.profilesPrefix() + name;
  }
  nodesPrefix(): string {
    return `${this.root}/nodes/`;
  }
  node(node: string): string {
    return `${this.nodesPrefix()}${node}/info`;
  }
  nodeAlive(node: string): string {
    return `${this.nodesPrefix()}${node}/alive`;
  }
  endpointsPrefix(node: string): string {
    return `${this.nodesPrefix()}${node}/endpoints/`;
  }
  bgpPrefix(): string {
    return `${this.root}/bgp/`;
  }
  bgpConfig(): string {
    return `${this.bgpPrefix()}config`;
  }
  bgpNodesPrefix(): string {
    return `${this.bgpPrefix()}nodes/`;
  }
  bgpNode(node: string): string {
    return this.bgpNodesPrefix() + node;
  }
  bgpGlobalPeersPrefix(): string {
    return `${this.bgpPrefix()}peers/global/`;
  }
  bgpGlobalPeer(address: string): string {
    return this.bgpGlobalPeersPrefix() + address;
  }
  bgpNodePeersPrefix(): string {
    return `${this.bgpPrefix()}peers/node/`;
  }
  bgpNodePeer(node: string, address: string): string {
    return `${this.bgpNodePeersPrefix()}${node}/${address}`;
  }
  endpoint(node: string, endpointId: string): string {
    return this.endpointsPrefix(node) + endpointId;
  }
}
