// Reads what host-address detection needs from the kernel: the interfaces with their addresses
// (`ip -j addr show`) and, for can-reach, the source address of the route to a destination
// (`ip -j route get`, which asks the routing table and sends no packet).
import {
  type DetectedAddress,
  type HostAddressSetting,
  type InterfaceAddresses,
  type IpFamily,
  chooseHostAddress,
  completeHostAddress,
} from '../config/host-address';
import { ConfigError, DataplaneError, errorMessage } from '../lib/errors';
import { run } from './exec';
import { assertNetnsName } from './names';
import type { NetnsOption } from './veth';

export class NoHostAddressError extends ConfigError {}

interface IpAddrJson {
  ifname?: string;
  flags?: string[];
  addr_info?: Array<{ local?: string; prefixlen?: number; scope?: string }>;
}

interface IpRouteJson {
  dev?: string;
  prefsrc?: string;
}

/** The host's address for `family` per its setting; undefined for 'none'. Detection that finds
 * nothing is a NoHostAddressError: the caller decides whether a host without an address between
 * hosts can go on (a single host can). */
export async function detectHostAddress(
  setting: HostAddressSetting,
  family: IpFamily,
  opts: NetnsOption = {},
): Promise<DetectedAddress | undefined> {
  if (setting.kind === 'none') return undefined;
  const interfaces = await listInterfaces(opts);
  if (setting.kind === 'address') {
    return setting.prefix === undefined
      ? completeHostAddress(interfaces, setting.address, family)
      : { cidr: `${setting.address}/${setting.prefix}`, interface: undefined };
  }
  const method = setting.method;
  const source = method.kind === 'can-reach' ? await routeSource(method.destination, opts) : undefined;
  const found = chooseHostAddress(interfaces, family, method, source);
  if (found === undefined) {
    const name = family === 4 ? 'IP_AUTODETECTION_METHOD' : 'IP6_AUTODETECTION_METHOD';
    throw new NoHostAddressError(
      `no IPv${family} address found for this host with ${name}=${describe(setting)}; set ${family === 4 ? 'IP' : 'IP6'} to the address, another method, or 'none'`,
    );
  }
  return found;
}

function describe(setting: Extract<HostAddressSetting, { kind: 'autodetect' }>): string {
  const m = setting.method;
  switch (m.kind) {
    case 'first-found':
      return 'first-found';
    case 'interface':
    case 'skip-interface':
      return `${m.kind}=${m.pattern.source}`;
    case 'can-reach':
      return `can-reach=${m.destination}`;
  }
}

export async function listInterfaces(opts: NetnsOption = {}): Promise<InterfaceAddresses[]> {
  const { stdout } = await run('ip', [...ns(opts), '-j', 'addr', 'show'], 'list host addresses');
  return (parse<IpAddrJson[]>(stdout, 'list host addresses') ?? []).map((i) => ({
    name: i.ifname ?? '',
    up: (i.flags ?? []).includes('UP'),
    addresses: (i.addr_info ?? []).flatMap((a) =>
      a.local === undefined || a.prefixlen === undefined ? [] : [{ address: a.local, prefix: a.prefixlen, scope: a.scope ?? '' }],
    ),
  }));
}

async function routeSource(destination: string, opts: NetnsOption): Promise<{ address: string; interface: string } | undefined> {
  try {
    const { stdout } = await run('ip', [...ns(opts), '-j', 'route', 'get', destination], `find the route to ${destination}`);
    const r = parse<IpRouteJson[]>(stdout, `find the route to ${destination}`)?.[0];
    return r?.prefsrc === undefined || r.dev === undefined ? undefined : { address: r.prefsrc, interface: r.dev };
  } catch (err) {
    if (err instanceof DataplaneError) return undefined; // no route: nothing can reach it
    throw err;
  }
}

function ns(opts: NetnsOption): string[] {
  return opts.netns === undefined ? [] : ['-n', assertNetnsName(opts.netns)];
}

function parse<T>(text: string, op: string): T | undefined {
  try {
    return JSON.parse(text === '' ? 'null' : text) as T;
  } catch (err) {
    throw new DataplaneError(`${op}: unexpected output from ip: ${errorMessage(err)}`, { cause: err });
  }
}
