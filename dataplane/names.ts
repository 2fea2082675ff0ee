// Pure naming and validation for the dataplane. Interface names are derived from the endpoint ID so
// Leave/DeleteEndpoint find the veth without stored state, and every name or address is checked
// here (interface names by lib/interface-names.ts) before it can reach a kernel tool.

import { isIPv4, isIPv6 } from 'node:net';
import { InvalidRequestError } from '../lib/errors.js';
import { assertIfName } from '../lib/interface-names.js';

export const TEMP_PEER_PREFIX = 'tmp';
/** Characters of the endpoint ID used in interface names (Calico's convention). */
export const ENDPOINT_ID_CHARS = 11;

const ENDPOINT_ID_RE = /^[0-9a-fA-F]{12,256}$/;
const MAC_RE = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;

/** Docker endpoint IDs are 64 hex characters; at least 12 are required here. */
export function isValidEndpointId(id: string): boolean {
  return typeof id === 'string' && ENDPOINT_ID_RE.test(id);
}

export function assertEndpointId(id: string): string {
  if (!isValidEndpointId(id)) {
    throw new InvalidRequestError(
      `invalid endpoint ID ${JSON.stringify(id)}: expected at least 12 hexadecimal characters`,
    );
  }
  return id;
}

/** Host end of the veth: prefix + first 11 characters of the endpoint ID (lower-cased, so the
 * same ID always maps to the same name). */
export function hostVethName(prefix: string, endpointId: string): string {
  assertEndpointId(endpointId);
  const name = prefix + endpointId.slice(0, ENDPOINT_ID_CHARS).toLowerCase();
  return assertIfName(name, `host interface name (prefix ${JSON.stringify(prefix)})`);
}

/** Container end while it still lives in the host namespace (Docker renames it when it moves it).
 * Distinct from any `cali` host name because the prefix differs. */
export function tempPeerName(endpointId: string): string {
  assertEndpointId(endpointId);
  return TEMP_PEER_PREFIX + endpointId.slice(0, ENDPOINT_ID_CHARS).toLowerCase();
}

export function isValidMac(mac: string): boolean {
  return typeof mac === 'string' && MAC_RE.test(mac);
}

/** A unicast MAC in colon form; multicast (low bit of the first octet) is refused by the kernel
 * for a veth anyway, but say so clearly. */
export function assertUnicastMac(mac: string): string {
  if (!isValidMac(mac)) {
    throw new InvalidRequestError(`invalid MAC address ${JSON.stringify(mac)}`);
  }
  if ((parseInt(mac.slice(0, 2), 16) & 1) === 1) {
    throw new InvalidRequestError(`MAC address ${mac} is multicast; a unicast address is required`);
  }
  return mac.toLowerCase();
}

export interface HostAddress {
  family: 4 | 6;
  /** The bare address, as given (no prefix). */
  address: string;
  /** The host route's destination: address/32 or address/128. */
  cidr: string;
}

/**
 * Parse a container address for a host route. Accepts a bare address or one with a full-length
 * prefix (/32, /128), which is how our IPAM hands them out. Zone IDs (`fe80::1%eth0`) are refused.
 */
export function parseHostAddress(value: string, family?: 4 | 6): HostAddress {
  if (typeof value !== 'string') {
    throw new InvalidRequestError(`invalid IP address ${JSON.stringify(value)}`);
  }
  const slash = value.indexOf('/');
  const address = slash === -1 ? value : value.slice(0, slash);
  const prefix = slash === -1 ? undefined : value.slice(slash + 1);
  let fam: 4 | 6;
  if (isIPv4(address)) fam = 4;
  else if (isIPv6(address) && !address.includes('%')) fam = 6;
  else throw new InvalidRequestError(`invalid IP address ${JSON.stringify(value)}`);
  if (family !== undefined && fam !== family) {
    throw new InvalidRequestError(`${value} is not an IPv${family} address`);
  }
  const full = fam === 4 ? '32' : '128';
  if (prefix !== undefined && prefix !== full) {
    throw new InvalidRequestError(
      `container address ${value} must be a single address (/${full}) for a host route`,
    );
  }
  return { family: fam, address, cidr: `${address}/${full}` };
}

const NETNS_NAME_RE = /^[A-Za-z0-9_.-]{1,64}$/;

/** Names of `ip netns` namespaces (files under /run/netns). */
export function assertNetnsName(name: string): string {
  if (typeof name !== 'string' || !NETNS_NAME_RE.test(name) || name === '.' || name === '..') {
    throw new InvalidRequestError(`invalid network namespace name ${JSON.stringify(name)}`);
  }
  return name;
}

/** The file of an `ip netns` namespace. */
export function netnsPathOf(name: string): string {
  return `/run/netns/${assertNetnsName(name)}`;
}

const NETNS_PATH_RE = /^(\/[A-Za-z0-9_.:-]{1,255}){1,16}$/;

/** A workload's network namespace file (Docker's SandboxKey, e.g. /var/run/docker/netns/1f2e3d;
 * CNI's netns): absolute, plain path characters, no `.` or `..` segments. */
export function assertNetnsPath(path: string): string {
  if (typeof path !== 'string' || path.length > 1024 || !NETNS_PATH_RE.test(path) || path.split('/').some((s) => s === '.' || s === '..')) {
    throw new InvalidRequestError(`invalid network namespace path ${JSON.stringify(path)}: expected an absolute path such as /var/run/docker/netns/<id>`);
  }
  return path;
}
