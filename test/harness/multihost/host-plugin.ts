// The plugin on one simulated host, started as a user would start it: `node
// dist/bin/calico-libnetwork.js` inside the host's namespaces, default driver names, default
// socket directory (/run/docker/plugins, which is the host's own), default interface and chain
// prefixes (the host's network namespace is its own, so nothing is shared with other hosts or
// runs), DOCKER_HOST unset (the default /var/run/docker.sock is the host's dockerd). Only the
// datastore settings and the node name are given.
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { nsSpawn } from './ns-exec.js';

export const DAEMON = resolve(__dirname, '../../../bin/calico-libnetwork.js');
/** Generous: three daemons, three dockerds and etcd start at once on a small shared machine (under
 * heavy load loading the daemon's modules alone took 6 s). */
const START_TIMEOUT_MS = 45_000;
const STOP_GRACE_MS = 10_000;
const OUTPUT_LIMIT_CHARS = 200_000;

export interface HostPlugin {
  /** The daemon's environment (without PATH). */
  readonly env: Readonly<Record<string, string>>;
  /** The host's /run/docker/plugins as the test process sees it. */
  readonly socketDir: string;
  /** calico.sock / calico-ipam.sock, as the test process sees them. */
  readonly networkSocket: string;
  readonly ipamSocket: string;
  /** Pid of the running daemon, undefined when it is not running. */
  readonly pid: number | undefined;
  readonly running: boolean;
  /** Everything every run of the daemon printed (for failure messages). */
  output(): string;
  /** Starts it if it is not running; resolves once both sockets serve. */
  start(): Promise<void>;
  /** SIGTERM (SIGKILL after 10 s); resolves with the exit code (null: killed by a signal). */
  stop(): Promise<number | null>;
  /** Sends `signal` (default SIGKILL) and waits for the exit (SIGKILL after 10 s if `signal`
   * did not end it): a crash, sockets left behind. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** stop() (if running) then start(); rejects if the clean stop did not exit 0. */
  restart(): Promise<void>;
}

export interface HostPluginOptions {
  readonly hostName: string;
  /** nsenter arguments that join the host. */
  readonly nsenterArgs: readonly string[];
  readonly baseEnv: Readonly<Record<string, string>>;
  /** The host's /run as the test process sees it. */
  readonly runDir: string;
  readonly env: Readonly<Record<string, string>>;
  /** Told the pid of every daemon process started (teardown checks they are all gone). */
  readonly onSpawn?: (pid: number) => void;
}

export function hostPlugin(opts: HostPluginOptions): HostPlugin {
  const socketDir = join(opts.runDir, 'docker', 'plugins');
  const networkSocket = join(socketDir, 'calico.sock');
  const ipamSocket = join(socketDir, 'calico-ipam.sock');
  let out = '';
  let child: ChildProcess | undefined;
  let exited: Promise<number | null> = Promise.resolve(null);
  const append = (b: Buffer): void => {
    out = (out + b.toString()).slice(-OUTPUT_LIMIT_CHARS);
  };
  const running = (): boolean => child !== undefined && child.exitCode === null && child.signalCode === null;

  const start = async (): Promise<void> => {
    if (running()) return;
    out += `--- start on ${opts.hostName} ---\n`;
    // This run's output, to see its own "serving" line (the whole output is trimmed to a limit).
    let thisRun = '';
    // setpriv: the daemon dies with the test process even if that is SIGKILLed.
    const c = nsSpawn(opts.nsenterArgs, ['setpriv', '--pdeathsig', 'SIGKILL', process.execPath, DAEMON], opts.baseEnv, {
      env: opts.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child = c;
    if (c.pid !== undefined) opts.onSpawn?.(c.pid);
    exited = new Promise((res) => c.once('exit', (code) => res(code)));
    let spawnError: Error | undefined;
    c.once('error', (err) => (spawnError = err));
    for (const stream of [c.stdout, c.stderr]) {
      stream?.on('data', (b: Buffer) => {
        append(b);
        if (thisRun.length < OUTPUT_LIMIT_CHARS) thisRun += b.toString();
      });
    }
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (!(existsSync(networkSocket) && existsSync(ipamSocket) && thisRun.includes('serving'))) {
      if (spawnError !== undefined || c.exitCode !== null || c.signalCode !== null || Date.now() > deadline) {
        if (running()) c.kill('SIGKILL');
        throw new Error(`plugin on ${opts.hostName} did not start (${spawnError?.message ?? `exit ${c.exitCode ?? c.signalCode}`}):\n${out.slice(-4000)}`);
      }
      await sleep(25);
    }
  };

  const stop = async (): Promise<number | null> => {
    const c = child;
    if (c === undefined || !running()) return exited;
    c.kill('SIGTERM');
    const timer = setTimeout(() => c.kill('SIGKILL'), STOP_GRACE_MS);
    try {
      return await exited;
    } finally {
      clearTimeout(timer);
    }
  };

  return {
    env: opts.env,
    socketDir,
    networkSocket,
    ipamSocket,
    get pid() {
      return running() ? child?.pid : undefined;
    },
    get running() {
      return running();
    },
    output: () => out,
    start,
    stop,
    async kill(signal: NodeJS.Signals = 'SIGKILL') {
      const c = child;
      if (c === undefined || !running()) return;
      c.kill(signal);
      const timer = setTimeout(() => c.kill('SIGKILL'), STOP_GRACE_MS);
      try {
        await exited;
      } finally {
        clearTimeout(timer);
      }
    },
    async restart() {
      if (running()) {
        const code = await stop();
        if (code !== 0) throw new Error(`plugin on ${opts.hostName} exited with ${code} on SIGTERM:\n${out.slice(-4000)}`);
      }
      await start();
    },
  };
}
