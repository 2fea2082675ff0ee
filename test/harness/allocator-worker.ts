// One IPAM host as a child process, for contention tests and the IPAM benchmark: its own etcd
// client, its own Allocator and node name, one operation at a time (as the daemon serializes a
// host's IPAM requests). Run as
//
//   node dist/test/harness/allocator-worker.js '<job JSON>'     (or the job as the first stdin line)
//
// Job: {"endpoints":["http://127.0.0.1:2379"],"root":"/t-…","node":"host-1","pool":"10.0.0.0/24",
//       "mode":"allocator"|"raw"}
// "raw" does no IPAM: each operation is an EtcdStore get + compare-and-swap update of a key of the
// host's own (<root>/bench-raw/<node>), the floor cost of one allocation.
//
// Then newline-delimited JSON, one reply line per command, commands handled in order:
//   → {"type":"ready","node":"host-1","pid":123}                          once, after connecting
//   {"cmd":"use","root":"/t-…","pool":"10.1.0.0/24"}   switch key root (a fresh round) and,
//                                        if given, pool → {"type":"ok","cmd":"use"}
//   {"cmd":"assign","count":N}           N autoAssign calls, one after another (or N raw ops);
//   {"cmd":"assign","durationMs":D}      ... or as many as fit in D ms (both: whichever ends first)
//   {"cmd":"release","ips":["10.0.0.1"]} release each (requester: this host's handle)
//     → {"type":"result","cmd":"assign"|"release","ips":[…],"errors":[{"name","message"}],
//        "ms":[per-operation latency],"elapsedMs":…,"lostWrites":…,"retries":…|null}
//   {"cmd":"exit"}                       close the client and exit 0 (no reply)
//   anything invalid                     → {"type":"error","message":"…"}, the worker goes on
// `ips` are the addresses assigned or released; every failed operation is one `errors` entry.
// `lostWrites` counts writes that lost a race at the store (create, compare-and-swap or commit
// answered "conflict") during the command; `retries` is the allocator's own count of attempts that
// lost a race and ran again (see allocatorRetries), null if it cannot be read.
//
// The worker exits as soon as stdin closes, even mid-operation, so a parent that dies (or a test
// that forgets to stop it) leaves no orphan. Importing this module (the parent side: types,
// parsers, countingStore) runs nothing.
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import type { Datastore } from '../../datastore/datastore';
import { EtcdStore } from '../../datastore/etcd-store';
import { Keys } from '../../datastore/keys';
import { Allocator } from '../../ipam/allocator';

// ---------------------------------------------------------------------------------------------
// Protocol

export type WorkerMode = 'allocator' | 'raw';

export interface WorkerJob {
  readonly endpoints: readonly string[];
  readonly root: string;
  readonly node: string;
  /** Pool CIDR autoAssign is restricted to (the parent creates the pool in each root). */
  readonly pool: string;
  readonly mode: WorkerMode;
}

export type WorkerCommand =
  | { readonly cmd: 'use'; readonly root: string; readonly pool?: string }
  | { readonly cmd: 'assign'; readonly count?: number; readonly durationMs?: number }
  | { readonly cmd: 'release'; readonly ips: readonly string[] }
  | { readonly cmd: 'exit' };

export interface WorkerError {
  readonly name: string;
  readonly message: string;
}

export interface WorkerResult {
  readonly type: 'result';
  readonly cmd: 'assign' | 'release';
  readonly ips: string[];
  readonly errors: WorkerError[];
  readonly ms: number[];
  readonly elapsedMs: number;
  readonly lostWrites: number;
  readonly retries: number | null;
}

export type WorkerReply =
  | { readonly type: 'ready'; readonly node: string; readonly pid: number }
  | { readonly type: 'ok'; readonly cmd: 'use' }
  | WorkerResult
  | { readonly type: 'error'; readonly message: string };

/** Safety bound on one command, so a typo cannot make a worker run for hours. */
const MAX_COUNT = 1_000_000;
const MAX_DURATION_MS = 600_000;

type Json = Record<string, unknown>;

function record(value: unknown, what: string): Json {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error(`${what} must be a JSON object`);
  return value as Json;
}

