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
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePorts } from './local-http';

export interface EtcdHandle {
  /** Client URLs usable from the test process. */
  readonly endpoints: string[];
  /** With `netns`: client URLs usable from inside the namespace's network (other namespaces
   * routed to it). Without: the same as `endpoints`. */
  readonly netnsEndpoints: string[];
  /** Its temp directory (data, unix socket); removed by stop(). */
  readonly dir: string;
  /** Sends a signal to etcd: SIGSTOP hangs it (connections stay open, nothing answers), SIGCONT
   * resumes it. stop() resumes a stopped etcd before ending it. */
  signal(signal: 'SIGSTOP' | 'SIGCONT' | 'SIGKILL'): void;
  stop(): Promise<void>;
}

const ETCD_BINARY = process.env['ETCD_BINARY'] ?? '/usr/bin/etcd';
const START_TIMEOUT_MS = 20_000;
const HEALTH_POLL_MS = 100;
const STOP_GRACE_MS = 5_000;
/** Free-port probing races other processes; a lost race shows as etcd exiting early. */
const START_ATTEMPTS = 3;

/** Files of a TLS setup made for one test (tls-certs.ts). */
export interface EtcdTls {
  readonly caFile: string;
  readonly serverCertFile: string;
  readonly serverKeyFile: string;
}

export interface EtcdStartOptions {
  /** Serve clients over TLS and require a client certificate signed by the CA
   * (--client-cert-auth). Loopback only (not with `netns`). */
  readonly tls?: EtcdTls;
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
      return await startOnce(parent, options.tls);
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError;
}

const SHM = '/dev/shm';

async function startOnce(parent: string, tls: EtcdTls | undefined): Promise<EtcdHandle> {
  const dir = mkdtempSync(join(parent, 'calico-test-etcd-'));
  let clientPort: number;
  let peerPort: number;
  try {
    [clientPort, peerPort] = (await freePorts(2)) as [number, number];
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const clientUrl = `${tls === undefined ? 'http' : 'https'}://127.0.0.1:${clientPort}`;
  const peerUrl = `http://127.0.0.1:${peerPort}`;
  const tlsArgs = tls === undefined ? [] : ['--cert-file', tls.serverCertFile, '--key-file', tls.serverKeyFile, '--trusted-ca-file', tls.caFile, '--client-cert-auth'];
  const proc = spawnEtcd(dir, [], { clientUrls: [clientUrl], advertiseUrl: clientUrl, peerUrl }, { extraArgs: tlsArgs });
  try {
    // With TLS the health probe would need a client certificate: wait for the port instead.
    await waitHealthy(clientUrl, proc, () => (tls === undefined ? probeUrl(clientUrl) : probePort(clientPort)));
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return { endpoints: [clientUrl], netnsEndpoints: [clientUrl], dir, signal: proc.signal, stop: proc.stop };
}

export interface EtcdMember {
  readonly name: string;
  readonly endpoint: string;
  signal(signal: 'SIGSTOP' | 'SIGCONT' | 'SIGKILL'): void;
  /** Resolves once the member's process has exited (after SIGKILL). */
  exited(): Promise<void>;
}

export interface EtcdClusterHandle {
  /** Every member's client URL. */
  readonly endpoints: string[];
  readonly members: readonly EtcdMember[];
  stop(): Promise<void>;
}

/** A cluster of `size` members on loopback, in memory (tmpfs): for tests of losing a member. */
export async function startEtcdCluster(size = 3): Promise<EtcdClusterHandle> {
  let lastError: unknown;
  for (let attempt = 0; attempt < START_ATTEMPTS; attempt++) {
    try {
      return await startClusterOnce(size);
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError;
}

async function startClusterOnce(size: number): Promise<EtcdClusterHandle> {
  const ports = await freePorts(2 * size);
  const names = Array.from({ length: size }, (_, i) => `m${i}`);
  const peerUrls = names.map((_, i) => `http://127.0.0.1:${ports[2 * i + 1] ?? 0}`);
  const clientUrls = names.map((_, i) => `http://127.0.0.1:${ports[2 * i] ?? 0}`);
  const initialCluster = names.map((n, i) => `${n}=${peerUrls[i] ?? ''}`).join(',');
  const procs: EtcdProcess[] = [];
  const stop = async (): Promise<void> => {
    await Promise.all(procs.map((p) => p.stop()));
  };
  try {
    for (const [i, name] of names.entries()) {
      const dir = mkdtempSync(join(SHM, 'calico-test-etcd-'));
      const clientUrl = clientUrls[i] ?? '';
      const peerUrl = peerUrls[i] ?? '';
      procs.push(spawnEtcd(dir, [], { clientUrls: [clientUrl], advertiseUrl: clientUrl, peerUrl }, { name, initialCluster }));
    }
    await Promise.all(procs.map((p, i) => waitHealthy(clientUrls[i] ?? '', p, () => probeUrl(clientUrls[i] ?? ''))));
  } catch (err) {
    await stop();
    throw err;
  }
  const members = procs.map((p, i): EtcdMember => ({
    name: names[i] ?? '',
    endpoint: clientUrls[i] ?? '',
    signal: p.signal,
    exited: () => (p.child.exitCode !== null || p.child.signalCode !== null ? Promise.resolve() : new Promise((resolve) => p.child.once('exit', () => resolve()))),
  }));
  return { endpoints: clientUrls, members, stop };
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
  return { endpoints: [`http://127.0.0.1:${proxy.port}`], netnsEndpoints: [clientUrl], dir, signal: proc.signal, stop };
}

interface EtcdProcess {
  readonly child: ChildProcess;
  stderr(): string;
  spawnError(): Error | undefined;
  signal(signal: 'SIGSTOP' | 'SIGCONT' | 'SIGKILL'): void;
  /** Idempotent: kill, then delete the data directory. */
  stop(): Promise<void>;
}

/** `wrapper` is prepended to the etcd command line (e.g. nsenter into a namespace); the data
 * directory is also etcd's working directory. */
function spawnEtcd(
  dir: string,
  wrapper: readonly string[],
  urls: { clientUrls: string[]; advertiseUrl: string; peerUrl: string },
  member: { name?: string; initialCluster?: string; extraArgs?: readonly string[] } = {},
): EtcdProcess {
  const name = member.name ?? 'test';
  const args = [
    '--name', name,
    '--data-dir', join(dir, 'data'),
    '--listen-client-urls', urls.clientUrls.join(','),
    '--advertise-client-urls', urls.advertiseUrl,
    '--listen-peer-urls', urls.peerUrl,
    '--initial-advertise-peer-urls', urls.peerUrl,
    '--initial-cluster', member.initialCluster ?? `${name}=${urls.peerUrl}`,
    '--initial-cluster-state', 'new',
    '--logger', 'zap',
    '--log-level', 'error',
    ...(member.extraArgs ?? []),
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
  const signal = (sig: 'SIGSTOP' | 'SIGCONT' | 'SIGKILL'): void => {
    if (child.exitCode === null && child.signalCode === null) child.kill(sig);
  };
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      // A stopped process would take SIGTERM only once continued.
      signal('SIGCONT');
      await kill(child);
      process.off('exit', cleanupOnExit);
      rmSync(dir, { recursive: true, force: true });
    })();
    return stopped;
  };
  return { child, stderr: () => stderr, spawnError: () => spawnError, signal, stop };
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

/** Whether something accepts connections on a loopback port. */
function probePort(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: '127.0.0.1' });
    socket.setTimeout(1_000, () => socket.destroy());
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
    socket.once('close', () => resolve(false));
  });
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

