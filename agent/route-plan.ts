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
// (its containers may still run).
//
// VXLAN (IPv4 pools, the pool's vxlanMode): traffic to another host's block of a pool with
// `Always`, or with `CrossSubnet` when that host is on another subnet, goes over this host's VXLAN
// device: `<block> via <their address> dev <vxlan> onlink`, with a static neighbour entry (their
// address → their device's MAC) and forwarding entry (their MAC → their address) on the device.
// The next hop is the other host's own address between hosts, so no tunnel address has to be
// allocated or recorded; each device's MAC is derived from its host's name (vxlanMac), so every
// host knows every other's without writing it anywhere. With `Never`, a host on another subnet is
// reported as unreachable, not routed.
//
// Backends (CALICO_NETWORKING_BACKEND): `vxlan` (the default) is all of the above. With `bird`
// the routes to other hosts' containers come from BGP (BIRD writes them, `proto bird`) and this
// plan keeps only the blackholes of local blocks; `none` routes nothing between hosts either.
import { createHash } from 'node:crypto';
import { type Cidr, type IpAddress, type IpFamily, blockContaining, containsCidr, containsIp, formatCidr, formatIp, parseCidr, parseIp } from '../ipam/cidr';
import type { VxlanMode } from '../ipam/pool';
import type { KernelRoute } from '../dataplane/routes';
import type { KernelVxlan, VxlanPeerEntry } from '../dataplane/vxlan';
import type { NetworkingBackend } from '../bgp/backend';

export type { NetworkingBackend } from '../bgp/backend';

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

export interface PlanPool {
  readonly cidr: string;
  readonly vxlanMode: VxlanMode;
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
  /** Pools, for their VXLAN mode (absent or not listed: Never). */
  readonly pools?: readonly PlanPool[];
  /** Default 'vxlan'. */
  readonly backend?: NetworkingBackend;
}

/** What the routes and VXLAN dataplanes write (their types: the plan is their input). */
export type Route = KernelRoute;

export interface VxlanPeer extends VxlanPeerEntry {
  readonly node: string;
}

/** This host's VXLAN device: its outer source address, its MAC, and every other host it may
 * exchange VXLAN with (static neighbour and forwarding entries). */
export interface VxlanPlan extends Omit<KernelVxlan, 'peers'> {
  readonly peers: VxlanPeer[];
}

export interface RoutePlan {
  readonly routes: Route[];
  /** Hosts with blocks this host cannot route to (no address, or on another subnet without VXLAN). */
  readonly unreachable: string[];
  /** The VXLAN device, when a pool encapsulates and there is another host with an IPv4 address;
   * undefined: no device. */
  readonly vxlan?: VxlanPlan;
}

/** The MAC of host `node`'s VXLAN device: locally administered, unicast, from a hash of its name,
 * so every host computes every other's. */
export function vxlanMac(node: string): string {
  const b = createHash('sha256').update(`calico-vxlan:${node}`).digest().subarray(0, 6);
  b[0] = ((b[0] ?? 0) & 0xfe) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

export function planRoutes(input: PlanInput): RoutePlan {
  const routes = new Map<string, Route>();
  const betweenHosts = (input.backend ?? 'vxlan') === 'vxlan';
  const unreachable = new Set<string>();
  const me = input.nodes.find((n) => n.name === input.node);
  const nodes = new Map(input.nodes.map((n) => [n.name, n]));
  const pools: Array<{ cidr: Cidr; mode: VxlanMode }> = [];
  for (const p of input.pools ?? []) {
    try {
      pools.push({ cidr: parseCidr(p.cidr), mode: p.vxlanMode });
    } catch {
      // a malformed pool encapsulates nothing
    }
  }
  const modeOf = (dst: Cidr): VxlanMode => (dst.family === 4 ? pools.find((p) => containsCidr(p.cidr, dst))?.mode : undefined) ?? 'Never';

  /** How to send traffic for host `name`'s containers in `dst` (a block or an address), if at all. */
  const hopTo = (name: string, dst: Cidr): Route | undefined => {
    if (!betweenHosts) return undefined;
    const mine = hostCidr(me, dst.family);
    const theirs = hostCidr(nodes.get(name), dst.family);
    const mode = modeOf(dst);
    if (mine !== undefined && theirs !== undefined) {
      const sameSubnet = containsIp(mine.subnet, theirs.address);
      const via = formatIp(theirs.address);
      if (dst.family === 4 && (mode === 'Always' || (mode === 'CrossSubnet' && !sameSubnet))) {
        return { kind: 'vxlan', dst: formatCidr(dst), via, family: 4 };
      }
      if (sameSubnet) return { kind: 'via', dst: formatCidr(dst), via, family: dst.family };
    }
    unreachable.add(name);
    return undefined;
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
      const hop = hopTo(b.affinity, cidr);
      if (hop !== undefined) add(routes, hop);
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
      const hop = hopTo(ep.node, blockContaining(ip, ip.family === 4 ? 32 : 128));
      if (hop !== undefined) add(routes, hop);
    }
  }
  unreachable.delete(input.node);
  const vxlan = betweenHosts ? planVxlan(input, me, pools.some((p) => p.mode !== 'Never')) : undefined;
  return {
    routes: [...routes.values()].sort((a, b) => (a.dst < b.dst ? -1 : a.dst > b.dst ? 1 : 0)),
    unreachable: [...unreachable].sort(),
    ...(vxlan !== undefined && { vxlan }),
  };
}

/** The device exists when a pool encapsulates, this host has an IPv4 address, and another host
 * has one too (a single host needs no tunnel). Every other host with an IPv4 address is a peer,
 * whatever the modes: entries for a peer reached by plain routes are harmless, and the device
 * must decapsulate whatever a peer sends. */
function planVxlan(input: PlanInput, me: PlanNode | undefined, encapsulates: boolean): VxlanPlan | undefined {
  const local = hostCidr(me, 4);
  if (!encapsulates || local === undefined) return undefined;
  const peers: VxlanPeer[] = [];
  for (const n of input.nodes) {
    const theirs = n.name === input.node ? undefined : hostCidr(n, 4);
    if (theirs !== undefined) peers.push({ node: n.name, address: formatIp(theirs.address), mac: vxlanMac(n.name) });
  }
  if (peers.length === 0) return undefined;
  peers.sort((a, b) => (a.node < b.node ? -1 : a.node > b.node ? 1 : 0));
  return { local: formatIp(local.address), mac: vxlanMac(input.node), peers };
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
