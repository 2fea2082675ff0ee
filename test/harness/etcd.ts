// Starts a private single-member etcd for tests: its own temp data dir and free loopback ports, so
// test runs never touch a real cluster or each other. A crashed test run must not leave etcd
// running, hence the synchronous exit hook besides stop().
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface EtcdHandle {
  readonly endpoints: string[];
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
}

export async function startEtcd(options: EtcdStartOptions = {}): Promise<EtcdHandle> {
  let lastError: unknown;
  for (let attempt = 0; attempt < START_ATTEMPTS; attempt++) {
    try {
      return await startOnce(options.inMemory === true ? SHM : tmpdir());
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
  const child = spawn(
    ETCD_BINARY,
    [
      '--name', 'test',
      '--data-dir', join(dir, 'data'),
      '--listen-client-urls', clientUrl,
      '--advertise-client-urls', clientUrl,
      '--listen-peer-urls', peerUrl,
      '--initial-advertise-peer-urls', peerUrl,
      '--initial-cluster', `test=${peerUrl}`,
      '--initial-cluster-state', 'new',
      '--logger', 'zap',
      '--log-level', 'error',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'], env: etcdEnv() },
  );
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
  try {
    await waitHealthy(clientUrl, child, () => stderr, () => spawnError);
  } catch (err) {
    await stop();
    throw err;
  }
  return { endpoints: [clientUrl], stop };
}

/** etcd refuses to start on architectures it does not officially support unless told to. */
function etcdEnv(): NodeJS.ProcessEnv {
  const supported = process.arch === 'x64' || process.arch === 'arm64';
  return supported ? { ...process.env } : { ...process.env, ETCD_UNSUPPORTED_ARCH: process.arch };
}

async function waitHealthy(
  clientUrl: string,
  child: ChildProcess,
  stderr: () => string,
  spawnError: () => Error | undefined,
): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const failed = spawnError();
    if (failed !== undefined) {
      throw new Error(`cannot start etcd (${ETCD_BINARY}; set ETCD_BINARY to override): ${failed.message}`);
    }
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`etcd exited during start (${child.exitCode ?? child.signalCode}): ${stderr()}`);
    }
    try {
      const res = await fetch(`${clientUrl}/health`, { signal: AbortSignal.timeout(1_000) });
      const body: unknown = await res.json();
      if (res.ok && typeof body === 'object' && body !== null && Reflect.get(body, 'health') === 'true') return;
    } catch {
      // Not listening yet.
    }
    await new Promise((resolve) => setTimeout(resolve, HEALTH_POLL_MS));
  }
  throw new Error(`etcd at ${clientUrl} not healthy within ${START_TIMEOUT_MS} ms: ${stderr()}`);
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
