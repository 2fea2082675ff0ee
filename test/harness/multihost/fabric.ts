// The physical network of a simulated cluster, all inside namespaces the harness creates:
//
//      subnet A: 198.18.1.0/24                          subnet B: 198.18.2.0/24
//   host1 .11 ──┐                                        ┌── host3 .11
//   host2 .12 ──┼── bridge a ── .1 [router] .1 ── bridge b ──┼── host4 .12
//   etcd  .2  ──┘                                        └── ...
//
// Both bridges live in one "fabric" namespace (a switch per subnet, nothing else); the router has
// one leg on each, forwards, sends no ICMP redirects and knows no route beyond the two subnets, so
// container addresses cannot cross it unless encapsulated or announced to it. Each host's fabric
// interface is `eth0`; its default route points at its subnet's router address (proxy ARP for the
// containers' 169.254.1.1 gateway needs a route out of another interface). Every veth is created
// directly in its two namespaces: nothing appears in the root namespace, even for a moment, so
// interface names never collide with other runs.
//
// With `outside`, a further namespace stands for the world beyond the hosts (for outgoing NAT):
//
//   [router] .1 ── o ── eth0 .10 [outside]        203.0.113.0/24 (TEST-NET-3)
//
// directly on a third leg of the router (leg `o`), its default route via the router. Its address
// is in no pool and on neither subnet, and exists only inside these namespaces: nothing is ever
// sent beyond the machine. The router has no route to container addresses, so the outside can
// answer a container only if the container's host masqueraded it (or a test adds a route).
import { nsRun } from './ns-exec.js';
import { allSettledOrThrow } from './settle.js';
import { run } from '../../../dataplane/exec.js';

export interface Subnet {
  /** 'a' or 'b': also the bridge's name in the fabric namespace and the router's leg. */
  readonly name: 'a' | 'b';
  readonly cidr: string;
  readonly prefixLength: number;
  /** The router's address on this subnet: every host's default gateway here. */
  readonly router: string;
}

export const SUBNETS: readonly [Subnet, Subnet] = [
  { name: 'a', cidr: '198.18.1.0/24', prefixLength: 24, router: '198.18.1.1' },
  { name: 'b', cidr: '198.18.2.0/24', prefixLength: 24, router: '198.18.2.1' },
];
/** The outside namespace's link to the router (see `outside` above). */
export const OUTSIDE = {
  cidr: '203.0.113.0/24',
  prefixLength: 24,
  /** The router's address on the link (its interface `o`), the outside's default gateway. */
  router: '203.0.113.1',
  /** The outside namespace's address (its interface `eth0`). */
  address: '203.0.113.10',
} as const;
/** The router's leg to the outside namespace. */
const OUTSIDE_LEG = 'o';
/** etcd's own namespace, on subnet A. */
export const ETCD_ADDRESS = '198.18.1.2';
const FIRST_HOST_OCTET = 11;
const MAX_HOSTS_PER_SUBNET = 200;

export interface HostPlacement {
  readonly name: string;
  readonly netns: string;
  readonly subnet: Subnet;
  readonly address: string;
  /** The host's port on its subnet's bridge (in the fabric namespace). */
  readonly fabricPort: string;
}

export interface FabricPlan {
  readonly fabricNs: string;
  readonly routerNs: string;
  readonly etcdNs: string;
  /** The outside namespace, when the cluster has one. */
  readonly outsideNs?: string;
  readonly hosts: readonly HostPlacement[];
}

/** Host i (0-based) goes to subnet `subnets[i]`; default: the first half (rounded up) on A.
 * `outside`: add the outside namespace behind the router. */
export function planFabric(id: string, count: number, subnets?: readonly ('a' | 'b')[], outside = false): FabricPlan {
  if (!Number.isInteger(count) || count < 1) throw new Error(`hosts must be a positive integer, got ${count}`);
  if (subnets !== undefined && subnets.length !== count) throw new Error(`subnets has ${subnets.length} entries for ${count} hosts`);
  const used = [0, 0];
  const hosts = Array.from({ length: count }, (_, i): HostPlacement => {
    const given = subnets?.[i];
    const which = given === undefined ? (i < Math.ceil(count / 2) ? 0 : 1) : given === 'a' ? 0 : 1;
    const subnet = SUBNETS[which];
    const n = used[which] ?? 0;
    used[which] = n + 1;
    if (n >= MAX_HOSTS_PER_SUBNET) throw new Error(`more than ${MAX_HOSTS_PER_SUBNET} hosts on subnet ${subnet.name}`);
    const name = `host${i + 1}`;
    return {
      name,
      netns: `${id}-${name}`,
      subnet,
      address: subnet.router.replace(/\.1$/, `.${FIRST_HOST_OCTET + n}`),
      fabricPort: name,
    };
  });
  return { fabricNs: `${id}-fabric`, routerNs: `${id}-router`, etcdNs: `${id}-etcd`, ...(outside && { outsideNs: `${id}-outside` }), hosts };
}