function str(o: Json, field: string, what: string): string {
  const v = o[field];
  if (typeof v !== 'string' || v === '') throw new Error(`${what}: "${field}" must be a non-empty string`);
  return v;
}

function strings(o: Json, field: string, what: string): string[] {
  const v = o[field];
  if (!Array.isArray(v) || !v.every((x): x is string => typeof x === 'string')) {
    throw new Error(`${what}: "${field}" must be an array of strings`);
  }
  return v;
}

function optionalInt(o: Json, field: string, what: string, max: number): number | undefined {
  const v = o[field];
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) {
    throw new Error(`${what}: "${field}" must be an integer from 0 to ${max}`);
  }
  return v;
}

function num(o: Json, field: string, what: string): number {
  const v = o[field];
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`${what}: "${field}" must be a number`);
  return v;
}

function parseJson(text: string, what: string): Json {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new Error(`${what} is not valid JSON: ${err instanceof Error ? err.message : String(err)}`);
  }
  return record(value, what);
}

/** Key roots as Keys accepts them; each round of a test uses a fresh one. */
function root(o: Json, what: string): string {
  const r = str(o, 'root', what);
  if (!r.startsWith('/') || r.endsWith('/')) throw new Error(`${what}: "root" must start with '/' and not end with '/'`);
  return r;
}

/** Test traffic stays on this machine: only loopback etcd endpoints are accepted. */
function loopbackEndpoint(text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`job: endpoint ${JSON.stringify(text)} is not a URL`);
  }
  const loopback = url.hostname === 'localhost' || url.hostname === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(url.hostname);
  if (!/^https?:$/.test(url.protocol) || !loopback) throw new Error(`job: endpoint ${text} must be http(s) on loopback`);
  return text;
}

export function parseJob(text: string): WorkerJob {
  const o = parseJson(text, 'job');
  const endpoints = strings(o, 'endpoints', 'job').map(loopbackEndpoint);
  if (endpoints.length === 0) throw new Error('job: "endpoints" must not be empty');
  const mode = o['mode'];
  if (mode !== 'allocator' && mode !== 'raw') throw new Error('job: "mode" must be "allocator" or "raw"');
  return { endpoints, root: root(o, 'job'), node: str(o, 'node', 'job'), pool: str(o, 'pool', 'job'), mode };
}

export function parseCommand(text: string): WorkerCommand {
  const o = parseJson(text, 'command');
  switch (o['cmd']) {
    case 'use':
      return { cmd: 'use', root: root(o, 'use'), ...(o['pool'] !== undefined && { pool: str(o, 'pool', 'use') }) };
    case 'assign': {
      const count = optionalInt(o, 'count', 'assign', MAX_COUNT);
      const durationMs = optionalInt(o, 'durationMs', 'assign', MAX_DURATION_MS);
      if (count === undefined && durationMs === undefined) throw new Error('assign: give "count", "durationMs" or both');
      return { cmd: 'assign', ...(count !== undefined && { count }), ...(durationMs !== undefined && { durationMs }) };
    }
    case 'release':
      return { cmd: 'release', ips: strings(o, 'ips', 'release') };
    case 'exit':
      return { cmd: 'exit' };
    default:
      throw new Error(`command: "cmd" must be use, assign, release or exit, got ${JSON.stringify(o['cmd'])}`);
  }
}

