// Routing inside a workload that sits on several of our networks (pure: the agent's sandbox
// manager feeds it endpoints and writes the result with dataplane/sandbox-routing.ts).
//
// Docker gives such a container one interface per network and one default route, through the
// network it chose as the gateway network. Without more, everything the container sends leaves by
// that interface with that interface's address: replies from its address on another network
// leave by the wrong interface (and the host's anti-spoofing drops them), and its own connections
// to another network's members carry the wrong source (and that network's profile refuses them).
// Networks on the default pools share one address range, so no prefix tells them apart; what does
// is membership. So, inside the container's namespace:
//   - source routing: `from <address> lookup <table of its interface>`, whose only route is the
//     default through that interface's gateway: whatever leaves with an address leaves by the
//     interface that owns it, whichever network is the gateway network;
//   - one route per member of each of its networks, through that network's interface with that
//     network's address as the source: its own connections to a member start from the address
//     that member's profile admits.
// A workload on one network needs none of this (its default route does the same), so it gets
// nothing and costs nothing.
import type { SandboxPlan, SandboxRoute, SandboxRule } from '../dataplane/sandbox-routing';
import { workloadGateways } from '../dataplane/veth';
import { addressPart, parseCidr } from '../ipam/cidr';

/** The first routing table of ours in a workload's namespace (table = base + interface number). */
export const SANDBOX_TABLE_BASE = 100;

export interface PlanWorkloadEndpoint {
  readonly id: string;
  readonly node: string;
  readonly networkId: string;
  /** Addresses with prefix length, as endpoint records hold them. */
  readonly addresses: readonly string[];
  readonly sandbox?: string;
  readonly gatewayIndex: number;
}

/** Plans for every namespace on `node` that holds endpoints of two or more of our networks. */
export function planSandboxes(node: string, endpoints: readonly PlanWorkloadEndpoint[]): SandboxPlan[] {
  const bySandbox = new Map<string, PlanWorkloadEndpoint[]>();
  for (const e of endpoints) {
    if (e.node !== node || e.sandbox === undefined) continue;
    const list = bySandbox.get(e.sandbox);
    if (list === undefined) bySandbox.set(e.sandbox, [e]);
    else list.push(e);
  }
  const shared = [...bySandbox].filter(([, own]) => own.length > 1);
  if (shared.length === 0) return [];
  const byNetwork = new Map(shared.flatMap(([, own]) => own.map((e): [string, PlanWorkloadEndpoint[]] => [e.networkId, []])));
  for (const e of endpoints) byNetwork.get(e.networkId)?.push(e);
  const plans: SandboxPlan[] = [];
  for (const [sandbox, own] of shared.sort(([a], [b]) => a.localeCompare(b))) {
    const ownAddresses = new Set(own.flatMap((e) => e.addresses));
    const rules: SandboxRule[] = [];
    const routes = new Map<string, SandboxRoute>();
    for (const e of [...own].sort((a, b) => a.gatewayIndex - b.gatewayIndex)) {
      const table = SANDBOX_TABLE_BASE + e.gatewayIndex;
      const gateways = workloadGateways(e.gatewayIndex);
      for (const family of [4, 6] as const) {
        const mine = e.addresses.filter((a) => parseCidr(a).family === family);
        const first = mine[0];
        if (first === undefined) continue;
        const src = addressPart(first);
        const via = family === 4 ? gateways.v4 : gateways.v6;
        for (const a of mine) rules.push({ family, from: a, table });
        routes.set(`${family} ${table} default`, { family, table, dst: 'default', via, deviceAddress: src });
        for (const member of byNetwork.get(e.networkId) ?? []) {
          for (const dst of member.addresses) {
            const key = `${family} main ${dst}`;
            // An address is one endpoint's, so one network's; a stale duplicate keeps the first.
            if (ownAddresses.has(dst) || routes.has(key) || parseCidr(dst).family !== family) continue;
            routes.set(key, { family, table: 'main', dst, via, src, deviceAddress: src });
          }
        }
      }
    }
    plans.push({ sandbox, rules, routes: [...routes.values()] });
  }
  return plans;
}
