// What multi-host tests look at: the routes the plugin wrote on a host, and bounded waits for a
// condition or a ping to come true (the agents follow the datastore within well under a second;
// the bounds are generous because the machine is small and shared).
import type Docker from 'dockerode';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { EtcdStore } from '../../datastore/etcd-store.js';
import { Keys } from '../../datastore/keys.js';
import { Allocator } from '../../ipam/allocator.js';
import { exec } from './containers.js';
import type { Cluster, Host } from './multihost.js';

const BLOCK_ROUTE_TIMEOUT_MS = 15_000;

/** CALICO_ROUTE_PROTOCOL's default: the hosts of the harness run the plugin with default settings. */
export const ROUTE_PROTOCOL = '80';

/** A route as `ip -j route` reports it (the fields tests look at). */
export interface KernelRoute {
  dst: string;
  gateway?: string;
  type?: string;
  dev?: string;
  flags?: string[];
}

/** The IPv4 routes the host's plugin wrote. */
export async function ourRoutes(h: Host): Promise<KernelRoute[]> {
  return JSON.parse((await h.run(['ip', '-j', '-4', 'route', 'show', 'proto', ROUTE_PROTOCOL])).stdout || '[]') as KernelRoute[];
}

/** Polls `probe` until it returns a value; throws after `timeoutMs`. */
export async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(200);
  }
}

/** Pings until one reply (a new container's policy is in the kernel ~60 ms after its start) or
 * the deadline; returns the last attempt. */
export async function pingUntil(container: Docker.Container, target: string, timeoutMs = 10_000): Promise<{ code: number; output: string }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await exec(container, ['ping', '-c', '1', '-W', '1', target]);
    if (r.code === 0 || Date.now() > deadline) return r;
    await sleep(100);
  }
}

/** What a listener started as `nc -ll -p <port> -e netstat -tn` (busybox) answers each connection
 * with: the netstat of its namespace, which lists the connection it accepted. */
export function sourceReporter(port: number, busybox = false): string[] {
  const prefix = busybox ? ['busybox'] : [];
  return [...prefix, 'nc', '-ll', '-p', String(port), '-e', ...prefix, 'netstat', '-tn'];
}

/** The peer of the connection accepted on local `port`, from a sourceReporter's answer: the
 * address alone (IPv4-mapped IPv6 unwrapped); undefined if no open connection on that port is
 * listed. Connections already closing on the listener's side (earlier clients) do not count. */
export function acceptedPeer(netstat: string, port: number): string | undefined {
  for (const line of netstat.split('\n')) {
    const [proto, , , local, foreign, state] = line.trim().split(/\s+/);
    if (proto?.startsWith('tcp') !== true || local === undefined || foreign === undefined) continue;
    if (!local.endsWith(`:${port}`) || (state !== 'ESTABLISHED' && state !== 'CLOSE_WAIT')) continue;
    const address = foreign.slice(0, foreign.lastIndexOf(':'));
    return address.startsWith('::ffff:') ? address.slice('::ffff:'.length) : address;
  }
  return undefined;
}

/** Connects from the container to a sourceReporter until it answers (a new container's policy,
 * a new route), or the deadline; `peer` is the source address the listener saw. */
export async function sourceSeenBy(container: Docker.Container, address: string, port: number, timeoutMs = 10_000): Promise<{ peer: string | undefined; output: string }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await exec(container, ['nc', '-w', '2', address, String(port)]);
    const peer = acceptedPeer(r.output, port);
    if (peer !== undefined || Date.now() > deadline) return { peer, output: r.output };
    await sleep(200);
  }
}

/** Benchmarks: `runs` times, an allocator acting as `claimer` claims a fresh block (one address in
 * it) and the time until `watcher`'s kernel routes it (protocol `proto`, polled every 10 ms) is
 * recorded; the address is released again. */
export async function blockRouteLags(cluster: Cluster, claimer: Host, watcher: Host, proto: string, runs: number): Promise<number[]> {
  const etcd = await EtcdStore.open({ endpoints: cluster.etcd.endpoints });
  const allocator = new Allocator({ store: etcd, keys: new Keys(cluster.datastorePrefix), node: claimer.name });
  const lags: number[] = [];
  try {
    for (let i = 0; i < runs; i++) {
      const ip = `198.19.${100 + i}.1`;
      const claimed = await allocator.assignIp({ ip, owner: { handle: `bench-${i}`, kind: 'reserved' } });
      const written = performance.now();
      for (;;) {
        const routes = (await watcher.run(['ip', 'route', 'show', claimed.block, 'proto', proto])).stdout;
        if (routes.includes('via')) break;
        if (performance.now() - written > BLOCK_ROUTE_TIMEOUT_MS) {
          throw new Error(`${watcher.name} has no route to ${claimed.block} (proto ${proto}) after ${BLOCK_ROUTE_TIMEOUT_MS} ms`);
        }
        await sleep(10);
      }
      lags.push(performance.now() - written);
      await allocator.release({ ip, requester: { handle: `bench-${i}` } });
    }
  } finally {
    await etcd.close();
  }
  return lags;
}
