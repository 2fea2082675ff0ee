// BGP in the multi-host harness: a BIRD in the router namespace standing for the top-of-rack
// router (eBGP to every host), and what tests read from the BIRDs (sessions, kernel routes).
// Timers are short so sessions come up, and time out, within seconds.
import { type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { birdPaths } from '../../bgp/bird-supervisor.js';
import type { Cluster, Host } from './multihost.js';
import type { KernelRoute } from './multihost-probes.js';

export const ROUTER_AS = 65000;
/** Short timers for tests: sessions up within a couple of seconds, a silent peer dropped in 6. */
export const TEST_BGP_ENV = {
  CALICO_NETWORKING_BACKEND: 'bird',
  CALICO_BGP_KEEPALIVE_TIME: '2',
  CALICO_BGP_HOLD_TIME: '6',
  CALICO_BGP_CONNECT_RETRY_TIME: '1',
} as const;
/** BIRD's files on every host (CALICO_BIRD_DIR's default, under the host's own /run). */
export const HOST_BIRD = birdPaths('/run/calico-libnetwork/bird');

export interface RouterBird {
  readonly socket: string;
  readonly process: ChildProcess;
  birdc(words: readonly string[]): Promise<string>;
  /** The routes the router's BIRD wrote into its kernel. */
  routes(): Promise<KernelRoute[]>;
  stop(): Promise<void>;
}

/** Starts BIRD in the router namespace, AS 65000, one eBGP session per host (protocol named like
 * the host), importing everything and exporting what it learned over BGP; its kernel protocol
 * writes the learned routes, so the router forwards container traffic natively. */
export interface RouterSession {
  readonly name: string;
  readonly address: string;
  readonly asNumber: number;
  /** The router's own address towards it. */
  readonly local: string;
}

export async function startRouterBird(c: Cluster, hosts: readonly Host[], more: readonly RouterSession[] = []): Promise<RouterBird> {
  const dir = join(c.dir, 'router-bird');
  const config = join(c.dir, 'router-bird.conf');
  const socket = `${dir}.ctl`;
  const all: RouterSession[] = [...hosts.map((h) => ({ name: h.name, address: h.address, asNumber: 64512, local: h.gateway })), ...more];
  const sessions = all.map((h) => `protocol bgp ${h.name} {
  local ${h.local} as ${ROUTER_AS};
  neighbor ${h.address} as ${h.asNumber};
  direct;
  hold time 6; keepalive time 2; connect retry time 1; connect delay time 1; error wait time 1, 5;
  ipv4 { import all; export where source = RTS_BGP; };
}`);
  writeFileSync(config, [
    `router id ${c.router.addresses.a};`,
    'timeformat protocol iso long;',
    `log "${dir}.log" all;`,
    'protocol device { scan time 10; }',
    'protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }',
    ...sessions,
    '',
  ].join('\n'));
  const child = c.router.spawn(['bird', '-f', '-c', config, '-s', socket, '-P', `${dir}.pid`]);
  const birdc = async (words: readonly string[]): Promise<string> => (await c.router.exec(['birdc', '-s', socket, ...words])).stdout;
  for (let i = 0; !(await birdc(['show', 'status'])).includes('Daemon is up'); i++) {
    if (i > 100 || child.exitCode !== null) throw new Error(`router BIRD did not start: see ${dir}.log`);
    await sleep(100);
  }
  return {
    socket,
    process: child,
    birdc,
    routes: async () => JSON.parse((await c.router.run(['ip', '-j', '-4', 'route', 'show', 'proto', 'bird'])).stdout || '[]') as KernelRoute[],
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** BIRD's routes in a host's kernel. */
export async function birdRoutes(h: Host): Promise<KernelRoute[]> {
  return JSON.parse((await h.run(['ip', '-j', '-4', 'route', 'show', 'proto', 'bird'])).stdout || '[]') as KernelRoute[];
}

/** One session's row of `birdc show protocols <name>` (state and info), undefined if absent. */
export function sessionOf(showProtocols: string, name: string): { state: string; since: string; info: string } | undefined {
  const line = showProtocols.split('\n').find((l) => l.startsWith(`${name} `));
  const m = line === undefined ? null : /^\S+\s+BGP\s+\S+\s+(\S+)\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\s*(.*)$/.exec(line);
  return m === null ? undefined : { state: m[1] ?? '', since: m[2] ?? '', info: (m[3] ?? '').trim() };
}
