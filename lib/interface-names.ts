// Linux network interface names: what the kernel accepts, checked before a name reaches a kernel
// tool (dataplane/) or an iptables rule that matches it (policy/).

import { InvalidRequestError } from './errors.js';

/** IFNAMSIZ is 16 including the terminating NUL. */
export const MAX_IF_NAME_LENGTH = 15;

const IF_NAME_RE = /^[A-Za-z0-9_.-]{1,15}$/;

export function isValidIfName(name: string): boolean {
  return IF_NAME_RE.test(name) && name !== '.' && name !== '..';
}

export function assertIfName(name: string, what = 'interface name'): string {
  if (typeof name !== 'string' || !isValidIfName(name)) {
    throw new InvalidRequestError(
      `invalid ${what} ${JSON.stringify(name)}: expected 1-${MAX_IF_NAME_LENGTH} characters of ` +
        `A-Z a-z 0-9 _ . - (not "." or "..")`,
    );
  }
  return name;
}
