// Host cleanup for `calicoctl uninstall`: finds and removes everything of ours in one network
// namespace (the host's, or a test's): the policy chains and ipsets with our chain prefix, the
// routes with our routing protocol (both families, every table), the VXLAN device, and the host
// ends of our veths (`<interface prefix>` + 11 hexadecimal characters, kind veth; deleting one
// deletes its peer and the /32 routes to it). Nothing else is touched: another prefix's chains,
// routes of other protocols, links of other names or kinds.
import { DataplaneError, errorMessage } from '../lib/errors';
import { run } from './exec';
import { ENDPOINT_ID_CHARS, assertNetnsName } from './names';
import { POLICY_MARK_BIT, PolicyDataplane } from './policy-dataplane';
import type { NetnsOption } from './veth';
import { VXLAN_DEVICE } from './vxlan';
import { ownsChain } from '../policy/names';

export interface HostCleanupOptions extends NetnsOption {
  /** CALICO_IPTABLES_CHAIN_PREFIX */
  readonly chainPrefix: string;
  /** CALICO_INTERFACE_PREFIX */
  readonly ifPrefix: string;
  /** CALICO_ROUTE_PROTOCOL */
  readonly routeProtocol: number;
  /** Defaults to the daemon's `vxlan.calico`. */
  readonly vxlanDevice?: string;
}

/** What is (or was) there, in words an operator reads: `ipv4 filter cali-FORWARD`, `cali-4-...`,
 * `ipv4 10.0.0.0/26 blackhole`, `vxlan.calico`. */
export interface HostState {
  readonly chains: string[];
  readonly sets: string[];
  readonly routes: string[];
  readonly interfaces: string[];
}

interface LinkJson {
  ifname?: string;
  linkinfo?: { info_kind?: string };
}

interface RouteJson {
  type?: string;
  dst?: string;
  gateway?: string;
  dev?: string;
  table?: string;
}

export function isEmptyHostState(s: HostState): boolean {
  return s.chains.length + s.sets.length + s.routes.length + s.interfaces.length === 0;
}

export class HostCleanup {
  private readonly ns: string[];
  private readonly policy: PolicyDataplane;
  private readonly vxlanDevice: string;
  private readonly vethName: RegExp;

  constructor(private readonly o: HostCleanupOptions) {
    if (!Number.isInteger(o.routeProtocol) || o.routeProtocol < 5 || o.routeProtocol > 255) {
      throw new DataplaneError(`route protocol must be an integer from 5 to 255, got ${o.routeProtocol}`);
    }
    if (!/^[a-z][a-z0-9]{0,3}$/.test(o.ifPrefix)) throw new DataplaneError(`invalid interface prefix '${o.ifPrefix}'`);
    this.ns = o.netns === undefined ? [] : ['-n', assertNetnsName(o.netns)];
    this.policy = new PolicyDataplane({ prefix: o.chainPrefix, markBit: POLICY_MARK_BIT, ifPrefix: o.ifPrefix, ...(o.netns !== undefined && { netns: o.netns }) });
    this.vxlanDevice = o.vxlanDevice ?? VXLAN_DEVICE;
    this.vethName = new RegExp(`^${o.ifPrefix}[0-9a-f]{${ENDPOINT_ID_CHARS}}$`);
  }

  /** Everything of ours in the namespace now. */
  async read(): Promise<HostState> {
    const kernel = await this.policy.readKernel();
    const chains: string[] = [];
    for (const family of [4, 6] as const) {
      for (const [table, tableChains] of kernel.iptables[family]) {
        for (const chain of tableChains.keys()) if (ownsChain(this.policy.prefix, chain)) chains.push(`ipv${family} ${table} ${chain}`);
      }
    }
    const sets = [...kernel.sets.keys()].sort();
    const routes: string[] = [];
    for (const family of [4, 6] as const) {
      for (const r of await this.routes(family)) {
        const what = [r.type === 'blackhole' ? 'blackhole' : undefined, r.gateway !== undefined ? `via ${r.gateway}` : undefined, r.dev !== undefined && r.type !== 'blackhole' ? `dev ${r.dev}` : undefined];
        const table = r.table !== undefined && r.table !== 'main' ? ` table ${r.table}` : '';
        routes.push(`ipv${family} ${r.dst ?? '?'} ${what.filter((w) => w !== undefined).join(' ')}${table}`.trimEnd());
      }
    }
    const interfaces = (await this.links()).map((l) => `${l.linkinfo?.info_kind ?? '?'} ${l.ifname ?? '?'}`);
    return { chains: chains.sort(), sets, routes, interfaces };
  }

  /** Removes everything of ours and returns what was there; throws if something stays behind. */
  async removeAll(): Promise<HostState> {
    const before = await this.read();
    // Interfaces first: deleting a veth takes its routes along, and the VXLAN device the routes
    // through it. Then the rest of our routes, then chains and sets (jumps before chains before
    // sets, which PolicyDataplane.removeAll orders).
    for (const link of await this.links()) {
      if (link.ifname === undefined) continue;
      try {
        await run('ip', [...this.ns, 'link', 'del', 'dev', link.ifname], `delete ${link.ifname}`);
      } catch (err) {
        // Gone meanwhile (a veth whose container namespace was just destroyed) is fine.
        if (!/Cannot find device/.test(errorMessage(err))) throw err;
      }
    }
    for (const family of [4, 6] as const) {
      await run('ip', [...this.ns, `-${family}`, 'route', 'flush', 'table', 'all', 'proto', String(this.o.routeProtocol)], `remove our IPv${family} routes`);
    }
    await this.policy.removeAll();
    const after = await this.read();
    if (!isEmptyHostState(after)) {
      throw new DataplaneError(`uninstall left some of ours behind: ${[...after.chains, ...after.sets, ...after.routes, ...after.interfaces].join(', ')}`);
    }
    return before;
  }

  private async routes(family: 4 | 6): Promise<RouteJson[]> {
    const { stdout } = await run('ip', [...this.ns, '-j', `-${family}`, 'route', 'show', 'table', 'all', 'proto', String(this.o.routeProtocol)], `list our IPv${family} routes`);
    return parse<RouteJson[]>(stdout, `list our IPv${family} routes`);
  }

  /** Our veths (by name and kind) and the VXLAN device (by name and kind). */
  private async links(): Promise<LinkJson[]> {
    const { stdout } = await run('ip', [...this.ns, '-j', '-d', 'link', 'show'], 'list links');
    return parse<LinkJson[]>(stdout, 'list links').filter((l) => {
      const kind = l.linkinfo?.info_kind;
      const name = l.ifname ?? '';
      return (kind === 'veth' && this.vethName.test(name)) || (kind === 'vxlan' && name === this.vxlanDevice);
    });
  }
}

function parse<T>(stdout: string, op: string): T {
  try {
    return JSON.parse(stdout.trim() === '' ? '[]' : stdout) as T;
  } catch (err) {
    throw new DataplaneError(`${op}: unexpected output from ip: ${errorMessage(err)}`, { cause: err });
  }
}
