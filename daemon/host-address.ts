// This host's address between hosts, per its IP / IP6 setting: the kernel's interfaces and routes
// (dataplane/host-address.ts) and the choice among them (config/host-address.ts).
import {
  type DetectedAddress,
  type HostAddressSetting,
  type IpFamily,
  chooseHostAddress,
  completeHostAddress,
} from '../config/host-address';
import { listInterfaces, routeSource } from '../dataplane/host-address';
import type { NetnsOption } from '../dataplane/veth';
import { ConfigError } from '../lib/errors';

export class NoHostAddressError extends ConfigError {}

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

