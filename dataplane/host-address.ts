// Reads what host-address detection needs from the kernel: the interfaces with their addresses
// (`ip -j addr show`) and the source address of the route to a destination (`ip -j route get`,
// which asks the routing table and sends no packet). The choice is config/host-address.ts's.
import { DataplaneError, errorMessage } from '../lib/errors';
import { run } from './exec';
import { assertNetnsName } from './names';
import type { NetnsOption } from './veth';

/** An interface and its addresses, as `ip -j addr show` reports them (the fields used here). */
export interface InterfaceAddresses {
  readonly name: string;
  readonly up: boolean;
  readonly addresses: ReadonlyArray<{ readonly address: string; readonly prefix: number; readonly scope: string }>;
}

interface IpAddrJson {
  ifname?: string;
  flags?: string[];
  addr_info?: Array<{ local?: string; prefixlen?: number; scope?: string }>;
}

interface IpRouteJson {
  dev?: string;
  prefsrc?: string;
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

/** Source address and interface of the route to `destination`; undefined when there is none. */
export async function routeSource(destination: string, opts: NetnsOption): Promise<{ address: string; interface: string } | undefined> {
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
