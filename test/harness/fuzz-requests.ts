// Fuzzed libnetwork requests (pure: a seeded PRNG and what earlier answers created). Valid-shaped
// bodies for every method of both interfaces, built from the networks, endpoints and addresses the
// plugin has handed out so far, then often mutated (fields dropped, wrong types, huge strings, bad
// CIDRs, addresses and MACs, unknown IDs), serialised as JSON or as something that is not (empty,
// truncated, invalid UTF-8, oversized, deeply nested), with odd content types and methods, sent
// to the right socket or the wrong one. Every address a body can carry that the kernel would
// accept lies in ranges the run reserved: a fuzzed Join must not route anything else to a veth.

import { mulberry32 } from './prng';

/** The same sequence for the same seed on every machine. */
export class Prng {
  readonly next: () => number;
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('pick from nothing');
    return items[this.int(items.length)] as T;
  }
  hex(chars: number): string {
    let s = '';
    for (let i = 0; i < chars; i++) s += '0123456789abcdef'[this.int(16)];
    return s;
  }
  base32(chars: number): string {
    let s = '';
    for (let i = 0; i < chars; i++) s += 'abcdefghijklmnopqrstuvwxyz0123456789'[this.int(36)];
    return s;
  }
}

export const NETWORK_METHODS = [
  'GetCapabilities', 'CreateNetwork', 'DeleteNetwork', 'AllocateNetwork', 'FreeNetwork', 'CreateEndpoint',
  'EndpointOperInfo', 'DeleteEndpoint', 'Join', 'Leave', 'DiscoverNew', 'DiscoverDelete',
  'ProgramExternalConnectivity', 'RevokeExternalConnectivity',
].map((m) => `NetworkDriver.${m}`);
export const IPAM_METHODS = [
  'GetCapabilities', 'GetDefaultAddressSpaces', 'RequestPool', 'ReleasePool', 'RequestAddress', 'ReleaseAddress',
].map((m) => `IpamDriver.${m}`);

/** What the plugin has handed out so far (successful answers), for valid-shaped follow-ups and
 * for the clean-up at the end. */
export interface FuzzState {
  readonly networks: Set<string>;
  /** Endpoint ID -> network ID. */
  readonly endpoints: Map<string, string>;
  /** `PoolID address` (bare address) of every address handed out. */
  readonly addresses: Set<string>;
}

export function emptyState(): FuzzState {
  return { networks: new Set(), endpoints: new Map(), addresses: new Set() };
}

export interface FuzzRanges {
  /** The plugin's IPv4 pool, a /24 (e.g. 198.18.7.0/24). */
  readonly pool: string;
  /** Another reserved /24, in no pool. */
  readonly spare: string;
  /** A /64 of ULA space picked for this run (e.g. fd3a:11:22:33::/64). */
  readonly ipv6: string;
}

export interface FuzzRequest {
  readonly socket: 'network' | 'ipam';
  readonly method: string;
  readonly path: string;
  readonly headers: Record<string, string>;
  readonly body: Buffer;
  /** The body before serialisation (undefined when it was not JSON at all). */
  readonly value: unknown;
  /** What the generator did, for the report of a failing request. */
  readonly how: string;
}

const LOCAL_SPACE = 'CalicoLocalAddressSpace';
const GLOBAL_SPACE = 'CalicoGlobalAddressSpace';

/** Strings no field should take: bad CIDRs, addresses and MACs, odd characters, oversized. */
const BAD_STRINGS: readonly string[] = [
  '', ' ', '0', '-1', 'null', '300.1.1.1', '1.2.3', '1.2.3.4.5', '1.2.3.4/33', '1.2.3.4/-1', '01.2.3.4/32',
  '198.18.0.0/15/1', '::/129', 'fe80::zz', ':::', '1::2::3', '::ffff:300.1.1.1', 'fd00::/64x',
  '0.0.0.0/0', '::/0', 'zz:zz:zz:zz:zz:zz', '02:42:ac:11:00',
  '02:42:ac:11:00:02:03', '02-42-ac-11-00-02', 'ff:ff:ff:ff:ff:ff', 'CalicoPoolIPv4 ', 'calicopoolipv4',
  'global:', 'global:garbage', '../../etc/passwd', '/proc/1/ns/net/../..', 'a/b', '\u0000', 'tab\there',
  'line\nbreak', '\u202e\u0645\u0631\u062d\u0628\u0627', '\ud83d\ude00', '\ud800', '%s%s%n', '${x}', '$(reboot)',
  '; rm -rf /', '`id`', 'x'.repeat(300), 'f'.repeat(65), 'F'.repeat(64), 'g'.repeat(64), '0'.repeat(64),
];

