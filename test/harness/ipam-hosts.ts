// The parent side of allocator-worker.ts: starts N host processes, sends them commands together
// (after all are ready, so they start at the same moment), and runs the "fill the pool exactly"
// race that the contention test and `npm run bench:ipam` share, with one definition of a clean
// round.
//
// Workers are killed when the parent exits, and they exit by themselves when their stdin closes,
// so neither a failed test nor a crashed parent leaves one behind.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';
import type { Datastore } from '../../datastore/datastore';
import { Keys } from '../../datastore/keys';
import { Allocator } from '../../ipam/allocator';
import { containsIp, parseCidr, tryParseIp, type Cidr } from '../../ipam/cidr';
import {
  parseReply,
  type WorkerCommand,
  type WorkerError,
  type WorkerJob,
  type WorkerMode,
  type WorkerReply,
  type WorkerResult,
} from './allocator-worker';

const WORKER = resolve(__dirname, 'allocator-worker.js');
const READY_TIMEOUT_MS = 30_000;
const EXIT_GRACE_MS = 2_000;

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** A key root nobody else uses: every test and round gets its own. */
export function freshRoot(label = 't'): string {
  return `/${label}-${randomUUID()}`;
}

interface Pending {
  readonly resolve: (reply: WorkerReply) => void;
  readonly reject: (err: Error) => void;
}

/** One worker process; replies are matched to commands in order (one reply per command). */
export class WorkerHost {
  private readonly pending: Pending[] = [];
  private stderr = '';
  private exit: string | undefined;
  private readonly exited: Promise<void>;

  private constructor(
    readonly node: string,
    private readonly child: ChildProcess,
  ) {
    live.add(child);
    this.exited = new Promise((done) => {
      child.once('exit', (code, signal) => {
        live.delete(child);
        this.exit = signal === null ? `exit code ${code}` : `signal ${signal}`;
        this.failAll(new Error(`worker ${node} ended (${this.exit})${this.stderr === '' ? '' : `: ${this.stderr.trim()}`}`));
        done();
      });
    });
    // A spawn failure is an 'error' event (and no 'exit'); without a listener it would crash us.
    child.once('error', (err) => {
      live.delete(child);
      this.exit ??= `spawn failed: ${err.message}`;
      this.failAll(new Error(`worker ${node}: ${err.message}`));
    });
    child.stderr?.setEncoding('utf8').on('data', (s: string) => {
      this.stderr = (this.stderr + s).slice(-4000);
    });
    // Writing to a worker that just died must not crash the parent; the exit handler reports it.
    child.stdin?.on('error', () => undefined);
    if (child.stdout !== null) {
      createInterface({ input: child.stdout, crlfDelay: Number.POSITIVE_INFINITY }).on('line', (line) => this.onLine(line));
    }
  }

  static async start(job: WorkerJob): Promise<WorkerHost> {
    const child = spawn(process.execPath, [WORKER, JSON.stringify(job)], { stdio: ['pipe', 'pipe', 'pipe'] });
    const host = new WorkerHost(job.node, child);
    const ready = host.expectReply();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`worker ${job.node} not ready within ${READY_TIMEOUT_MS} ms: ${host.stderr}`)), READY_TIMEOUT_MS);
    });
    try {
      const reply = await Promise.race([ready, timeout]);
      if (reply.type !== 'ready') throw new Error(`worker ${job.node}: expected ready, got ${JSON.stringify(reply)}`);
      return host;
    } catch (err) {
      await host.kill();
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Writes the command now; the promise is its reply. */
  request(command: WorkerCommand): Promise<WorkerReply> {
    if (this.exit !== undefined) return Promise.reject(new Error(`worker ${this.node} has ended (${this.exit}): ${this.stderr.trim()}`));
    const reply = this.expectReply();
    this.child.stdin?.write(`${JSON.stringify(command)}\n`);
    return reply;
  }

  async result(command: WorkerCommand): Promise<WorkerResult> {
    const reply = await this.request(command);
    if (reply.type !== 'result') throw new Error(`worker ${this.node}: ${command.cmd} answered ${JSON.stringify(reply)}`);
    return reply;
  }

  /** Asks the worker to exit; SIGKILL if it has not within the grace time. */
  async stop(): Promise<void> {
    if (this.exit === undefined) {
      this.child.stdin?.end(`${JSON.stringify({ cmd: 'exit' })}\n`);
      const timer = setTimeout(() => this.child.kill('SIGKILL'), EXIT_GRACE_MS);
      await this.exited;
      clearTimeout(timer);
    }
  }

  async kill(): Promise<void> {
    if (this.exit === undefined && this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGKILL');
      await this.exited;
    }
  }

  private expectReply(): Promise<WorkerReply> {
    return new Promise((resolve, reject) => this.pending.push({ resolve, reject }));
  }

  private onLine(line: string): void {
    const waiter = this.pending.shift();
    if (waiter === undefined) {
      this.stderr = `${this.stderr}\nunexpected output: ${line}`.slice(-4000);
      return;
    }
    try {
      waiter.resolve(parseReply(line));
    } catch (err) {
      waiter.reject(new Error(`worker ${this.node}: ${err instanceof Error ? err.message : String(err)}: ${line}`));
    }
  }

  private failAll(err: Error): void {
    for (const p of this.pending.splice(0)) p.reject(err);
  }
}

