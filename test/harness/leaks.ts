// What a test needs to show that nothing is left behind: a pool of its own, the traces of a plugin
// (endpoint records, allocations, veths, host routes; chains and ipsets), and removing every
// container of a dockerd. Shared by the crash tests (test/e2e/reconcile.test.ts, reboot.test.ts).
import type Docker from 'dockerode';
import { run } from '../../dataplane/exec';
import { calicoctl, linksWithPrefix, type Plugin } from './plugin';
import { reserveTestSubnet } from './test-subnets';

/** A pool of its own (reserved: test files running at once never share one). */
export async function testPool(): Promise<{ cidr: string; prefix: string }> {
  const cidr = await reserveTestSubnet();
  return { cidr, prefix: cidr.replace('0/24', '') };
}

export interface Traces {
  readonly endpoints: number;
  readonly addresses: string[];
  readonly veths: string[];
  readonly routes: string[];
}

export async function traces(p: Plugin, poolPrefix: string): Promise<Traces> {
  const eps = await calicoctl(p, ['endpoint', 'list', '-o', 'json']);
  if (eps.code !== 0) throw new Error(eps.stderr);
  const ipam = await calicoctl(p, ['ipam', 'show', '-o', 'json']);
  if (ipam.code !== 0) throw new Error(ipam.stderr);
  const blocks = JSON.parse(ipam.stdout) as { allocations: { ip: string }[] }[];
  const { stdout } = await run('ip', ['-j', '-4', 'route', 'show'], 'list routes');
  const routes = (JSON.parse(stdout || '[]') as { dst: string }[]).map((r) => r.dst)
    // Host routes to containers (ip prints them without a prefix); not the block's own route.
    .filter((d) => d.startsWith(poolPrefix) && !d.includes('/'));
  return {
    endpoints: (JSON.parse(eps.stdout) as unknown[]).length,
    addresses: blocks.flatMap((b) => b.allocations.map((a) => a.ip)),
    veths: await linksWithPrefix(p.ifPrefix),
    routes,
  };
}

export const clean = (x: Traces): boolean => x.endpoints === 0 && x.addresses.length === 0 && x.veths.length === 0 && x.routes.length === 0;

export async function removeAllContainers(docker: Docker): Promise<void> {
  const all = await docker.listContainers({ all: true });
  await Promise.all(all.map((x) => docker.getContainer(x.Id).remove({ force: true }).catch(() => undefined)));
}

/** This plugin's chains (IPv4 and IPv6) and ipsets, by name: what must be back to the baseline
 * once every container and network is gone. */
export async function kernelObjects(p: Plugin): Promise<string[]> {
  const names: string[] = [];
  for (const tool of ['iptables-save', 'ip6tables-save']) {
    const { stdout } = await run(tool, [], `read ${tool}`);
    for (const line of stdout.split('\n')) if (line.startsWith(`:${p.chainPrefix}`)) names.push(`${tool} ${line.slice(1).split(' ')[0] ?? ''}`);
  }
  const { stdout } = await run('ipset', ['list', '-n'], 'list ipsets');
  names.push(...stdout.split('\n').filter((n) => n.startsWith(p.chainPrefix)).map((n) => `ipset ${n}`));
  return names.sort();
}