const ODD_VALUES: readonly unknown[] = [null, true, false, 0, -1, 1.5, 1e308, -0, [], [1, 'a'], {}, { a: { b: [] } }, { 'com.docker.network.portmap': [{ HostPort: 80 }] }, '', 'x'];

export class RequestGenerator {
  constructor(
    private readonly r: Prng,
    private readonly ranges: FuzzRanges,
    private readonly state: FuzzState,
  ) {}

  next(): FuzzRequest {
    const r = this.r;
    const socket = r.chance(0.55) ? 'network' : 'ipam';
    const how: string[] = [];
    const own = socket === 'network' ? NETWORK_METHODS : IPAM_METHODS;
    const other = socket === 'network' ? IPAM_METHODS : NETWORK_METHODS;
    const roll = r.next();
    let route: string;
    if (roll < 0.84) route = r.pick(own);
    else if (roll < 0.89) route = r.pick(other);
    else if (roll < 0.94) route = 'Plugin.Activate';
    else route = r.pick(['NetworkDriver.Nope', 'IpamDriver.Nope', 'Plugin.Nope', '', 'NetworkDriver.join', 'IpamDriver.RequestAddress/x', '%ff', 'NetworkDriver.Join%00', '..%2f..%2fetc', 'a'.repeat(3000)]);
    const path = `/${route}`;
    let value: unknown = this.valid(route);
    if (r.chance(0.45)) {
      const n = 1 + r.int(3);
      for (let i = 0; i < n; i++) value = this.mutate(value, how);
    }
    const { body, encoding } = this.serialise(value, how);
    const headers: Record<string, string> = {};
    if (r.chance(0.2)) {
      headers['Content-Type'] = r.pick(['application/json', 'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/json; charset=latin1', 'garbage/;;', '']);
      how.push(`content-type ${JSON.stringify(headers['Content-Type'])}`);
    }
    if (r.chance(0.02)) {
      headers['Content-Encoding'] = r.pick(['gzip', 'deflate', 'br', 'x-unknown']);
      how.push(`content-encoding ${headers['Content-Encoding']}`);
    }
    const method = r.chance(0.95) ? 'POST' : r.pick(['GET', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']);
    if (method !== 'POST') how.push(method);
    return { socket, method, path, headers, body, value: encoding === 'json' ? value : undefined, how: how.join(', ') || 'as generated' };
  }

  // --- valid-shaped bodies -----------------------------------------------------------------

  private known<T>(items: Iterable<T>, fresh: () => T): T {
    const list = [...items];
    return list.length > 0 && this.r.chance(0.85) ? this.r.pick(list) : fresh();
  }

  private networkId(): string {
    return this.known(this.state.networks, () => (this.r.chance(0.8) ? this.r.hex(64) : this.r.base32(25)));
  }

  private endpointId(): { NetworkID: string; EndpointID: string } {
    const list = [...this.state.endpoints];
    if (list.length > 0 && this.r.chance(0.85)) {
      const [EndpointID, NetworkID] = this.r.pick(list);
      return { NetworkID: this.r.chance(0.9) ? NetworkID : this.networkId(), EndpointID };
    }
    return { NetworkID: this.networkId(), EndpointID: this.r.hex(64) };
  }

  /** An IPv4 address of a reserved range (bare). */
  private v4(): string {
    const range = this.r.chance(0.8) ? this.ranges.pool : this.ranges.spare;
    return range.replace(/0\/24$/, String(this.r.int(256)));
  }

  private v6(): string {
    return this.ranges.ipv6.replace(/::\/64$/, `::${this.r.hex(1 + this.r.int(4))}`);
  }

  private handedOut(): { poolId: string; address: string } | undefined {
    const list = [...this.state.addresses];
    if (list.length === 0) return undefined;
    const [poolId = '', address = ''] = this.r.pick(list).split(' ');
    return { poolId, address };
  }

  private poolId(): string {
    const pool = this.ranges.pool;
    return this.r.pick(['CalicoPoolIPv4', 'CalicoPoolIPv4', pool, pool, 'CalicoGlobalPoolIPv4', `global:${pool}`, 'CalicoSwarmNodePoolIPv4', 'CalicoPoolIPv6', this.ranges.spare, this.ranges.ipv6]);
  }

  private ipamData(): Record<string, unknown> {
    return {
      AddressSpace: this.r.pick([LOCAL_SPACE, LOCAL_SPACE, GLOBAL_SPACE, 'null', 'ProbeLocal']),
      Pool: this.r.pick([this.ranges.pool, '0.0.0.0/0', this.ranges.spare]),
      Gateway: this.r.pick(['0.0.0.0/0', '', `${this.v4()}/24`]),
      AuxAddresses: this.r.chance(0.9) ? {} : { x: this.v4() },
    };
  }

  valid(route: string): unknown {
    const r = this.r;
    switch (route) {
      case 'NetworkDriver.CreateNetwork':
      case 'NetworkDriver.AllocateNetwork':
        return {
          NetworkID: r.chance(0.7) ? (r.chance(0.8) ? r.hex(64) : r.base32(25)) : this.networkId(),
          Options: r.pick([{}, { 'com.docker.network.generic': {} }, { 'com.docker.network.enable_ipv6': false }, { 'com.docker.network.generic': { foo: 'bar' } }, { 'com.docker.network.enable_ipv6': true }]),
          IPv4Data: r.chance(0.9) ? [this.ipamData()] : [],
          IPv6Data: r.chance(0.1) ? [{ AddressSpace: LOCAL_SPACE, Pool: this.ranges.ipv6, Gateway: '' }] : [],
        };
      case 'NetworkDriver.DeleteNetwork':
      case 'NetworkDriver.FreeNetwork':
        return { NetworkID: this.networkId() };
      case 'NetworkDriver.CreateEndpoint': {
        const held = this.handedOut();
        const address = held !== undefined && held.address.includes('.') && r.chance(0.6) ? held.address : this.v4();
        return {
          NetworkID: this.networkId(),
          EndpointID: r.chance(0.85) ? r.hex(64) : this.endpointId().EndpointID,
          Options: r.pick([{}, { 'com.docker.network.endpoint.exposedports': [] }, { 'com.docker.network.portmap': [] }]),
          Interface: {
            Address: r.chance(0.9) ? `${address}/32` : '',
            AddressIPv6: r.chance(0.15) ? `${this.v6()}/128` : '',
            MacAddress: r.pick(['', '', `02:42:${r.hex(2)}:${r.hex(2)}:${r.hex(2)}:${r.hex(2)}`]),
          },
        };
      }
      case 'NetworkDriver.EndpointOperInfo':
      case 'NetworkDriver.DeleteEndpoint':
      case 'NetworkDriver.Leave':
      case 'NetworkDriver.RevokeExternalConnectivity':
        return this.endpointId();
      case 'NetworkDriver.Join':
        return {
          ...this.endpointId(),
          SandboxKey: r.pick(['', `/var/run/docker/netns/${r.hex(12)}`, `/var/run/docker/netns/${r.hex(12)}`]),
          Options: {},
        };
      case 'NetworkDriver.ProgramExternalConnectivity':
        return {
          ...this.endpointId(),
          Options: r.pick([{}, { 'com.docker.network.portmap': [] }, { 'com.docker.network.portmap': [{ Proto: 6, IP: '', Port: 80, HostIP: '', HostPort: r.pick([0, 8080]), HostPortEnd: 0 }] }]),
        };
      case 'NetworkDriver.DiscoverNew':
      case 'NetworkDriver.DiscoverDelete':
        return { DiscoveryType: r.pick([1, 2, 7]), DiscoveryData: { Address: '127.0.0.1', BindAddress: '127.0.0.1', Self: true } };
      case 'IpamDriver.RequestPool':
        return {
          AddressSpace: r.pick([LOCAL_SPACE, LOCAL_SPACE, GLOBAL_SPACE, 'ProbeLocal']),
          Pool: r.pick(['', '', this.ranges.pool, this.ranges.spare, '0.0.0.0/0', '::/0', this.ranges.ipv6]),
          SubPool: r.chance(0.9) ? '' : this.ranges.pool,
          Options: r.chance(0.9) ? {} : { 'com.docker.network.ipam.serial': 'true' },
          V6: r.chance(0.1),
        };
      case 'IpamDriver.ReleasePool':
        return { PoolID: this.poolId() };
      case 'IpamDriver.RequestAddress': {
        const held = this.handedOut();
        const address = held !== undefined && r.chance(0.2) ? held.address : r.chance(0.5) ? '' : this.v4();
        return {
          PoolID: held !== undefined && r.chance(0.2) ? held.poolId : this.poolId(),
          Address: address,
          Options: r.pick([{}, {}, { RequestAddressType: 'com.docker.network.gateway' }, { 'com.docker.network.endpoint.macaddress': 'AkKsEQAC' }]),
        };
      }
      case 'IpamDriver.ReleaseAddress': {
        const held = this.handedOut();
        if (held !== undefined && r.chance(0.5)) return { PoolID: r.chance(0.9) ? held.poolId : this.poolId(), Address: held.address };
        return { PoolID: this.poolId(), Address: this.v4() };
      }
      default:
        // GetCapabilities, GetDefaultAddressSpaces, Plugin.Activate, unknown paths: Docker sends
        // nothing; anything else must be ignored or refused.
        return r.chance(0.7) ? {} : r.pick(ODD_VALUES);
    }
  }

  // --- mutations -----------------------------------------------------------------------------

  /** Paths to every field (objects and arrays, recursively). */
  private fields(value: unknown, prefix: (string | number)[] = []): (string | number)[][] {
    if (typeof value !== 'object' || value === null) return [];
    const entries: [string | number, unknown][] = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
    return entries.flatMap(([k, v]) => [[...prefix, k], ...this.fields(v, [...prefix, k])]);
  }

  private mutate(value: unknown, how: string[]): unknown {
    const r = this.r;
    const fields = this.fields(value);
    if (fields.length === 0 || r.chance(0.08)) {
      const v = r.pick([...ODD_VALUES, r.pick(BAD_STRINGS)]);
      how.push(`body ${short(v)}`);
      return v;
    }
    const copy = structuredClone(value) as Record<string | number, unknown>;
    const path = r.pick(fields);
    const last = path[path.length - 1] as string | number;
    let parent: Record<string | number, unknown> = copy;
    for (const k of path.slice(0, -1)) parent = parent[k] as Record<string | number, unknown>;
    const name = path.join('.');
    const kind = r.int(6);
    if (kind === 0) {
      delete parent[last];
      how.push(`drop ${name}`);
    } else if (kind === 1) {
      parent[last] = r.pick(ODD_VALUES);
      how.push(`${name}=${short(parent[last])}`);
    } else if (kind === 2 || kind === 3) {
      parent[last] = r.pick(BAD_STRINGS);
      how.push(`${name}=${short(parent[last])}`);
    } else if (kind === 4) {
      parent[last] = 'x'.repeat(r.pick([1024, 16_000, 60_000]));
      how.push(`${name}=<huge string>`);
    } else if (Array.isArray(parent)) {
      parent.push(r.pick(ODD_VALUES));
      how.push(`extra item in ${path.slice(0, -1).join('.') || 'body'}`);
    } else {
      // Defined, not assigned: `__proto__` must become a field of the JSON, as JSON.parse makes it.
      Object.defineProperty(parent, r.pick(['Extra', '__proto__', 'constructor', 'NetworkID', 'PoolID']), { value: r.pick([...ODD_VALUES, r.hex(64)]), enumerable: true, configurable: true, writable: true });
      how.push('extra field');
    }
    return copy;
  }

  // --- serialisation ---------------------------------------------------------------------------

  private serialise(value: unknown, how: string[]): { body: Buffer; encoding: 'json' | 'raw' } {
    const r = this.r;
    const json = JSON.stringify(value) ?? '';
    const roll = r.next();
    if (roll < 0.84) return { body: Buffer.from(json), encoding: 'json' };
    let body: Buffer;
    if (roll < 0.87) {
      body = Buffer.alloc(0);
      how.push('empty body');
    } else if (roll < 0.9) {
      body = Buffer.from(r.pick(['not json', '{', '}', '{"NetworkID":', "{'a':1}", 'NaN', '\u0000\u0001', '<xml/>', 'NetworkID=abc', '{"a":1}{"b":2}', '\ufeff{}']));
      how.push('not JSON');
    } else if (roll < 0.93) {
      body = Buffer.from(json.slice(0, r.int(json.length)));
      how.push('truncated JSON');
    } else if (roll < 0.97) {
      // Invalid UTF-8 inside a string value (or anywhere, if there is none).
      const bad = r.pick([[0xff], [0xc3, 0x28], [0xe2, 0x82], [0xed, 0xa0, 0x80], [0xf8, 0x88, 0x80, 0x80, 0x80]]);
      const text = Buffer.from(json);
      const at = Math.max(0, json.indexOf('"', 1) + 1);
      body = Buffer.concat([text.subarray(0, at), Buffer.from(bad), text.subarray(at)]);
      how.push('invalid UTF-8');
    } else if (roll < 0.985) {
      body = Buffer.from(`{"NetworkID":"${'a'.repeat(70 * 1024)}"}`);
      how.push('oversized body');
    } else {
      const depth = r.pick([1000, 100_000]);
      body = Buffer.from(`${'['.repeat(depth)}${']'.repeat(depth)}`);
      how.push(`nested ${depth} deep`);
    }
    return { body, encoding: 'raw' };
  }
}

function short(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 40 ? `${s.slice(0, 40)}...` : s;
}
