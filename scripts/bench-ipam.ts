// Benchmark: IPAM with many hosts on one etcd (a private etcd started for the run):
//   (a) contention: 8 host processes allocating from one /16 (never full), allocations per second,
//       against the raw rate of the same etcd measured by 8 processes each doing get +
//       compare-and-swap on a key of its own (the floor cost of one allocation), in alternating
//       pairs of runs; the ratio alloc/raw, median and spread over the pairs;
//   (b) near exhaustion: 8 hosts ask together for exactly the 256 addresses of a /24 with /26
//       blocks (4 blocks for 8 hosts), rounds clean out of rounds run (same check as the
//       ipam-contention integration test);
//   (c) scale: one host's assign + release p50/p99 on a pool with no other host, and on one where
//       1,000 other hosts hold a block each, alternated in chunks so drift hits both equally.
//
//   npm run bench:ipam -- [--quick] [--pairs N] [--seconds S] [--rounds N] [--hosts N] [--ops N]
//                         [--setup-concurrency N]
//   defaults: 5 pairs of 3 s, 30 rounds, 1,000 hosts, 500 ops per setup, setup one host at a time;
//   --quick: 3 pairs of 1 s, 10 rounds, 200 ops (still 1,000 hosts). About 3 / 1.5 minutes on 2 CPUs.
//
// "lost races" are conditional writes (create, compare-and-swap, commit) that the store answered
// with a conflict, counted in each host's store client; "retries" are the allocator's own count of
// attempts that lost a race and ran again (Allocator.stats.conflicts, read through
// allocatorRetries in test/harness/allocator-worker.ts).
import { execFile } from 'node:child_process';
import { cpus, loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import type { Datastore } from '../datastore/datastore';
import { EtcdStore } from '../datastore/etcd-store';
import { Keys } from '../datastore/keys';
import { Allocator } from '../ipam/allocator';
import { countingStore, type WorkerResult, type WriteCounter } from '../test/harness/allocator-worker';
import { startEtcd } from '../test/harness/etcd';
import { HostGroup, fillRound, freshRoot, type FillRound } from '../test/harness/ipam-hosts';
import { median, ms, percentile, printTable } from './bench-report';

const HOSTS = 8;
const CONTENTION_POOL = '10.32.0.0/16';
const RACE_POOL = '10.99.0.0/24';
const RACE_PER_HOST = 32;
/** 16,384 blocks of /26: room for thousands of hosts. */
const SCALE_POOL = '10.0.0.0/12';
const SCALE_CHUNK = 25;
const SCALE_WARMUP = 10;
const CONTENTION_TARGET = 0.5;
const SCALE_TARGET = 1.2;
const OWNER = { handle: 'bench', kind: 'container' } as const;

// ---------------------------------------------------------------------------------------------
// Numbers



const fixed = (v: number, digits = 2): string => (Number.isFinite(v) ? v.toFixed(digits) : '-');
const round3 = (v: number): number | null => (Number.isFinite(v) ? Math.round(v * 1000) / 1000 : null);



// ---------------------------------------------------------------------------------------------
// (a) Contention

interface Phase {
  readonly perSecond: number;
  readonly ops: number;
  readonly errors: number;
  readonly lostWrites: number;
  readonly retries: number | null;
  readonly firstError: string | undefined;
}

/** All hosts of the group run for `seconds` together in a fresh key root; successful operations
 * per second of wall time, from the command to the last reply. */
async function phase(group: HostGroup, admin: Datastore, withPool: boolean, seconds: number): Promise<Phase> {
  const root = freshRoot('bench-ipam');
  if (withPool) await new Allocator({ store: admin, keys: new Keys(root), node: 'bench-admin' }).addPool({ cidr: CONTENTION_POOL });
  await group.use(root, CONTENTION_POOL);
  const t0 = performance.now();
  const results: WorkerResult[] = await group.all({ cmd: 'assign', durationMs: Math.round(seconds * 1000) });
  const wallMs = performance.now() - t0;
  const errors = results.flatMap((r) => r.errors);
  const ops = results.reduce((n, r) => n + r.ms.length, 0) - errors.length;
  const first = errors[0];
  return {
    perSecond: (ops / wallMs) * 1000,
    ops,
    errors: errors.length,
    lostWrites: results.reduce((n, r) => n + r.lostWrites, 0),
    retries: results.every((r) => r.retries !== null) ? results.reduce((n, r) => n + (r.retries ?? 0), 0) : null,
    firstError: first === undefined ? undefined : `${first.name}: ${first.message}`,
  };
}

interface Contention {
  readonly pairs: ReadonlyArray<{ readonly raw: Phase; readonly alloc: Phase; readonly ratio: number }>;
  readonly ratio: number;
  readonly ratioMin: number;
  readonly ratioMax: number;
  readonly rawPerSecond: number;
  readonly allocPerSecond: number;
  readonly lostPerAlloc: number;
  readonly retriesPerAlloc: number | null;
  readonly errors: number;
}

async function contention(alloc: HostGroup, raw: HostGroup, admin: Datastore, pairs: number, seconds: number): Promise<Contention> {
  // Warm-up: connections, JIT, etcd's first compactions of nothing.
  await phase(raw, admin, false, Math.min(0.5, seconds));
  await phase(alloc, admin, true, Math.min(0.5, seconds));
  const out: Array<{ raw: Phase; alloc: Phase; ratio: number }> = [];
  for (let i = 0; i < pairs; i++) {
    // Alternate which goes first, so drift in the machine's load hits both equally.
    let r: Phase;
    let a: Phase;
    if (i % 2 === 0) {
      r = await phase(raw, admin, false, seconds);
      a = await phase(alloc, admin, true, seconds);
    } else {
      a = await phase(alloc, admin, true, seconds);
      r = await phase(raw, admin, false, seconds);
    }
    const ratio = a.perSecond / r.perSecond;
    out.push({ raw: r, alloc: a, ratio });
    console.log(
      `  pair ${i + 1}/${pairs}: raw ${Math.round(r.perSecond)} ops/s, alloc ${Math.round(a.perSecond)} allocs/s, ratio ${fixed(ratio)}, ` +
        `retries ${a.retries ?? 'n/a'}, lost races ${a.lostWrites} / ${a.ops} allocs` +
        (a.errors + r.errors > 0 ? `, errors ${a.errors} alloc / ${r.errors} raw (${a.firstError ?? r.firstError ?? ''})` : ''),
    );
  }
  const allocs = out.reduce((n, p) => n + p.alloc.ops, 0);
  const retriesKnown = out.every((p) => p.alloc.retries !== null);
  return {
    pairs: out,
    ratio: median(out.map((p) => p.ratio)),
    ratioMin: Math.min(...out.map((p) => p.ratio)),
    ratioMax: Math.max(...out.map((p) => p.ratio)),
    rawPerSecond: median(out.map((p) => p.raw.perSecond)),
    allocPerSecond: median(out.map((p) => p.alloc.perSecond)),
    lostPerAlloc: out.reduce((n, p) => n + p.alloc.lostWrites, 0) / allocs,
    retriesPerAlloc: retriesKnown ? out.reduce((n, p) => n + (p.alloc.retries ?? 0), 0) / allocs : null,
    errors: out.reduce((n, p) => n + p.alloc.errors + p.raw.errors, 0),
  };
}

// ---------------------------------------------------------------------------------------------
// (b) Near exhaustion

interface Exhaustion {
  readonly rounds: number;
  readonly clean: number;
  readonly failedRequests: number;
  readonly lostPerRound: number;
  readonly roundMs: number;
  readonly problems: readonly string[];
}

async function exhaustion(group: HostGroup, admin: Datastore, rounds: number): Promise<Exhaustion> {
  const results: FillRound[] = [];
  const problems: string[] = [];
  for (let i = 0; i < rounds; i++) {
    const r = await fillRound(group, admin, { pool: RACE_POOL, perHost: RACE_PER_HOST });
    results.push(r);
    if (r.problems.length > 0) problems.push(`round ${i + 1}: ${r.problems.join('; ')}`);
  }
  const clean = results.filter((r) => r.problems.length === 0).length;
  console.log(`  ${clean}/${rounds} rounds clean${problems.length === 0 ? '' : `; first failure: ${problems[0]}`}`);
  return {
    rounds,
    clean,
    failedRequests: results.reduce((n, r) => n + r.errors.length, 0),
    lostPerRound: median(results.map((r) => r.lostWrites)),
    roundMs: median(results.map((r) => r.wallMs)),
    problems,
  };
}

// ---------------------------------------------------------------------------------------------
// (c) Scale

interface Latency {
  readonly pair: number[];
  readonly assign: number[];
  readonly release: number[];
}

interface Scale {
  readonly hosts: number;
  readonly setupMs: number;
  readonly setupLost: number;
  readonly empty: Latency;
  readonly loaded: Latency;
  readonly ratioP50: number;
  readonly ratioP99: number;
}

/** One Allocator per other host, each claiming a block through the public API (so whatever
 * indexes the allocator keeps are written as in real life), `concurrency` at a time. One at a
 * time is the fastest measured on 2 CPUs: claimers in parallel race for the same lowest free
 * block, and every lost race re-reads the pool's blocks (1,000 blocks: 18 s one at a time,
 * 135 s eight at a time). */
async function claimBlocks(store: Datastore, keys: Keys, hosts: number, concurrency: number): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < hosts; i = next++) {
      const node = `host-${String(i + 1).padStart(4, '0')}`;
      await new Allocator({ store, keys, node }).autoAssign({ family: 4, owner: OWNER });
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, hosts) }, worker));
}

