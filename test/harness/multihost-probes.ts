// What multi-host tests look at: the routes the plugin wrote on a host, and bounded waits for a
// condition or a ping to come true (the agents follow the datastore within well under a second;
// the bounds are generous because the machine is small and shared).
import type Docker from 'dockerode';
import { setTimeout as sleep } from 'node:timers/promises';
import { exec } from './containers.js';
import type { Host } from './multihost.js';

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
