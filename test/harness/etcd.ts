// Starts a private single-member etcd for tests: its own temp data dir and free loopback ports, so
// test runs never touch a real cluster or each other. A crashed test run must not leave etcd
// running, hence the synchronous exit hook besides stop().
//
// With `netns`, etcd runs inside that network namespace instead (the multi-host harness: hosts in
// their own namespaces reach it over their fabric, as they would a real etcd). The test process,
// in the root namespace, cannot reach an address in there; etcd therefore also listens on a unix
// socket (a file, reachable from every network namespace), and a small proxy process
// (unix-proxy.ts) forwards 127.0.0.1:<port> to it, so `endpoints` works from the test process as
// usual.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface EtcdHandle {
  /** Client URLs usable from the test process. */
  readonly endpoints: string[];
  /** With `netns`: client URLs usable from inside the namespace's network (other namespaces
   * routed to it). Without: the same as `endpoints`. */
  readonly netnsEndpoints: string[];
  /** Its temp directory (data, unix socket); removed by stop(). */
  readonly dir: string;
  stop(): Promise<void>;
}

const ETCD_BINARY = process.env['ETCD_BINARY'] ?? '/usr/bin/etcd';
const START_TIMEOUT_MS = 20_000;
const HEALTH_POLL_MS = 100;
const STOP_GRACE_MS = 5_000;
/** Free-port probing races other processes; a lost race shows as etcd exiting early. */
const START_ATTEMPTS = 3;

export interface EtcdStartOptions {
  /** Keep the data in memory (tmpfs), so writes skip the disk's fsync. For tests whose subject
   * is contention between clients, not etcd's durability: rounds then take a fraction of the
   * time on a slow disk. */
  readonly inMemory?: boolean;
  /** Run inside this `ip netns` namespace, serving clients on `address` (an address of one of its
   * interfaces) port 2379. */
  readonly netns?: { readonly name: string; readonly address: string };
}

export async function startEtcd(options: EtcdStartOptions = {}): Promise<EtcdHandle> {
  const parent = options.inMemory === true ? SHM : tmpdir();
  // Inside a namespace of its own the ports are free: no probing, no race, one attempt.
  if (options.netns !== undefined) return startInNetns(parent, options.netns);
  let lastError: unknown;
  for (let attempt = 0; attempt < START_ATTEMPTS; attempt++) {
    try {
      return await startOnce(parent);
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError;
}

const SHM = '/dev/shm';

async function startOnce(parent: string): Promise<EtcdHandle> {
  const dir = mkdtempSync(join(parent, 'calico-test-etcd-'));
  let clientPort: number;
  let peerPort: number;
  try {
    [clientPort, peerPort] = (await freePorts(2)) as [number, number];
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const clientUrl = `http://127.0.0.1:${clientPort}`;
  const peerUrl = `http://127.0.0.1:${peerPort}`;
  const proc = spawnEtcd(dir, [], { clientUrls: [clientUrl], advertiseUrl: clientUrl, peerUrl });
  try {
    await waitHealthy(clientUrl, proc, () => probeUrl(clientUrl));
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return { endpoints: [clientUrl], netnsEndpoints: [clientUrl], dir, stop: proc.stop };
}

const NETNS_CLIENT_PORT = 2379;
const NETNS_PEER_PORT = 2380;
/** etcd 3.4 takes unix listeners only in `unix://host:port` form and creates the socket file
 * named `host:port` in its working directory. */
const UNIX_LISTENER = 'etcd.sock:0';

async function startInNetns(parent: string, netns: { readonly name: string; readonly address: string }): Promise<EtcdHandle> {
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(netns.name)) throw new Error(`invalid netns name ${JSON.stringify(netns.name)}`);
  const dir = mkdtempSync(join(parent, 'calico-test-etcd-'));
  const clientUrl = `http://${netns.address}:${NETNS_CLIENT_PORT}`;
  // setpriv: etcd dies with the test process even if that is SIGKILLed.
  const proc = spawnEtcd(dir, ['nsenter', `--net=/run/netns/${netns.name}`, '--', 'setpriv', '--pdeathsig', 'SIGKILL'], {
    clientUrls: [clientUrl, `unix://${UNIX_LISTENER}`],
    advertiseUrl: clientUrl,
    peerUrl: `http://127.0.0.1:${NETNS_PEER_PORT}`,
  });
  const socketPath = join(dir, UNIX_LISTENER);
  // The proxy connects per client connection, so it can start while etcd does.
  const proxying = startUnixProxy(socketPath);
  const stop = async (): Promise<void> => {
    await (await proxying.catch(() => undefined))?.close();
    await proc.stop();
  };
  let proxy: UnixProxy;
  try {
    [proxy] = await Promise.all([proxying, waitHealthy(clientUrl, proc, () => probeSocket(socketPath))]);
  } catch (err) {
    await stop();
    throw err;
  }
  return { endpoints: [`http://127.0.0.1:${proxy.port}`], netnsEndpoints: [clientUrl], dir, stop };
}

interface EtcdProcess {
  readonly child: ChildProcess;
  stderr(): string;
  spawnError(): Error | undefined;
  /** Idempotent: kill, then delete the data directory. */
  stop(): Promise<void>;
}

/** `wrapper` is prepended to the etcd command line (e.g. nsenter into a namespace); the data
 * directory is also etcd's working directory. */
function spawnEtcd(
  dir: string,
  wrapper: readonly string[],
  urls: { clientUrls: string[]; advertiseUrl: string; peerUrl: string },
): EtcdProcess {
  const args = [
    '--name', 'test',
    '--data-dir', join(dir, 'data'),
    '--listen-client-urls', urls.clientUrls.join(','),
    '--advertise-client-urls', urls.advertiseUrl,
    '--listen-peer-urls', urls.peerUrl,
    '--initial-advertise-peer-urls', urls.peerUrl,
    '--initial-cluster', `test=${urls.peerUrl}`,
    '--initial-cluster-state', 'new',
    '--logger', 'zap',
    '--log-level', 'error',
  ];
  const [file, ...rest] = [...wrapper, ETCD_BINARY, ...args] as [string, ...string[]];
  const child = spawn(file, rest, { stdio: ['ignore', 'ignore', 'pipe'], env: etcdEnv(), cwd: dir });
  let stderr = '';
  // A spawn failure (ENOENT: no etcd binary) is an 'error' event, not an exit; without a listener
  // it would crash the test process.
  let spawnError: Error | undefined;
  child.once('error', (err) => {
    spawnError = err;
  });
  child.stderr?.setEncoding('utf8').on('data', (s: string) => {
    stderr = (stderr + s).slice(-4000);
  });
  const cleanupOnExit = (): void => {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  process.on('exit', cleanupOnExit);
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      await kill(child);
      process.off('exit', cleanupOnExit);
      rmSync(dir, { recursive: true, force: true });
    })();
    return stopped;
  };
  return { child, stderr: () => stderr, spawnError: () => spawnError, stop };
}

/** etcd refuses to start on architectures it does not officially support unless told to. */
function etcdEnv(): NodeJS.ProcessEnv {
  const supported = process.arch === 'x64' || process.arch === 'arm64';
  return supported ? { ...process.env } : { ...process.env, ETCD_UNSUPPORTED_ARCH: process.arch };
}

async function waitHealthy(clientUrl: string, proc: EtcdProcess, probe: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const failed = proc.spawnError();
    if (failed !== undefined) {
      throw new Error(`cannot start etcd (${ETCD_BINARY}; set ETCD_BINARY to override): ${failed.message}`);
    }
    if (proc.child.exitCode !== null || proc.child.signalCode !== null) {
      throw new Error(`etcd exited during start (${proc.child.exitCode ?? proc.child.signalCode}): ${proc.stderr()}`);
    }
    if (await probe()) return;
    await new Promise((resolve) => setTimeout(resolve, HEALTH_POLL_MS));
  }
  throw new Error(`etcd at ${clientUrl} not healthy within ${START_TIMEOUT_MS} ms: ${proc.stderr()}`);
}