async function assignRelease(allocator: Allocator, into: Latency): Promise<void> {
  const t0 = performance.now();
  const { ip } = await allocator.autoAssign({ family: 4, owner: OWNER });
  const t1 = performance.now();
  const r = await allocator.release({ ip, requester: { handle: OWNER.handle } });
  const t2 = performance.now();
  if (r.status !== 'released') throw new Error(`release ${ip}: ${r.status}`);
  into.assign.push(t1 - t0);
  into.release.push(t2 - t1);
  into.pair.push(t2 - t0);
}

async function scale(store: EtcdStore, hosts: number, ops: number, concurrency: number): Promise<Scale> {
  const emptyKeys = new Keys(freshRoot('bench-ipam-empty'));
  const loadedKeys = new Keys(freshRoot('bench-ipam-loaded'));
  const counter: WriteCounter = { lost: 0 };
  const counted = countingStore(store, counter);
  for (const keys of [emptyKeys, loadedKeys]) {
    await new Allocator({ store, keys, node: 'bench-admin' }).addPool({ cidr: SCALE_POOL });
  }
  const t0 = performance.now();
  await claimBlocks(counted, loadedKeys, hosts, concurrency);
  const setupMs = performance.now() - t0;
  console.log(`  ${hosts} other hosts claimed a block each in ${(setupMs / 1000).toFixed(1)} s (${concurrency} at a time, ${counter.lost} lost races)`);

  const empty = new Allocator({ store, keys: emptyKeys, node: 'bench-host' });
  const loaded = new Allocator({ store, keys: loadedKeys, node: 'bench-host' });
  const warm: Latency = { pair: [], assign: [], release: [] };
  for (let i = 0; i < SCALE_WARMUP; i++) {
    await assignRelease(empty, warm);
    await assignRelease(loaded, warm);
  }
  const e: Latency = { pair: [], assign: [], release: [] };
  const l: Latency = { pair: [], assign: [], release: [] };
  // Chunks in the order E L L E E L ...: each setup goes first half of the time.
  for (let done = 0, chunk = 0; done < ops; chunk++) {
    const n = Math.min(SCALE_CHUNK, ops - done);
    const order: Array<[Allocator, Latency]> = chunk % 2 === 0 ? [[empty, e], [loaded, l]] : [[loaded, l], [empty, e]];
    for (const [allocator, into] of order) {
      for (let i = 0; i < n; i++) await assignRelease(allocator, into);
    }
    done += n;
  }
  return {
    hosts,
    setupMs,
    setupLost: counter.lost,
    empty: e,
    loaded: l,
    ratioP50: percentile(l.pair, 50) / percentile(e.pair, 50),
    ratioP99: percentile(l.pair, 99) / percentile(e.pair, 99),
  };
}