export interface HostGroupOptions {
  readonly count: number;
  readonly endpoints: readonly string[];
  readonly pool: string;
  readonly mode: WorkerMode;
  /** Node names are `${nodePrefix}-1` ... */
  readonly nodePrefix?: string;
  /** Initial key root; switch with use(). */
  readonly root?: string;
}

/** N workers that receive each command together. */
export class HostGroup {
  private constructor(readonly hosts: readonly WorkerHost[]) {}

  static async start(options: HostGroupOptions): Promise<HostGroup> {
    const root = options.root ?? freshRoot();
    const started = await Promise.allSettled(
      Array.from({ length: options.count }, (_, i) =>
        WorkerHost.start({
          endpoints: options.endpoints,
          root,
          node: `${options.nodePrefix ?? 'host'}-${i + 1}`,
          pool: options.pool,
          mode: options.mode,
        }),
      ),
    );
    const hosts = started.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
    const failed = started.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed !== undefined) {
      await Promise.all(hosts.map((h) => h.kill()));
      throw failed.reason;
    }
    return new HostGroup(hosts);
  }

  get size(): number {
    return this.hosts.length;
  }

  /** Every worker switches to the key root (a fresh round) and, if given, the pool. */
  async use(root: string, pool?: string): Promise<void> {
    const replies = await Promise.all(this.hosts.map((h) => h.request({ cmd: 'use', root, ...(pool !== undefined && { pool }) })));
    const bad = replies.find((r) => r.type !== 'ok');
    if (bad !== undefined) throw new Error(`use ${root}: ${JSON.stringify(bad)}`);
  }

  /** The same command to every worker, all written before any reply is awaited. */
  all(command: WorkerCommand): Promise<WorkerResult[]> {
    const replies = this.hosts.map((h) => h.result(command));
    return Promise.all(replies);
  }

  stop(): Promise<void> {
    return Promise.all(this.hosts.map((h) => h.stop())).then(() => undefined);
  }

  kill(): Promise<void> {
    return Promise.all(this.hosts.map((h) => h.kill())).then(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------------
// The fill-the-pool race

export interface FillOptions {
  /** Pool CIDR; its address count must be hosts × perHost. */
  readonly pool: string;
  readonly blockSize?: number;
  readonly perHost: number;
}

export interface FillRound {
  readonly root: string;
  /** From the command to the last reply. */
  readonly wallMs: number;
  readonly requested: number;
  readonly ips: readonly string[];
  readonly errors: readonly WorkerError[];
  /** Latency of each request, every host's. */
  readonly opMs: readonly number[];
  /** Writes lost at the store (create / compare-and-swap conflicts) over all hosts. */
  readonly lostWrites: number;
  /** The allocators' own retry counts, when they expose them. */
  readonly retries: number | null;
  /** The one request beyond capacity (asked only when every request succeeded). */
  readonly beyond: WorkerResult | undefined;
  /** Addresses in use according to listBlocks() after the round. */
  readonly stored: { readonly used: number; readonly blocks: number; readonly affinities: readonly string[] };
  /** Empty when the round is clean. */
  readonly problems: readonly string[];
}

function summarizeErrors(errors: readonly WorkerError[]): string {
  const byKind = new Map<string, { count: number; example: string }>();
  for (const e of errors) {
    const entry = byKind.get(e.name) ?? { count: 0, example: e.message };
    entry.count++;
    byKind.set(e.name, entry);
  }
  return [...byKind].map(([name, { count, example }]) => `${name} ×${count} ("${example}")`).join('; ');
}

/** Addresses that are not IPs of the pool. */
function outside(pool: Cidr, ips: readonly string[]): string[] {
  return ips.filter((ip) => {
    const parsed = tryParseIp(ip);
    return parsed === undefined || !containsIp(pool, parsed);
  });
}

/** One round in a fresh key root: the pool is created, every host asks for perHost addresses
 * together, then one more address is asked for. Clean means: every request succeeded (a
 * ContentionError is a failure too), the addresses are distinct and inside the pool, the one
 * beyond capacity failed with PoolExhaustedError saying "every address is in use", and the store
 * holds exactly the addresses handed out. */
export async function fillRound(group: HostGroup, admin: Datastore, options: FillOptions): Promise<FillRound> {
  const pool = parseCidr(options.pool, 'pool');
  const requested = group.size * options.perHost;
  const capacity = 2 ** ((pool.family === 4 ? 32 : 128) - pool.prefix);
  if (requested !== capacity) throw new Error(`fillRound: ${group.size} hosts × ${options.perHost} ≠ ${capacity} addresses of ${options.pool}`);
  const root = freshRoot('ipam-race');
  const allocator = new Allocator({ store: admin, keys: new Keys(root), node: 'race-admin' });
  await allocator.addPool({ cidr: options.pool, ...(options.blockSize !== undefined && { blockSize: options.blockSize }) });
  await group.use(root, options.pool);

  const t0 = performance.now();
  const results = await group.all({ cmd: 'assign', count: options.perHost });
  const wallMs = performance.now() - t0;

  const ips = results.flatMap((r) => r.ips);
  const errors = results.flatMap((r) => r.errors);
  const problems: string[] = [];
  if (errors.length > 0) problems.push(`${errors.length} of ${requested} requests failed: ${summarizeErrors(errors)}`);
  if (ips.length + errors.length !== requested) problems.push(`${ips.length + errors.length} answers to ${requested} requests`);
  const seen = new Set<string>();
  const duplicates = new Set(ips.filter((ip) => seen.has(ip) || !seen.add(ip)));
  if (duplicates.size > 0) problems.push(`handed out twice: ${[...duplicates].join(', ')}`);
  const stray = outside(pool, ips);
  if (stray.length > 0) problems.push(`outside ${options.pool}: ${stray.join(', ')}`);

  let beyond: WorkerResult | undefined;
  if (errors.length === 0 && group.hosts[0] !== undefined) {
    beyond = await group.hosts[0].result({ cmd: 'assign', count: 1 });
    const [got] = beyond.ips;
    const [error] = beyond.errors;
    if (got !== undefined) problems.push(`request beyond capacity got ${got}`);
    else if (error === undefined) problems.push('request beyond capacity: no answer');
    else if (error.name !== 'PoolExhaustedError' || !error.message.includes('every address is in use')) {
      problems.push(`request beyond capacity: expected PoolExhaustedError "… every address is in use", got ${error.name}: ${error.message}`);
    }
  }

  const blocks = await allocator.listBlocks();
  const used = blocks.reduce((n, b) => n + b.used, 0);
  const handedOut = ips.length + (beyond?.ips.length ?? 0);
  if (used !== handedOut) problems.push(`the store holds ${used} allocations, ${handedOut} were handed out`);
  const retries = results.every((r) => r.retries !== null) ? results.reduce((n, r) => n + (r.retries ?? 0), 0) : null;
  return {
    root,
    wallMs,
    requested,
    ips,
    errors,
    opMs: results.flatMap((r) => r.ms),
    lostWrites: results.reduce((n, r) => n + r.lostWrites, 0),
    retries,
    beyond,
    stored: { used, blocks: blocks.length, affinities: blocks.map((b) => b.block.affinity ?? '-') },
    problems,
  };
}