/** Namespace names this plan creates. */
export function namespacesOf(plan: FabricPlan): string[] {
  return [plan.fabricNs, plan.routerNs, plan.etcdNs, ...(plan.outsideNs === undefined ? [] : [plan.outsideNs]), ...plan.hosts.map((h) => h.netns)];
}

/** `ip netns add` + lo up. `created` gets the name as soon as it exists, for teardown. */
async function addNetns(name: string, created: string[]): Promise<void> {
  await run('ip', ['netns', 'add', name], `create netns ${name}`);
  created.push(name);
  await run('ip', ['-n', name, 'link', 'set', 'dev', 'lo', 'up'], `bring up lo in ${name}`);
}

function batch(ns: string | undefined, lines: readonly string[], what: string): Promise<unknown> {
  return run('ip', [...(ns === undefined ? [] : ['-n', ns]), '-batch', '-'], what, { input: `${lines.join('\n')}\n` });
}

/** sysctl inside a namespace (network sysctls are per namespace: /proc/sys/net follows the
 * reading process's network namespace). */
export function sysctlIn(ns: string, settings: readonly string[]): Promise<unknown> {
  return nsRun(ns, [`--net=/run/netns/${ns}`], ['sysctl', '-q', '-w', ...settings], { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' });
}

/** Creates every namespace of the plan. Names are pushed to `created` as they appear, so a
 * failure part-way leaves the caller a complete list to delete. */
export async function createNamespaces(plan: FabricPlan, created: string[]): Promise<void> {
  await allSettledOrThrow(namespacesOf(plan).map((ns) => addNetns(ns, created)));
}

/**
 * Wires the namespaces: bridges, router and every host's fabric interface, addresses and default
 * route; hosts get net.ipv4.ip_forward=0 (a freshly booted host; the plugin turns it on). With an
 * outside namespace, also its link to the router.
 */
export async function wireFabric(plan: FabricPlan): Promise<void> {
  // Every veth pair in one root-namespace batch; both ends are born in their namespaces.
  const [a, b] = SUBNETS;
  const veth = (ns: string, ifname: string, peer: string): string =>
    `link add name ${ifname} netns ${ns} type veth peer name ${peer} netns ${plan.fabricNs}`;
  const outside = plan.outsideNs;
  await batch(undefined, [
    ...(outside === undefined ? [] : [`link add name ${OUTSIDE_LEG} netns ${plan.routerNs} type veth peer name eth0 netns ${outside}`]),
    veth(plan.routerNs, a.name, `rtr-${a.name}`),
    veth(plan.routerNs, b.name, `rtr-${b.name}`),
    veth(plan.etcdNs, 'eth0', 'etcd'),
    ...plan.hosts.map((h) => veth(h.netns, 'eth0', h.fabricPort)),
  ], 'create fabric veths');
  const ports: [string, Subnet][] = [
    [`rtr-${a.name}`, a],
    [`rtr-${b.name}`, b],
    ['etcd', a],
    ...plan.hosts.map((h): [string, Subnet] => [h.fabricPort, h.subnet]),
  ];
  await allSettledOrThrow([
    batch(plan.fabricNs, [
      ...SUBNETS.flatMap((s) => [`link add name ${s.name} type bridge`, `link set dev ${s.name} up`]),
      ...ports.flatMap(([port, s]) => [`link set dev ${port} master ${s.name}`, `link set dev ${port} up`]),
    ], 'build fabric bridges'),
    batch(plan.routerNs, [
      ...SUBNETS.flatMap((s) => [`addr add ${s.router}/${s.prefixLength} dev ${s.name}`, `link set dev ${s.name} up`]),
      ...(outside === undefined ? [] : [`addr add ${OUTSIDE.router}/${OUTSIDE.prefixLength} dev ${OUTSIDE_LEG}`, `link set dev ${OUTSIDE_LEG} up`]),
    ], 'address router'),
    ...(outside === undefined ? [] : [batch(outside, [
      `addr add ${OUTSIDE.address}/${OUTSIDE.prefixLength} dev eth0`,
      'link set dev eth0 up',
      `route add default via ${OUTSIDE.router}`,
    ], 'address outside namespace')]),
    batch(plan.etcdNs, [
      `addr add ${ETCD_ADDRESS}/${a.prefixLength} dev eth0`,
      'link set dev eth0 up',
      `route add default via ${a.router}`,
    ], 'address etcd namespace'),
    ...plan.hosts.map((h) => batch(h.netns, [
      `addr add ${h.address}/${h.subnet.prefixLength} dev eth0`,
      'link set dev eth0 up',
      `route add default via ${h.subnet.router}`,
    ], `address ${h.name}`)),
    sysctlIn(plan.routerNs, [
      'net.ipv4.ip_forward=1',
      ...['all', 'default', ...SUBNETS.map((s) => s.name), ...(outside === undefined ? [] : [OUTSIDE_LEG])].map((i) => `net.ipv4.conf.${i}.send_redirects=0`),
    ]),
    ...plan.hosts.map((h) => sysctlIn(h.netns, ['net.ipv4.ip_forward=0'])),
  ]);
}