function isHealthy(body: unknown): boolean {
  return typeof body === 'object' && body !== null && Reflect.get(body, 'health') === 'true';
}

async function probeUrl(clientUrl: string): Promise<boolean> {
  try {
    const res = await fetch(`${clientUrl}/health`, { signal: AbortSignal.timeout(1_000) });
    return res.ok && isHealthy(await res.json());
  } catch {
    return false; // Not listening yet.
  }
}

/** GET /health over etcd's unix socket. */
function probeSocket(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request({ socketPath, path: '/health', method: 'GET', timeout: 1_000 }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (c: string) => (text += c));
      res.on('end', () => {
        try {
          resolve(res.statusCode === 200 && isHealthy(JSON.parse(text)));
        } catch {
          resolve(false);
        }
      });
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
    req.end();
  });
}

const UNIX_PROXY = join(__dirname, 'unix-proxy.js');
const PROXY_START_TIMEOUT_MS = 10_000;

interface UnixProxy {
  readonly port: number;
  close(): Promise<void>;
}

/** 127.0.0.1:<free port> -> unix socket, in a process of its own (see unix-proxy.ts), which dies
 * with the test process (setpriv --pdeathsig) even if that is SIGKILLed. */
async function startUnixProxy(socketPath: string): Promise<UnixProxy> {
  const child = spawn('setpriv', ['--pdeathsig', 'SIGKILL', process.execPath, UNIX_PROXY, socketPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  const killOnExit = (): void => {
    child.kill('SIGKILL');
  };
  process.on('exit', killOnExit);
  const close = async (): Promise<void> => {
    await kill(child);
    process.off('exit', killOnExit);
  };
  let out = '';
  let err = '';
  child.stderr?.setEncoding('utf8').on('data', (s: string) => (err += s));
  try {
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`etcd proxy did not start within ${PROXY_START_TIMEOUT_MS} ms: ${err}`)), PROXY_START_TIMEOUT_MS);
      child.stdout?.setEncoding('utf8').on('data', (s: string) => {
        out += s;
        const line = /^(\d+)\n/.exec(out);
        if (line?.[1] !== undefined) {
          clearTimeout(timer);
          resolve(Number(line[1]));
        }
      });
      child.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      child.once('exit', (code, sig) => {
        clearTimeout(timer);
        reject(new Error(`etcd proxy exited (${sig ?? code}): ${err}`));
      });
    });
    return { port, close };
  } catch (e) {
    await close();
    throw e;
  }
}

async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
  await exited;
  clearTimeout(timer);
}

/** Ports are held open together, so the same port is never handed out twice. */
async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: count }, () => new Promise<ReturnType<typeof createServer>>((resolve, reject) => {
      const s = createServer();
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => resolve(s));
    })),
  );
  const ports = servers.map((s) => {
    const addr = s.address();
    if (addr === null || typeof addr === 'string') throw new Error('no TCP address');
    return addr.port;
  });
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}
