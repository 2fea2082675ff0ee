// What this host's BIRD should announce and whom it should peer with, from the datastore alone
// (pure). The result feeds renderBirdConfig; every peer is validated here one by one, so a bad
// record is refused (and reported) without taking the others down with it.
//
// Topology, as in Calico:
//   - node-to-node mesh on (the default): a session with every other host;
//   - mesh off: route reflectors (hosts with a cluster ID) peer with every other host, clients
//     among them; other hosts peer with every route reflector only;
//   - global peers: every host; node-specific peers: their host only.
// One session per address: a node-specific peer wins over a global one, which wins over a mesh
// or reflector session to the same address.
import { blockContaining, containsIp, formatCidr, parseCidr, parseIp, tryParseIp } from '../ipam/cidr';
import { errorMessage } from '../lib/errors';
import { type BirdInput, type BirdPeer, type BirdTimers, DEFAULT_AS_NUMBER, type PeerKind, validAsNumber, validIpv4 } from './bird-config';
import type { BgpNodeSettings, BgpPeerRecord, BgpSettings } from './bgp-model';

export interface BgpPlanNode {
  readonly name: string;
  readonly ipv4Address?: string;
}

export interface BgpPlanInput {
  readonly node: string;
  readonly nodes: readonly BgpPlanNode[];
  readonly settings?: BgpSettings;
  readonly nodeSettings: ReadonlyMap<string, BgpNodeSettings>;
  readonly globalPeers: readonly BgpPeerRecord[];
  /** Node-specific peers of this host. */
  readonly nodePeers: readonly BgpPeerRecord[];
  readonly blocks: readonly { readonly cidr: string; readonly affinity: string | null }[];
  /** This host's endpoints' addresses (with /32 or /128). */
  readonly localAddresses: readonly string[];
  readonly timers: BirdTimers;
}

export type BgpPlan =
  | { readonly ok: true; readonly input: BirdInput; readonly refused: string[] }
  | { readonly ok: false; readonly reason: string; readonly refused: string[] };

export function planBgp(input: BgpPlanInput): BgpPlan {
  const refused: string[] = [];
  const me = input.nodes.find((n) => n.name === input.node);
  if (me === undefined) return { ok: false, reason: `node ${input.node} is not registered (removed for good?)`, refused };
  if (me.ipv4Address === undefined) return { ok: false, reason: `node ${input.node} has no IPv4 address between hosts`, refused };
  const asOf = (name: string): number => {
    const own = input.nodeSettings.get(name)?.asNumber;
    return own ?? input.settings?.asNumber ?? DEFAULT_AS_NUMBER;
  };
  let asNumber: number;
  try {
    asNumber = validAsNumber(asOf(input.node), `AS number of ${input.node}`);
  } catch (err) {
    return { ok: false, reason: errorMessage(err), refused };
  }
  const clusterOf = (name: string): string | undefined => input.nodeSettings.get(name)?.routeReflectorClusterId;
  let myCluster: string | undefined;
  try {
    const c = clusterOf(input.node);
    myCluster = c === undefined ? undefined : validIpv4(c, `route reflector cluster ID of ${input.node}`);
  } catch (err) {
    refused.push(errorMessage(err));
  }

  const peers = new Map<string, BirdPeer>();
  const add = (kind: PeerKind, address: unknown, peerAs: unknown, what: string, rrClient = false): void => {
    try {
      const a = validIpv4(address, `${what}: address`);
      const n = validAsNumber(peerAs, `${what}: AS number`);
      if (!peers.has(a)) peers.set(a, { kind, address: a, asNumber: n, ...(rrClient && { rrClient }) });
    } catch (err) {
      refused.push(errorMessage(err));
    }
  };
  for (const p of input.nodePeers) add('node', p.address, p.asNumber, `node-specific peer ${JSON.stringify(String(p.address).slice(0, 40))}`);
  for (const p of input.globalPeers) add('global', p.address, p.asNumber, `global peer ${JSON.stringify(String(p.address).slice(0, 40))}`);
  const mesh = input.settings?.nodeToNodeMesh ?? true;
  for (const n of [...input.nodes].sort((a, b) => (a.name < b.name ? -1 : 1))) {
    if (n.name === input.node || n.ipv4Address === undefined) continue;
    const address = n.ipv4Address.split('/')[0];
    if (mesh) {
      add('mesh', address, asOf(n.name), `node ${n.name}`);
    } else if (myCluster !== undefined) {
      add('rr', address, asOf(n.name), `node ${n.name}`, clusterOf(n.name) === undefined);
    } else if (clusterOf(n.name) !== undefined) {
      add('rr', address, asOf(n.name), `route reflector ${n.name}`);
    }
  }

  return {
    ok: true,
    refused,
    input: {
      hostAddress: me.ipv4Address,
      asNumber,
      exports: exportsOf(input),
      peers: [...peers.values()],
      ...(myCluster !== undefined && { routeReflectorClusterId: myCluster }),
      timers: input.timers,
    },
  };
}

/** Each IPv4 block this host holds, and a /32 for each local address from a block held by
 * another host (or by none): routes follow the endpoint, not the block. */
function exportsOf(input: BgpPlanInput): string[] {
  const out = new Set<string>();
  const held: ReturnType<typeof parseCidr>[] = [];
  for (const b of input.blocks) {
    if (b.affinity !== input.node) continue;
    try {
      const c = parseCidr(b.cidr);
      if (c.family !== 4) continue;
      held.push(c);
      out.add(formatCidr(c));
    } catch {
      // a malformed block announces nothing
    }
  }
  for (const text of input.localAddresses) {
    const ip = tryParseIp(text.split('/')[0] ?? '');
    if (ip === undefined || ip.family !== 4) continue;
    if (held.some((c) => containsIp(c, ip))) continue;
    out.add(formatCidr(blockContaining(parseIp(text.split('/')[0] ?? ''), 32)));
  }
  return [...out].sort();
}
