// Runs fuzzed requests (fuzz-requests.ts) against a running plugin's sockets and checks every
// answer: it comes within a bound (no hang), the connection is never refused or reset (no crash),
// it is a JSON object, and an error is under the key of the interface the method belongs to (`Err`
// for NetworkDriver, `Error` for IpamDriver; for a path of neither, the socket's first interface)
// with a message, never an internal error. Then it undoes what valid requests made (endpoints left
// and deleted, addresses released, networks deleted and freed), for the caller to check that
// nothing is left. Used by `npm run fuzz` (10,000 requests) and a small run in the test suite.
import { Agent, request } from 'node:http';
import { randomBytes, randomInt } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { baseline, leftovers, type Leftovers } from './churn';
import { startPlugin } from './plugin';
import { PluginStore } from './plugin-traces';
import { reserveTestSubnets } from './test-subnets';
import { Prng, RequestGenerator, emptyState, type FuzzRanges, type FuzzRequest, type FuzzState } from './fuzz-requests';

export interface FuzzSockets {
  readonly network: string;
  readonly ipam: string;
  /** One socket serving both interfaces (a managed plugin): network === ipam. */
  readonly single: boolean;
}

export interface FuzzOptions {
  readonly sockets: FuzzSockets;
  readonly ranges: FuzzRanges;
  readonly requests: number;
  readonly seed: number;
  /** Requests in flight at once; 1 makes a run reproducible from its seed. */
  readonly concurrency?: number;
  /** An answer later than this is a hang. */
  readonly timeoutMs?: number;
  readonly progress?: (line: string) => void;
  /** Reads what requests may change (plugin-traces.ts); with concurrency 1, every refused request
   * is checked to have changed nothing. */
  readonly snapshot?: () => Promise<string>;
}

export interface Answer {
  readonly status: number;
  readonly contentType: string;
  readonly text: string;
  readonly ms: number;
}

export interface FuzzViolation {
  readonly request: string;
  readonly problem: string;
}

export interface FuzzResult {
  readonly sent: number;
  /** Answers by status code. */
  readonly statuses: Record<string, number>;
  /** Successful answers (200 without an error key). */
  readonly accepted: number;
  /** Successful answers by path (of POSTs). */
  readonly acceptedBy: Record<string, number>;
  readonly violations: FuzzViolation[];
  /** Transport failures: refused, reset, no answer in time. */
  readonly crashesOrHangs: FuzzViolation[];
  readonly latencyMs: number[];
  readonly wallMs: number;
  readonly state: FuzzState;
  /** Problems undoing what the run made (each undo request must succeed). */
  readonly cleanupProblems: string[];
}

const DEFAULT_TIMEOUT_MS = 15_000;
const FUZZ_CONTENT_TYPE = 'application/vnd.docker.plugins.v1+json';

export function send(socketPath: string, agent: Agent, req: { method: string; path: string; headers: Record<string, string>; body: Buffer }, timeoutMs: number): Promise<Answer> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const r = request({ socketPath, agent, path: req.path, method: req.method, headers: { ...req.headers, 'Content-Length': req.body.length }, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (b: Buffer) => chunks.push(b));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, contentType: res.headers['content-type'] ?? '', text: Buffer.concat(chunks).toString('utf8'), ms: performance.now() - t0 }));
      res.on('error', reject);
    });
    r.on('timeout', () => r.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    r.on('error', reject);
    r.end(req.body);
  });
}

/** The error key a path's answer must use on a socket (plugin-server.ts's errorKeyFor, from
 * outside). */
export function expectedKey(sockets: FuzzSockets, socket: 'network' | 'ipam', path: string): 'Err' | 'Error' {
  if (path.startsWith('/NetworkDriver.') && (sockets.single || socket === 'network')) return 'Err';
  if (path.startsWith('/IpamDriver.') && (sockets.single || socket === 'ipam')) return 'Error';
  return sockets.single || socket === 'network' ? 'Err' : 'Error';
}

