// BIRD 2's configuration for one host, rendered from validated values (pure). Every value that
// reaches the text is checked here first, whatever its source: addresses are parsed and printed
// back in canonical form, AS numbers are integers in range, and protocol names are derived from
// addresses, never copied from a name in the datastore, so no peer record can smuggle a quote,
// brace, semicolon or newline into BIRD's configuration.
//
// What BIRD does with it:
//   - `calico_exports` (static, blackhole routes): each block this host holds and each /32 of an
//     address in use here from another host's block; the only routes announced to peers. They
//     never reach the kernel (the routes manager writes the blackholes there itself);
//   - `calico_kernel`: writes the routes learned over BGP into the kernel with BIRD's own protocol
//     number (`proto bird`, 12), so they never mix with the routes manager's (`proto 80`); it
//     learns only the kernel's default route, to resolve the next hops of multihop peers;
//   - one BGP session per peer, named `<kind>_<address with _>`: `mesh` (node-to-node mesh),
//     `rr` (to or from a route reflector), `global`, `node` (node-specific peer).
// eBGP sessions (peer AS ≠ ours) carry `allow local as 1`: hosts sharing an AS behind a router
// of another AS must accept each other's routes, whose path holds their own AS once.
import { type Cidr, blockContaining, containsIp, formatCidr, formatIp, parseCidr, parseIp } from '../ipam/cidr';
import { InvalidRequestError } from '../lib/errors';

export const DEFAULT_AS_NUMBER = 64512;
export const MAX_AS_NUMBER = 4_294_967_295;
/** The static protocol whose routes are announced. */
export const EXPORT_PROTOCOL = 'calico_exports';

export type PeerKind = 'mesh' | 'rr' | 'global' | 'node';
export const PEER_KINDS: readonly PeerKind[] = ['mesh', 'rr', 'global', 'node'];

/** BGP refuses this peer or setting before it reaches BIRD. */
export class BgpConfigError extends InvalidRequestError {}

export interface BirdPeer {
  readonly kind: PeerKind;
  readonly address: string;
  readonly asNumber: number;
  /** This host is a route reflector and the peer one of its clients. */
  readonly rrClient?: boolean;
}

export interface BirdTimers {
  readonly keepaliveSeconds: number;
  readonly holdSeconds: number;
  readonly connectRetrySeconds: number;
}

/** BIRD's defaults are 60/240/120 s; ours reconnect faster, as Calico's template does. */
export const DEFAULT_TIMERS: BirdTimers = { keepaliveSeconds: 20, holdSeconds: 60, connectRetrySeconds: 5 };

export interface BirdInput {
  /** This host's IPv4 address with its prefix length (the node record's ipv4Address): router ID,
   * source of every session, and the subnet that tells direct peers from multihop ones. */
  readonly hostAddress: string;
  readonly asNumber: number;
  /** CIDRs to announce. */
  readonly exports: readonly string[];
  readonly peers: readonly BirdPeer[];
  /** Set when this host is a route reflector (an IPv4-shaped cluster ID). */
  readonly routeReflectorClusterId?: string;
  readonly timers: BirdTimers;
  /** BIRD's log file (rotated at 1 MB); absent: syslog. */
  readonly logFile?: string;
}

const LOG_PATH = /^\/[A-Za-z0-9._/-]{1,200}$/;

export function validAsNumber(value: unknown, what = 'AS number'): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > MAX_AS_NUMBER) {
    throw new BgpConfigError(`${what} must be an integer from 1 to ${MAX_AS_NUMBER}, got ${JSON.stringify(String(value).slice(0, 40))}`);
  }
  return value;
}

/** A unicast IPv4 address in canonical form (BGP peers are IPv4 here: the fabric is). */
export function validIpv4(value: unknown, what: string): string {
  // Quoted as JSON: a hostile value must not put a newline into the log either.
  if (typeof value !== 'string' || value.length > 15) throw new BgpConfigError(`${what} must be an IPv4 address, got ${JSON.stringify(String(value).slice(0, 40))}`);
  let text: string;
  try {
    const ip = parseIp(value, what);
    if (ip.family !== 4) throw new Error('IPv6');
    text = formatIp(ip);
  } catch {
    throw new BgpConfigError(`${what} must be an IPv4 address, got ${JSON.stringify(value)}`);
  }
  if (text === '0.0.0.0' || text === '255.255.255.255' || Number(text.split('.')[0]) >= 224) {
    throw new BgpConfigError(`${what} must be a unicast address, got '${value}'`);
  }
  return text;
}

export function validTimers(t: BirdTimers): BirdTimers {
  const int = (v: number, what: string, min: number, max: number): number => {
    if (!Number.isInteger(v) || v < min || v > max) throw new BgpConfigError(`${what} must be an integer from ${min} to ${max}, got '${v}'`);
    return v;
  };
  const holdSeconds = int(t.holdSeconds, 'hold time', 3, 65_535);
  const keepaliveSeconds = int(t.keepaliveSeconds, 'keepalive time', 1, 65_535);
  if (keepaliveSeconds >= holdSeconds) throw new BgpConfigError(`keepalive time (${keepaliveSeconds} s) must be shorter than hold time (${holdSeconds} s)`);
  return { keepaliveSeconds, holdSeconds, connectRetrySeconds: int(t.connectRetrySeconds, 'connect retry time', 1, 65_535) };
}