/** The parent's view of a reply line (the worker is ours, but a crash may print anything). */
export function parseReply(text: string): WorkerReply {
  const o = parseJson(text, 'worker reply');
  switch (o['type']) {
    case 'ready':
      return { type: 'ready', node: str(o, 'node', 'ready'), pid: num(o, 'pid', 'ready') };
    case 'ok':
      if (o['cmd'] !== 'use') throw new Error('ok: "cmd" must be "use"');
      return { type: 'ok', cmd: 'use' };
    case 'error':
      return { type: 'error', message: str(o, 'message', 'error') };
    case 'result': {
      const cmd = o['cmd'];
      if (cmd !== 'assign' && cmd !== 'release') throw new Error('result: "cmd" must be assign or release');
      const errors = o['errors'];
      if (!Array.isArray(errors)) throw new Error('result: "errors" must be an array');
      const ms = o['ms'];
      if (!Array.isArray(ms) || !ms.every((x): x is number => typeof x === 'number')) {
        throw new Error('result: "ms" must be an array of numbers');
      }
      const retries = o['retries'];
      if (retries !== null && typeof retries !== 'number') throw new Error('result: "retries" must be a number or null');
      return {
        type: 'result',
        cmd,
        ips: strings(o, 'ips', 'result'),
        errors: errors.map((e: unknown) => {
          const r = record(e, 'result error');
          return { name: str(r, 'name', 'result error'), message: str(r, 'message', 'result error') };
        }),
        ms,
        elapsedMs: num(o, 'elapsedMs', 'result'),
        lostWrites: num(o, 'lostWrites', 'result'),
        retries,
      };
    }
    default:
      throw new Error(`worker reply: unknown "type" ${JSON.stringify(o['type'])}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Observation hooks

/** Datastore methods whose `undefined` answer means "lost the race" (create: key exists;
 * update: revision moved; commit: a condition failed). Matched by name, so a method the
 * datastore gains later is counted as soon as it is listed here. */
const CONDITIONAL_WRITES: ReadonlySet<PropertyKey> = new Set(['create', 'update', 'commit']);

export interface WriteCounter {
  lost: number;
}

/** `store` seen through a proxy that counts conditional writes that lost their race: an upper
 * bound for the allocator's retries (a lost write is retried, or skipped to the next block),
 * observable without the allocator's help. Everything else passes through untouched. */
export function countingStore<T extends Datastore>(store: T, counter: WriteCounter): T {
  return new Proxy(store, {
    get(target, prop) {
      const value: unknown = Reflect.get(target, prop, target);
      if (typeof value !== 'function') return value;
      const method = value as (...args: unknown[]) => unknown;
      if (!CONDITIONAL_WRITES.has(prop)) return method.bind(target);
      return async (...args: unknown[]): Promise<unknown> => {
        const result: unknown = await method.apply(target, args);
        if (result === undefined) counter.lost++;
        return result;
      };
    },
  });
}

/** The allocator's own count of retried attempts (an attempt that lost a create or
 * compare-and-swap and ran again on fresh reads): Allocator.stats.conflicts, cumulative per
 * Allocator; the worker reports the difference over a command. The one place to adapt if that
 * counter moves; returning undefined makes the benchmark print n/a (lostWrites still shows the
 * races lost at the store). */
export function allocatorRetries(allocator: Allocator): number | undefined {
  return allocator.stats.conflicts;
}

// ---------------------------------------------------------------------------------------------
// Worker

function send(reply: WorkerReply): void {
  process.stdout.write(`${JSON.stringify(reply)}\n`);
}

function describe(err: unknown): WorkerError {
  if (err instanceof Error) return { name: err.name || 'Error', message: err.message || '(no message)' };
  return { name: 'Error', message: String(err) || '(no message)' };
}

class Host {
  private readonly counter: WriteCounter = { lost: 0 };
  private readonly store: Datastore;
  private allocator: Allocator;
  private rawKey: string;
  private pool: string;
  private readonly handle: string;

  constructor(
    private readonly job: WorkerJob,
    store: EtcdStore,
  ) {
    this.store = countingStore(store, this.counter);
    this.handle = `worker-${job.node}`;
    this.pool = job.pool;
    this.allocator = this.makeAllocator(job.root);
    this.rawKey = `${job.root}/bench-raw/${job.node}`;
  }

  private makeAllocator(keyRoot: string): Allocator {
    return new Allocator({ store: this.store, keys: new Keys(keyRoot), node: this.job.node });
  }

  async use(keyRoot: string, pool: string | undefined): Promise<void> {
    this.allocator = this.makeAllocator(keyRoot);
    if (pool !== undefined) this.pool = pool;
    this.rawKey = `${keyRoot}/bench-raw/${this.job.node}`;
    if (this.job.mode === 'raw') await this.store.create(this.rawKey, '0');
  }

  private retries(): number | undefined {
    return this.job.mode === 'raw' ? undefined : allocatorRetries(this.allocator);
  }

  /** Runs `op` count times, or for durationMs, or both (whichever ends first), one at a time. */
  private async repeat(count: number, durationMs: number, op: (i: number) => Promise<string | undefined>): Promise<WorkerResult> {
    const lostBefore = this.counter.lost;
    const retriesBefore = this.retries();
    const ips: string[] = [];
    const errors: WorkerError[] = [];
    const ms: number[] = [];
    const start = performance.now();
    for (let i = 0; i < count && performance.now() - start < durationMs; i++) {
      const t0 = performance.now();
      try {
        const ip = await op(i);
        if (ip !== undefined) ips.push(ip);
      } catch (err) {
        errors.push(describe(err));
      }
      ms.push(performance.now() - t0);
    }
    const retriesAfter = this.retries();
    return {
      type: 'result',
      cmd: 'assign',
      ips,
      errors,
      ms,
      elapsedMs: performance.now() - start,
      lostWrites: this.counter.lost - lostBefore,
      retries: retriesBefore === undefined || retriesAfter === undefined ? null : retriesAfter - retriesBefore,
    };
  }

  assign(count: number | undefined, durationMs: number | undefined): Promise<WorkerResult> {
    const n = count ?? MAX_COUNT;
    const d = durationMs ?? Number.POSITIVE_INFINITY;
    if (this.job.mode === 'raw') return this.repeat(n, d, () => this.rawOp());
    return this.repeat(n, d, async () => {
      const r = await this.allocator.autoAssign({ family: 4, pools: [this.pool], owner: { handle: this.handle, kind: 'container' } });
      return r.ip;
    });
  }

  async release(ips: readonly string[]): Promise<WorkerResult> {
    const result = await this.repeat(ips.length, Number.POSITIVE_INFINITY, async (i) => {
      const ip = ips[i] as string;
      const r = await this.allocator.release({ ip, requester: { handle: this.handle } });
      if (r.status !== 'released') throw new Error(`release ${ip}: ${r.status}`);
      return ip;
    });
    return { ...result, cmd: 'release' };
  }

  /** get + compare-and-swap of our own key: what one allocation costs at the least. */
  private async rawOp(): Promise<undefined> {
    const kv = await this.store.get(this.rawKey);
    if (kv === undefined) throw new Error(`raw key ${this.rawKey} is missing (send "use" first)`);
    const written = await this.store.update(this.rawKey, String(Number(kv.value) + 1), kv.revision);
    if (written === undefined) throw new Error(`raw key ${this.rawKey}: compare-and-swap lost on a key nobody else writes`);
    return undefined;
  }
}

async function readJob(lines: AsyncIterator<string>): Promise<WorkerJob> {
  const arg = process.argv[2];
  if (arg !== undefined) return parseJob(arg);
  const first = await lines.next();
  if (first.done === true) process.exit(0);
  return parseJob(first.value);
}

async function main(): Promise<void> {
  // The parent is gone (stdin closed, or our replies have no reader): stop at once.
  process.stdout.on('error', () => process.exit(0));
  const rl = createInterface({ input: process.stdin, crlfDelay: Number.POSITIVE_INFINITY });
  rl.once('close', () => process.exit(0));
  const lines = rl[Symbol.asyncIterator]();
  const job = await readJob(lines);
  // Generous deadlines: 8 of these start at once on a 2-core machine that runs other tests too,
  // and what the test measures is correctness under contention, not etcd's latency.
  const store = await EtcdStore.open({ endpoints: job.endpoints, dialTimeoutMs: 15_000, requestTimeoutMs: 30_000 });
  const host = new Host(job, store);
  await host.use(job.root, undefined);
  send({ type: 'ready', node: job.node, pid: process.pid });
  for (;;) {
    const next = await lines.next();
    if (next.done === true) break;
    if (next.value.trim() === '') continue;
    let command: WorkerCommand;
    try {
      command = parseCommand(next.value);
    } catch (err) {
      send({ type: 'error', message: describe(err).message });
      continue;
    }
    switch (command.cmd) {
      case 'use':
        try {
          await host.use(command.root, command.pool);
          send({ type: 'ok', cmd: 'use' });
        } catch (err) {
          send({ type: 'error', message: `use ${command.root}: ${describe(err).message}` });
        }
        break;
      case 'assign':
        send(await host.assign(command.count, command.durationMs));
        break;
      case 'release':
        send(await host.release(command.ips));
        break;
      case 'exit':
        await store.close();
        process.exit(0);
    }
  }
  process.exit(0);
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`allocator-worker: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  });
}