/** Problems with one answer (empty: fine). */
export function checkAnswer(sockets: FuzzSockets, req: Pick<FuzzRequest, 'socket' | 'path'>, a: Answer): string[] {
  const problems: string[] = [];
  let body: unknown;
  try {
    body = JSON.parse(a.text);
  } catch {
    return [`answer ${a.status} is not JSON: ${a.text.slice(0, 200)}`];
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return [`answer ${a.status} is not a JSON object: ${a.text.slice(0, 200)}`];
  if (a.contentType !== FUZZ_CONTENT_TYPE) problems.push(`content type ${JSON.stringify(a.contentType)}`);
  const key = expectedKey(sockets, req.socket, req.path);
  const wrong = key === 'Err' ? 'Error' : 'Err';
  const b = body as Record<string, unknown>;
  if (wrong in b) problems.push(`error under ${wrong}, expected ${key}: ${a.text.slice(0, 200)}`);
  const failed = a.status !== 200 || key in b;
  if (failed) {
    const msg = b[key];
    if (typeof msg !== 'string' || msg.trim() === '') problems.push(`status ${a.status} without a message under ${key}: ${a.text.slice(0, 200)}`);
    else if (/internal error/i.test(msg) || a.status >= 500) problems.push(`unexpected failure (${a.status}): ${msg.slice(0, 300)}`);
  }
  if (a.status < 200 || (a.status > 200 && a.status < 400) || a.status >= 600) problems.push(`status ${a.status}`);
  return problems;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** 200 with a JSON object that carries no error. */
function succeeded(a: Answer): boolean {
  if (a.status !== 200) return false;
  try {
    const body = JSON.parse(a.text) as unknown;
    return isObject(body) && !('Err' in body) && !('Error' in body);
  } catch {
    return false;
  }
}

function describe(req: FuzzRequest): string {
  const body = req.body.length > 300 ? `${req.body.subarray(0, 300).toString('utf8')}... (${req.body.length} bytes)` : req.body.toString('utf8');
  return `${req.method} ${req.socket} ${req.path.slice(0, 80)} [${req.how}] ${body}`;
}

/** What differs between two snapshots (JSON objects of sorted string lists), briefly. */
function snapshotChange(before: string | undefined, after: string | undefined): string {
  const parse = (s: string | undefined): Record<string, unknown[]> => (s === undefined ? {} : JSON.parse(s) as Record<string, unknown[]>);
  const [b, a] = [parse(before), parse(after)];
  const changes: string[] = [];
  for (const part of new Set([...Object.keys(b), ...Object.keys(a)])) {
    const was = new Set((b[part] ?? []).map((x) => JSON.stringify(x)));
    const is = new Set((a[part] ?? []).map((x) => JSON.stringify(x)));
    for (const x of was) if (!is.has(x)) changes.push(`${part} -${x.slice(0, 200)}`);
    for (const x of is) if (!was.has(x)) changes.push(`${part} +${x.slice(0, 200)}`);
  }
  return changes.join('; ');
}

/** Records what a successful answer made, for follow-ups and for the clean-up. */
function track(state: FuzzState, req: FuzzRequest, answer: Record<string, unknown>): void {
  const v = req.value;
  if (!isObject(v) || req.method !== 'POST') return;
  const str = (x: unknown): string | undefined => (typeof x === 'string' ? x : undefined);
  switch (req.path) {
    case '/NetworkDriver.CreateNetwork': {
      const id = str(v['NetworkID']);
      if (id !== undefined) state.networks.add(id);
      break;
    }
    case '/NetworkDriver.CreateEndpoint': {
      const id = str(v['EndpointID']);
      const net = str(v['NetworkID']);
      if (id !== undefined && net !== undefined) state.endpoints.set(id, net);
      break;
    }
    case '/IpamDriver.RequestAddress': {
      const pool = str(v['PoolID']);
      const address = str(answer['Address']);
      if (pool !== undefined && address !== undefined && !['0.0.0.0/0', '::/0'].includes(address)) state.addresses.add(`${pool} ${address.replace(/\/\d+$/, '')}`);
      break;
    }
    default:
  }
}

export async function fuzz(o: FuzzOptions): Promise<FuzzResult> {
  const timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const state = emptyState();
  const gen = new RequestGenerator(new Prng(o.seed), o.ranges, state);
  const agents = { network: new Agent({ keepAlive: true }), ipam: new Agent({ keepAlive: true }) };
  const statuses: Record<string, number> = {};
  const violations: FuzzViolation[] = [];
  const crashesOrHangs: FuzzViolation[] = [];
  const latencyMs: number[] = [];
  let sent = 0;
  let accepted = 0;
  const acceptedBy: Record<string, number> = {};
  const began = performance.now();
  const check = o.snapshot !== undefined && (o.concurrency ?? 1) === 1 ? o.snapshot : undefined;
  let last: string | undefined;
  const worker = async (): Promise<void> => {
    while (sent < o.requests) {
      sent++;
      const req = gen.next();
      // The state after the previous request is the state before this one (one read each).
      const before = check === undefined ? undefined : (last ??= await check());
      let a: Answer;
      try {
        a = await send(o.sockets[req.socket], agents[req.socket], req, timeoutMs);
      } catch (err) {
        crashesOrHangs.push({ request: describe(req), problem: err instanceof Error ? err.message : String(err) });
        // A crashed plugin refuses everything after: no point in 10,000 more of the same.
        if (crashesOrHangs.length >= 5) return;
        continue;
      }
      latencyMs.push(a.ms);
      statuses[a.status] = (statuses[a.status] ?? 0) + 1;
      for (const problem of checkAnswer(o.sockets, req, a)) violations.push({ request: describe(req), problem });
      const after = check === undefined ? undefined : (last = await check());
      if (succeeded(a)) {
        accepted++;
        if (req.method === 'POST') acceptedBy[req.path] = (acceptedBy[req.path] ?? 0) + 1;
        track(state, req, JSON.parse(a.text) as Record<string, unknown>);
      } else if (before !== after) {
        violations.push({ request: describe(req), problem: `refused (${a.text.slice(0, 200)}) but changed the datastore: ${snapshotChange(before, after)}` });
      }
      if (sent % 1000 === 0) o.progress?.(`${sent}/${o.requests} sent; ${state.networks.size} networks, ${state.endpoints.size} endpoints, ${state.addresses.size} addresses made`);
    }
  };
  try {
    await Promise.all(Array.from({ length: o.concurrency ?? 1 }, () => worker()));
    const wallMs = performance.now() - began;
    const cleanupProblems = crashesOrHangs.length > 0 ? [] : await undo(o.sockets, agents, state, timeoutMs);
    return { sent, statuses, accepted, acceptedBy, violations, crashesOrHangs, latencyMs, wallMs, state, cleanupProblems };
  } finally {
    agents.network.destroy();
    agents.ipam.destroy();
  }
}

/** What Docker would send to take everything down again; each must succeed. */
async function undo(sockets: FuzzSockets, agents: Record<'network' | 'ipam', Agent>, state: FuzzState, timeoutMs: number): Promise<string[]> {
  const problems: string[] = [];
  const call = async (socket: 'network' | 'ipam', path: string, body: object): Promise<void> => {
    try {
      const a = await send(sockets[socket], agents[socket], { method: 'POST', path, headers: {}, body: Buffer.from(JSON.stringify(body)) }, timeoutMs);
      const parsed = JSON.parse(a.text) as Record<string, unknown>;
      if (a.status !== 200 || 'Err' in parsed || 'Error' in parsed) problems.push(`${path} ${JSON.stringify(body)}: ${a.status} ${a.text.slice(0, 300)}`);
    } catch (err) {
      problems.push(`${path} ${JSON.stringify(body)}: ${err instanceof Error ? err.message : String(err)}`);
    }
  };
  for (const [EndpointID, NetworkID] of state.endpoints) {
    await call('network', '/NetworkDriver.Leave', { NetworkID, EndpointID });
    await call('network', '/NetworkDriver.DeleteEndpoint', { NetworkID, EndpointID });
  }
  for (const held of state.addresses) {
    const [PoolID, Address] = held.split(' ');
    await call('ipam', '/IpamDriver.ReleaseAddress', { PoolID, Address });
  }
  for (const NetworkID of state.networks) {
    await call('network', '/NetworkDriver.DeleteNetwork', { NetworkID });
    await call('network', '/NetworkDriver.FreeNetwork', { NetworkID });
  }
  return problems;
}

export interface PluginFuzzOptions {
  readonly requests: number;
  readonly seed: number;
  /** CALICO_LIBNETWORK_SOCKETS=single: both interfaces on one socket. */
  readonly single: boolean;
  readonly concurrency?: number;
  readonly progress?: (line: string) => void;
}

export interface PluginFuzzResult {
  readonly result: FuzzResult;
  /** What is left once the run's work is undone. */
  readonly left: Leftovers;
  /** The daemon's exit code on SIGTERM after the run (0: it was alive and stopped cleanly). */
  readonly exitCode: number | null;
  /** Lines the daemon logged as errors during the run. */
  readonly errorLines: string[];
  readonly ranges: FuzzRanges;
}

/** A harness plugin of its own (embedded store; Docker absent, as for a plugin whose Docker is not
 * up yet: nothing ever looks its endpoints up, so nothing but the run touches them), fuzzed, its
 * work undone, checked for leftovers, stopped and cleaned up. */
export async function fuzzHarnessPlugin(o: PluginFuzzOptions): Promise<PluginFuzzResult> {
  const [pool, spare] = await reserveTestSubnets(2);
  if (pool === undefined || spare === undefined) throw new Error('no test subnets');
  // Groups of four digits without a leading zero: written as the kernel prints them.
  const group = (): string => (0x1000 + randomInt(0xf000)).toString(16);
  const ranges: FuzzRanges = { pool, spare, ipv6: `fd${randomInt(16, 256).toString(16)}:${group()}:${group()}:${group()}::/64` };
  const plugin = await startPlugin({
    dockerSocket: join(tmpdir(), `calico-fuzz-no-docker-${randomBytes(4).toString('hex')}.sock`),
    ipv4Pool: pool,
    env: o.single ? { CALICO_LIBNETWORK_SOCKETS: 'single' } : {},
    startTimeoutMs: 60_000,
  });
  try {
    const dir = '/run/docker/plugins';
    const network = join(dir, `${plugin.networkDriver}.sock`);
    const sockets: FuzzSockets = { network, ipam: o.single ? network : join(dir, `${plugin.ipamDriver}.sock`), single: o.single };
    const base = await baseline(plugin);
    const logStart = plugin.output().length;
    const store = new PluginStore(plugin);
    let result: FuzzResult;
    try {
      result = await fuzz({ sockets, ranges, requests: o.requests, seed: o.seed, snapshot: () => store.snapshot(), ...(o.concurrency !== undefined && { concurrency: o.concurrency }), ...(o.progress !== undefined && { progress: o.progress }) });
    } finally {
      await store.close();
    }
    const prefixes = [pool.replace(/0\/24$/, ''), spare.replace(/0\/24$/, ''), ranges.ipv6.replace(/\/64$/, '')];
    const left = await leftovers(plugin, prefixes, base, 10_000);
    const errorLines = plugin.output().slice(logStart).split('\n').filter((l) => / ERROR /.test(l));
    const exitCode = await plugin.stop();
    return { result, left, exitCode, errorLines, ranges };
  } finally {
    await plugin.cleanup();
  }
}