/** `mesh_198_18_1_12`: the session's name in BIRD and in `calicoctl node status`. */
export function protocolName(kind: PeerKind, address: string): string {
  return `${kind}_${validIpv4(address, 'peer address').replace(/\./g, '_')}`;
}

/** The kind and address a session name stands for; undefined for BIRD's other protocols. */
export function parseProtocolName(name: string): { kind: PeerKind; address: string } | undefined {
  const m = /^(mesh|rr|global|node)_(\d{1,3})_(\d{1,3})_(\d{1,3})_(\d{1,3})$/.exec(name);
  if (m === null) return undefined;
  return { kind: m[1] as PeerKind, address: `${m[2]}.${m[3]}.${m[4]}.${m[5]}` };
}

export function renderBirdConfig(input: BirdInput): string {
  const slash = input.hostAddress.indexOf('/');
  const routerId = validIpv4(slash < 0 ? input.hostAddress : input.hostAddress.slice(0, slash), 'host address');
  const prefix = slash < 0 ? 32 : Number(input.hostAddress.slice(slash + 1));
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > 32) throw new BgpConfigError(`host address must be an IPv4 address/prefix, got '${input.hostAddress}'`);
  const subnet = blockContaining(parseIp(routerId), prefix);
  const asNumber = validAsNumber(input.asNumber, 'this host\'s AS number');
  const timers = validTimers(input.timers);
  const clusterId = input.routeReflectorClusterId === undefined ? undefined : validIpv4(input.routeReflectorClusterId, 'route reflector cluster ID');
  const announced = [...new Set(input.exports.map((c) => {
    const cidr = parseCidr(c, 'exported route');
    if (cidr.family !== 4) throw new BgpConfigError(`exported route must be IPv4, got '${c}'`);
    return formatCidr(cidr);
  }))].sort();
  const byName = new Map<string, string>();
  for (const p of input.peers) {
    if (!PEER_KINDS.includes(p.kind)) throw new BgpConfigError(`unknown peer kind '${String(p.kind)}'`);
    const address = validIpv4(p.address, 'peer address');
    if (address === routerId) continue; // never a session with itself
    const peerAs = validAsNumber(p.asNumber, `AS number of peer ${address}`);
    const name = protocolName(p.kind, address);
    if (byName.has(name)) continue;
    const onSubnet = subnet.prefix < 32 && sameSubnet(subnet, address);
    const options = [
      `neighbor ${address} as ${peerAs};`,
      onSubnet ? 'direct;' : 'multihop;',
      ...(peerAs !== asNumber ? ['allow local as 1;'] : []),
      ...(p.rrClient === true && clusterId !== undefined && peerAs === asNumber ? ['rr client;', `rr cluster id ${clusterId};`] : []),
      // A reflector passes on what it learned over iBGP (BIRD applies the reflection rules);
      // every other session announces this host's own routes only.
      ...(clusterId !== undefined && p.kind === 'rr' && peerAs === asNumber ? [`ipv4 { export where proto = "${EXPORT_PROTOCOL}" || source = RTS_BGP; };`] : []),
    ];
    byName.set(name, `protocol bgp ${name} from calico_peer {\n${options.map((o) => `  ${o}`).join('\n')}\n}\n`);
  }
  if (input.logFile !== undefined && !LOG_PATH.test(input.logFile)) throw new BgpConfigError(`BIRD log file must be an absolute path of letters, digits and . _ - /, got '${input.logFile}'`);
  const logLevels = '{ info, remote, warning, error, auth, fatal, bug }';
  const sessions = [...byName.keys()].sort().map((n) => byName.get(n) ?? '');
  return [
    '# Written by calico-libnetwork from the datastore; changes here are overwritten.',
    `router id ${routerId};`,
    'timeformat protocol iso long;',
    input.logFile === undefined ? `log syslog ${logLevels};` : `log "${input.logFile}" 1000000 "${input.logFile}.old" ${logLevels};`,
    '',
    'protocol device calico_device { scan time 10; }',
    '# Connected subnets, to resolve next hops (never exported: see the filters below).',
    'protocol direct calico_direct { ipv4; }',
    'protocol kernel calico_kernel {',
    '  learn;',
    '  scan time 10;',
    '  ipv4 {',
    '    import where net = 0.0.0.0/0;',
    '    export where source = RTS_BGP;',
    '  };',
    '}',
    '',
    `protocol static ${EXPORT_PROTOCOL} {`,
    '  ipv4;',
    ...announced.map((c) => `  route ${c} blackhole;`),
    '}',
    '',
    'template bgp calico_peer {',
    `  local ${routerId} as ${asNumber};`,
    `  hold time ${timers.holdSeconds};`,
    `  keepalive time ${timers.keepaliveSeconds};`,
    `  connect retry time ${timers.connectRetrySeconds};`,
    `  connect delay time ${timers.connectRetrySeconds};`,
    `  error wait time ${timers.connectRetrySeconds}, ${Math.max(timers.connectRetrySeconds * 6, 30)};`,
    '  ipv4 {',
    '    import all;',
    `    export where proto = "${EXPORT_PROTOCOL}";`,
    '  };',
    '}',
    '',
    ...sessions,
  ].join('\n');
}

function sameSubnet(subnet: Cidr, address: string): boolean {
  return containsIp(subnet, parseIp(address));
}
