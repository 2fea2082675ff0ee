// Throwaway network namespaces for tests. Names are unique per run (pid + random suffix) so
// concurrent runs never collide. A registry deletes everything it created at teardown, and a
// process 'exit' hook deletes whatever is still left if a test process ends without teardown.

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { run, type ExecOptions, type ExecResult } from '../../dataplane/exec.js';
import { assertNetnsName } from '../../dataplane/names.js';
import { CONTAINER_GATEWAY_V4, ensureHostForwarding } from '../../dataplane/veth.js';

const live = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const ns of live) {
      try {
        execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      } catch {
        // Last resort only; nothing more to do.
      }
    }
  });
}

/** A unique name: `<prefix>-<pid>-<6 hex>`. */
export function uniqueName(prefix: string): string {
  return assertNetnsName(`${prefix}-${process.pid}-${randomBytes(3).toString('hex')}`);
}

/** Create a namespace with `lo` up. */
export async function createNetns(prefix = 'ctest'): Promise<string> {
  installExitHook();
  const name = uniqueName(prefix);
  await run('ip', ['netns', 'add', name], `create netns ${name}`);
  live.add(name);
  try {
    await run('ip', ['-n', name, 'link', 'set', 'dev', 'lo', 'up'], `bring up lo in ${name}`);
  } catch (err) {
    await deleteNetns(name);
    throw err;
  }
  return name;
}

/** Delete a namespace; success if it is already gone. */
export async function deleteNetns(name: string): Promise<void> {
  assertNetnsName(name);
  try {
    await run('ip', ['netns', 'del', name], `delete netns ${name}`);
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr ?? '';
    if (!/No such file or directory/.test(stderr)) throw err;
  }
  live.delete(name);
}

/** Run `file args...` inside the namespace (`ip netns exec`). */
export function execInNetns(
  name: string,
  file: string,
  args: readonly string[],
  options: ExecOptions = {},
): Promise<ExecResult> {
  assertNetnsName(name);
  return run('ip', ['netns', 'exec', name, file, ...args], `${file} in netns ${name}`, options);
}

/** `ip -n <ns> args...` */
export function ipIn(name: string, args: readonly string[], options: ExecOptions = {}): Promise<ExecResult> {
  assertNetnsName(name);
  return run('ip', ['-n', name, ...args], `ip ${args.join(' ')} in netns ${name}`, options);
}

/** Namespaces created through one registry, deleted together. */
export class NetnsRegistry {
  private readonly names: string[] = [];

  async create(prefix = 'ctest'): Promise<string> {
    const name = await createNetns(prefix);
    this.names.push(name);
    return name;
  }

  /** Delete all, collecting failures so one stuck namespace does not leave the rest. */
  async deleteAll(): Promise<void> {
    const errors: unknown[] = [];
    while (this.names.length > 0) {
      const name = this.names.pop();
      if (name === undefined) break;
      try {
        await deleteNetns(name);
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length > 0) throw new AggregateError(errors, 'failed to delete test namespaces');
  }
}

/** A registry whose namespaces are deleted when the test ends, passed or failed (ava's teardown). */
export function netnsRegistry(t: { teardown(fn: () => Promise<void> | void): void }): NetnsRegistry {
  const reg = new NetnsRegistry();
  t.teardown(() => reg.deleteAll());
  return reg;
}

/** The "host" of namespace tests: lo carries HOST_V4/HOST_V6, an uplink veth pair carries the
 * default routes (proxy ARP answers only for targets routed out of another interface), and
 * forwarding is on. */
export const HOST_V4 = '10.64.0.1';
export const HOST_V6 = 'fd64::1';

export async function makeRoutedHost(reg: NetnsRegistry, prefix: string): Promise<string> {
  const h = await reg.create(prefix);
  await ipIn(h, ['link', 'add', 'upl0', 'type', 'veth', 'peer', 'name', 'upl1']);
  await ipIn(h, ['link', 'set', 'dev', 'upl0', 'up']);
  await ipIn(h, ['link', 'set', 'dev', 'upl1', 'up']);
  await ipIn(h, ['addr', 'add', `${HOST_V4}/32`, 'dev', 'lo']);
  await ipIn(h, ['-6', 'addr', 'add', `${HOST_V6}/128`, 'dev', 'lo', 'nodad']);
  await ipIn(h, ['route', 'add', 'default', 'dev', 'upl0']);
  await ipIn(h, ['-6', 'route', 'add', 'default', 'dev', 'upl0']);
  await ensureHostForwarding({ ipv6: true }, { netns: h });
  return h;
}

/** Does what Docker does after Join: moves the container end of the veth from the host namespace
 * into a new "container" namespace as eth0 and applies the address and routes Join answered
 * (gateway 169.254.1.1, or `gatewayV4`, on-link; IPv6 via the host end's link-local address). */
export async function plumbContainer(
  reg: NetnsRegistry,
  hostNs: string,
  peerIf: string,
  addrs: { v4?: string; v6?: string; gatewayIPv6?: string; gatewayV4?: string },
  prefix: string,
): Promise<string> {
  const c = await reg.create(prefix);
  await ipIn(hostNs, ['link', 'set', 'dev', peerIf, 'netns', c, 'name', 'eth0']);
  await ipIn(c, ['link', 'set', 'dev', 'eth0', 'up']);
  if (addrs.v4 !== undefined) {
    await ipIn(c, ['addr', 'add', `${addrs.v4}/32`, 'dev', 'eth0']);
    const gateway = addrs.gatewayV4 ?? CONTAINER_GATEWAY_V4;
    await ipIn(c, ['route', 'add', gateway, 'dev', 'eth0', 'scope', 'link']);
    await ipIn(c, ['route', 'add', 'default', 'via', gateway, 'dev', 'eth0']);
  }
  if (addrs.v6 !== undefined && addrs.gatewayIPv6 !== undefined) {
    await ipIn(c, ['-6', 'addr', 'add', `${addrs.v6}/128`, 'dev', 'eth0', 'nodad']);
    await ipIn(c, ['-6', 'route', 'add', 'default', 'via', addrs.gatewayIPv6, 'dev', 'eth0']);
  }
  return c;
}
