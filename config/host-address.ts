// This host's own address on the network between hosts: other hosts route to its containers via
// it. Calico's settings and detection methods, pure: parsing the environment, and choosing among
// the interfaces the kernel reports (dataplane/host-address.ts reads them).
//
//   IP / IP6                     an address (optionally with its prefix), 'autodetect', or 'none'
//                                (defaults: IP=autodetect, IP6=none)
//   IP_AUTODETECTION_METHOD /    first-found (default), interface=<regex>, skip-interface=<regex>,
//   IP6_AUTODETECTION_METHOD     can-reach=<address>
import { isIP } from 'node:net';
import type { InterfaceAddresses } from '../dataplane/host-address';
import { ConfigError } from '../lib/errors';

export type { InterfaceAddresses };

export type IpFamily = 4 | 6;

export type AutodetectMethod =
  | { readonly kind: 'first-found' }
  | { readonly kind: 'interface'; readonly pattern: RegExp }
  | { readonly kind: 'skip-interface'; readonly pattern: RegExp }
  | { readonly kind: 'can-reach'; readonly destination: string };

export type HostAddressSetting =
  | { readonly kind: 'none' }
  | { readonly kind: 'address'; readonly address: string; readonly prefix?: number }
  | { readonly kind: 'autodetect'; readonly method: AutodetectMethod };

export interface DetectedAddress {
  /** address/prefix, the prefix being the subnet of the interface that holds it. */
  readonly cidr: string;
  readonly interface: string | undefined;
}

/** Interfaces that are never the host's address on the network between hosts (Calico's list, plus
 * this plugin's own veth prefix, passed in). */
const NOT_HOST_INTERFACES = /^(lo|docker.*|cbr.*|dummy.*|virbr.*|lxcbr.*|veth.*|cali.*|tunl.*|flannel.*|kube-ipvs.*|cni.*|vxlan.*|br-.*|lxc.*|nodelocaldns.*)$/;

type Env = Readonly<Record<string, string | undefined>>;

export function parseHostAddressSetting(env: Env, family: IpFamily): HostAddressSetting {
  const name = family === 4 ? 'IP' : 'IP6';
  const methodName = family === 4 ? 'IP_AUTODETECTION_METHOD' : 'IP6_AUTODETECTION_METHOD';
  const raw = env[name]?.trim() ?? '';
  const setting = raw === '' ? (family === 4 ? 'autodetect' : 'none') : raw;
  const methodRaw = env[methodName]?.trim() ?? '';
  if (setting.toLowerCase() === 'none') return { kind: 'none' };
  if (setting.toLowerCase() === 'autodetect') return { kind: 'autodetect', method: parseMethod(methodName, methodRaw) };
  const slash = setting.indexOf('/');
  const address = slash < 0 ? setting : setting.slice(0, slash);
  const prefixText = slash < 0 ? undefined : setting.slice(slash + 1);
  const bits = family === 4 ? 32 : 128;
  const prefix = prefixText === undefined ? undefined : Number(prefixText);
  if (isIP(address) !== family || (prefix !== undefined && (!/^\d{1,3}$/.test(prefixText ?? '') || prefix > bits))) {
    throw new ConfigError(`${name} must be an IPv${family} address (optionally with /prefix), 'autodetect' or 'none', got '${setting}'`);
  }
  return prefix === undefined ? { kind: 'address', address } : { kind: 'address', address, prefix };
}

function parseMethod(name: string, raw: string): AutodetectMethod {
  if (raw === '' || raw === 'first-found') return { kind: 'first-found' };
  const eq = raw.indexOf('=');
  const kind = eq < 0 ? raw : raw.slice(0, eq);
  const arg = eq < 0 ? '' : raw.slice(eq + 1);
  const regex = (): RegExp => {
    try {
      if (arg === '') throw new Error('empty');
      return new RegExp(arg);
    } catch {
      throw new ConfigError(`${name}: '${kind}=' needs a valid regular expression, got '${arg}'`);
    }
  };
  switch (kind) {
    case 'interface':
      return { kind, pattern: regex() };
    case 'skip-interface':
      return { kind, pattern: regex() };
    case 'can-reach':
      if (isIP(arg) === 0) throw new ConfigError(`${name}: 'can-reach=' needs an IP address, got '${arg}'`);
      return { kind, destination: arg };
    default:
      throw new ConfigError(
        `${name} must be first-found, interface=<regex>, skip-interface=<regex> or can-reach=<address>, got '${raw}'`,
      );
  }
}

/** The address `method` picks among `interfaces` (in the kernel's order). can-reach is decided by
 * the kernel's route lookup, so here it only completes the prefix of the address it chose. */
export function chooseHostAddress(
  interfaces: readonly InterfaceAddresses[],
  family: IpFamily,
  method: AutodetectMethod,
  routeSource?: { readonly address: string; readonly interface: string },
): DetectedAddress | undefined {
  if (method.kind === 'can-reach') {
    return routeSource === undefined ? undefined : withPrefix(interfaces, routeSource.address, family) ?? { cidr: `${routeSource.address}/${family === 4 ? 32 : 128}`, interface: routeSource.interface };
  }
  const usable = (i: InterfaceAddresses): boolean => {
    switch (method.kind) {
      case 'interface':
        return method.pattern.test(i.name);
      case 'skip-interface':
        return !method.pattern.test(i.name) && !NOT_HOST_INTERFACES.test(i.name);
      case 'first-found':
        return !NOT_HOST_INTERFACES.test(i.name);
    }
  };
  for (const i of interfaces) {
    if (!i.up || !usable(i)) continue;
    const a = i.addresses.find((x) => isIP(x.address) === family && x.scope === 'global');
    if (a !== undefined) return { cidr: `${a.address}/${a.prefix}`, interface: i.name };
  }
  return undefined;
}

/** A configured address with the prefix of the interface holding it (or a host prefix if no
 * interface does: the address may be a NAT's, as on some clouds). */
export function completeHostAddress(interfaces: readonly InterfaceAddresses[], address: string, family: IpFamily): DetectedAddress {
  return withPrefix(interfaces, address, family) ?? { cidr: `${address}/${family === 4 ? 32 : 128}`, interface: undefined };
}

function withPrefix(interfaces: readonly InterfaceAddresses[], address: string, family: IpFamily): DetectedAddress | undefined {
  for (const i of interfaces) {
    const a = i.addresses.find((x) => isIP(x.address) === family && x.address === address);
    if (a !== undefined) return { cidr: `${a.address}/${a.prefix}`, interface: i.name };
  }
  return undefined;
}
