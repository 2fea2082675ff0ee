// Which routes this host needs, from the datastore alone (pure): "each host is a router for the
// containers it hosts", and learns where every other host's containers are from the blocks and
// endpoints the datastore records.
//
//   - a blackhole for each block this host holds, so a free address of a local block never leaks
//     out through the default route (the /32s of local containers, added by Join, win over it);
//   - each other host's blocks via that host's address, when it is on this host's subnet;
//   - a /32 (/128) to the host where an address is in use when that is not the host whose block it
//     came from (a borrowed address): routes follow the endpoint, not the block.
// Routes follow blocks and endpoints, not liveness: a host whose daemon stopped keeps its routes
// (its containers may still run). Hosts on another subnet need encapsulation, which comes with the
// pools' VXLAN mode; until then they are reported, not routed.
import { type Cidr, type IpAddress, type IpFamily, blockContaining, containsIp, formatCidr, formatIp, parseCidr, parseIp } from '../ipam/cidr';

export interface PlanNode {
  readonly name: string;
  /** address/prefix between hosts, per family. */
  readonly ipv4Address?: string;
  readonly ipv6Address?: string;
}

export interface PlanBlock {
  readonly cidr: string;
  readonly affinity: string | null;
}

export interface PlanEndpoint {
  readonly node: string;
  /** Addresses with their /32 or /128. */
  readonly addresses: readonly string[];
}

export interface PlanInput {
  readonly node: string;
  readonly nodes: readonly PlanNode[];
  readonly blocks: readonly PlanBlock[];
  readonly endpoints: readonly PlanEndpoint[];
}

export type Route =
  | { readonly kind: 'blackhole'; readonly dst: string; readonly family: IpFamily }
  | { readonly kind: 'via'; readonly dst: string; readonly via: string; readonly family: IpFamily };

export interface RoutePlan {
  readonly routes: Route[];
  /** Hosts with blocks this host cannot route to (no address, or on another subnet). */
  readonly unreachable: string[];
}

export function planRoutes(input: PlanInput): RoutePlan {
  const routes = new Map<string, Route>();
  const unreachable = new Set<string>();
  const me = input.nodes.find((n) => n.name === input.node);
  const nodes = new Map(input.nodes.map((n) => [n.name, n]));

  /** Where to send traffic for host `name`'s containers in `family`, if it can be reached directly. */
  const nextHop = (name: string, family: IpFamily): string | undefined => {
    const mine = hostCidr(me, family);
    const theirs = hostCidr(nodes.get(name), family);
    if (mine === undefined || theirs === undefined || !containsIp(mine.subnet, theirs.address)) {
      unreachable.add(name);
      return undefined;
    }
    return formatIp(theirs.address);
  };

  // Blocks by family and size, so an address's block is a lookup per size, not a scan.
  const blocksBySize = new Map<string, { family: IpFamily; prefix: number; affinity: Map<string, string | null> }>();
  for (const b of input.blocks) {
    let cidr: Cidr;
    try {
      cidr = parseCidr(b.cidr);
    } catch {
      continue;
    }
    const size = `${cidr.family}/${cidr.prefix}`;
    const bySize = blocksBySize.get(size) ?? { family: cidr.family, prefix: cidr.prefix, affinity: new Map<string, string | null>() };
    bySize.affinity.set(formatCidr(cidr), b.affinity);
    blocksBySize.set(size, bySize);
    if (b.affinity === input.node) {
      add(routes, { kind: 'blackhole', dst: formatCidr(cidr), family: cidr.family });
    } else if (b.affinity !== null) {
      const via = nextHop(b.affinity, cidr.family);
      if (via !== undefined) add(routes, { kind: 'via', dst: formatCidr(cidr), via, family: cidr.family });
    }
  }

  const affinityOf = (ip: IpAddress): string | null | undefined => {
    for (const { family, prefix, affinity } of blocksBySize.values()) {
      if (family !== ip.family) continue;
      const hit = affinity.get(formatCidr(blockContaining(ip, prefix)));
      if (hit !== undefined) return hit;
    }
    return undefined;
  };

  for (const ep of input.endpoints) {
    if (ep.node === input.node) continue; // local: Join's /32 route to the veth
    for (const text of ep.addresses) {
      let ip: IpAddress;
      try {
        ip = parseIp(text.split('/')[0] ?? '');
      } catch {
        continue;
      }
      if (affinityOf(ip) === ep.node) continue; // covered by the block route
      const via = nextHop(ep.node, ip.family);
      if (via !== undefined) add(routes, { kind: 'via', dst: `${formatIp(ip)}/${ip.family === 4 ? 32 : 128}`, via, family: ip.family });
    }
  }
  unreachable.delete(input.node);
  return { routes: [...routes.values()].sort((a, b) => (a.dst < b.dst ? -1 : a.dst > b.dst ? 1 : 0)), unreachable: [...unreachable].sort() };
}

function add(routes: Map<string, Route>, route: Route): void {
  routes.set(route.dst, route);
}

function hostCidr(node: PlanNode | undefined, family: IpFamily): { address: IpAddress; subnet: Cidr } | undefined {
  const text = family === 4 ? node?.ipv4Address : node?.ipv6Address;
  if (text === undefined) return undefined;
  const [addr, prefix] = text.split('/');
  try {
    const address = parseIp(addr ?? '');
    if (address.family !== family) return undefined;
    const subnet = blockContaining(address, Number(prefix ?? (family === 4 ? 32 : 128)));
    return { address, subnet };
  } catch {
    return undefined;
  }
}