// ---------------------------------------------------------------------------------------------

function etcdVersion(): Promise<string> {
  return new Promise((resolve) => {
    execFile(process.env['ETCD_BINARY'] ?? '/usr/bin/etcd', ['--version'], (err, stdout) => {
      resolve(err ? 'etcd version unknown' : (stdout.split('\n')[0] ?? '').trim());
    });
  });
}

function positive(name: string, text: string | undefined, integer = true): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) {
    throw new Error(`--${name} must be a positive ${integer ? 'integer' : 'number'}, got ${String(text)}`);
  }
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      pairs: { type: 'string' },
      seconds: { type: 'string' },
      rounds: { type: 'string' },
      hosts: { type: 'string' },
      ops: { type: 'string' },
      'setup-concurrency': { type: 'string', default: '1' },
    },
  });
  const quick = values.quick === true;
  const pairs = positive('pairs', values.pairs ?? (quick ? '3' : '5'));
  const seconds = positive('seconds', values.seconds ?? (quick ? '1' : '3'), false);
  const rounds = positive('rounds', values.rounds ?? (quick ? '10' : '30'));
  const hosts = positive('hosts', values.hosts ?? '1000');
  const ops = positive('ops', values.ops ?? (quick ? '200' : '500'));
  const concurrency = positive('setup-concurrency', values['setup-concurrency']);

  // Everything started is stopped again, also on failure or Ctrl-C (workers also exit by
  // themselves when we die, as their stdin closes; the etcd harness kills etcd on exit).
  const cleanups: Array<() => Promise<unknown>> = [];
  let cleaning: Promise<void> | undefined;
  const cleanup = (): Promise<void> =>
    (cleaning ??= (async () => {
      for (const c of cleanups.reverse()) await c().catch((err: unknown) => console.error(`cleanup: ${String(err)}`));
    })());
  const onSignal = (): void => {
    console.error('interrupted: cleaning up');
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const started = performance.now();
  try {
    const etcd = await startEtcd();
    cleanups.push(() => etcd.stop());
    const admin = await EtcdStore.open({ endpoints: etcd.endpoints });
    cleanups.push(() => admin.close());
    console.log(
      `IPAM benchmark${quick ? ' (--quick)' : ''}: ${HOSTS} host processes, ${pairs} pairs of ${seconds} s, ${rounds} exhaustion rounds, ` +
        `${hosts} hosts × ${ops} ops for scale; node ${process.version}, ${cpus().length} CPUs, ${await etcdVersion()}, ` +
        `load average ${fixed(loadavg()[0] ?? Number.NaN)}`,
    );
    const t0 = performance.now();
    const [alloc, raw] = await Promise.all([
      HostGroup.start({ count: HOSTS, endpoints: etcd.endpoints, pool: CONTENTION_POOL, mode: 'allocator' }),
      HostGroup.start({ count: HOSTS, endpoints: etcd.endpoints, pool: CONTENTION_POOL, mode: 'raw', nodePrefix: 'raw' }),
    ]);
    cleanups.push(() => alloc.stop(), () => raw.stop());
    console.log(`${2 * HOSTS} worker processes ready in ${ms(performance.now() - t0)}`);

    console.log(`(a) contention: ${HOSTS} hosts allocating from ${CONTENTION_POOL} vs ${HOSTS} clients doing get + compare-and-swap`);
    const a = await contention(alloc, raw, admin, pairs, seconds);
    await raw.stop();

    console.log(`(b) near exhaustion: ${HOSTS} hosts × ${RACE_PER_HOST} addresses of ${RACE_POOL} (/26 blocks), ${rounds} rounds`);
    const b = await exhaustion(alloc, admin, rounds);
    await alloc.stop();

    console.log(`(c) scale: one host's assign + release, empty pool vs ${hosts} other hosts holding a block (${SCALE_POOL})`);
    const c = await scale(admin, hosts, ops, concurrency);

    const lat = (l: Latency): string => `p50 ${ms(percentile(l.pair, 50))}, p99 ${ms(percentile(l.pair, 99))}`;
    const parts = (l: Latency): string =>
      `assign p50 ${ms(percentile(l.assign, 50))}, release p50 ${ms(percentile(l.release, 50))}, n=${l.pair.length}`;
    const retries = a.retriesPerAlloc === null ? 'n/a' : fixed(a.retriesPerAlloc);
    console.log('');
    printTable([
      { what: 'metric', value: 'value', target: 'target', detail: 'details' },
      {
        what: 'contention: alloc/raw (median)',
        value: fixed(a.ratio),
        target: `>= ${CONTENTION_TARGET}`,
        pass: a.ratio >= CONTENTION_TARGET,
        detail: `spread ${fixed(a.ratioMin)}-${fixed(a.ratioMax)} over ${pairs} pairs of ${seconds} s`,
      },
      { what: '  allocations/s (8 hosts)', value: String(Math.round(a.allocPerSecond)), detail: `raw get+CAS ${Math.round(a.rawPerSecond)} ops/s (medians)` },
      { what: '  retries per allocation', value: retries, detail: `conflicts lost at the store per allocation: ${fixed(a.lostPerAlloc)}` },
      { what: '  failed operations', value: String(a.errors), pass: a.errors === 0 },
      {
        what: 'near exhaustion: clean rounds',
        value: `${b.clean}/${b.rounds}`,
        target: `${b.rounds}/${b.rounds}`,
        pass: b.clean === b.rounds,
        detail: `${b.failedRequests} failed requests; per round median ${ms(b.roundMs)}, ${b.lostPerRound} lost races`,
      },
      { what: `scale: empty pool`, value: ms(percentile(c.empty.pair, 50)), detail: `${lat(c.empty)}; ${parts(c.empty)}` },
      { what: `scale: ${c.hosts} other hosts`, value: ms(percentile(c.loaded.pair, 50)), detail: `${lat(c.loaded)}; ${parts(c.loaded)}` },
      { what: '  ratio p50', value: fixed(c.ratioP50), target: `< ${SCALE_TARGET}`, pass: c.ratioP50 < SCALE_TARGET },
      { what: '  ratio p99', value: fixed(c.ratioP99), target: `< ${SCALE_TARGET}`, pass: c.ratioP99 < SCALE_TARGET },
      { what: `  setup (${c.hosts} blocks)`, value: `${(c.setupMs / 1000).toFixed(1)} s`, detail: `${concurrency} at a time, ${c.setupLost} lost races` },
    ]);
    const total = (performance.now() - started) / 1000;
    console.log(`total ${total.toFixed(0)} s; load average at the end ${fixed(loadavg()[0] ?? Number.NaN)} (above ${cpus().length} means the CPUs were contended)`);
    const stats = (l: Latency): Record<string, number | null> => ({
      p50: round3(percentile(l.pair, 50)),
      p99: round3(percentile(l.pair, 99)),
      assignP50: round3(percentile(l.assign, 50)),
      releaseP50: round3(percentile(l.release, 50)),
      n: l.pair.length,
    });
    console.log(
      JSON.stringify({
        bench: 'ipam',
        quick,
        node: process.version,
        cpus: cpus().length,
        contention: {
          hosts: HOSTS,
          pairs,
          seconds,
          ratioMedian: round3(a.ratio),
          ratioMin: round3(a.ratioMin),
          ratioMax: round3(a.ratioMax),
          allocPerSecond: round3(a.allocPerSecond),
          rawPerSecond: round3(a.rawPerSecond),
          ratios: a.pairs.map((p) => round3(p.ratio)),
          lostRacesPerAlloc: round3(a.lostPerAlloc),
          retriesPerAlloc: a.retriesPerAlloc === null ? null : round3(a.retriesPerAlloc),
          failedOps: a.errors,
          target: CONTENTION_TARGET,
        },
        exhaustion: { rounds: b.rounds, clean: b.clean, failedRequests: b.failedRequests, roundMsMedian: round3(b.roundMs) },
        scale: {
          hosts: c.hosts,
          setupMs: round3(c.setupMs),
          setupLostRaces: c.setupLost,
          empty: stats(c.empty),
          loaded: stats(c.loaded),
          ratioP50: round3(c.ratioP50),
          ratioP99: round3(c.ratioP99),
          target: SCALE_TARGET,
        },
        totalSeconds: round3(total),
      }),
    );
  } finally {
    await cleanup();
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench-ipam: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
