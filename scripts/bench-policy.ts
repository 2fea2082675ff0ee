// Benchmark: programming profile policy into the kernel (PolicyDataplane.apply) at scale, inside a
// throwaway network namespace. A deterministic pseudo-random world (N local endpoints with 1-3 of
// M profiles each, a few hundred remote endpoints whose labels feed selector sets) is applied:
//   (a) cold: the first apply into an empty namespace (kernel read + full write), wall clock, and
//       this process's peak memory (RSS high-water mark, sampled heap);
//   (b) one endpoint added on top, K times (a new endpoint each time): median and p90;
//   (c) one profile rule changed, K times; and a no-op apply, K times.
// Then a consistency check: forget the applied state and apply again; the kernel read must show
// that nothing needs writing. Then C-1 more cold applies, each into a fresh namespace with a
// fresh dataplane (nothing cached), for the cold median and p90; and what the cold write holds,
// rules by kind. Everything of ours (chains, sets) and the namespace are removed at
// the end, also on failure or Ctrl-C.
//
//   npm run bench:policy -- [--endpoints N] [--profiles M] [--reps K] [--cold-reps C] [--remote R] [--seed S]
//                           [--no-native] [--no-session]
//
// Models are built from plain records as the agent's PolicyState.input() builds them: the same
// model while nothing changed, and a new model keeps the objects of the endpoints that did not
// change (the render cache is keyed on them).
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpus, loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { run, startCommandsNatively, startCommandsThrough } from '../dataplane/exec';
import { ExecHelper } from '../dataplane/exec-helper';
import { hostVethName } from '../dataplane/names';
import { PolicyDataplane, type ApplyStats } from '../dataplane/policy-dataplane';
import { effectiveLabels } from '../policy/evaluate';
import type { DesiredState, LabelledEndpoint, PolicyEndpoint, PolicyModel } from '../policy/render';
import { parseSelector } from '../policy/selector';
import type { Labels, PortRange, Profile, Rule } from '../policy/types';
import { createNetns, deleteNetns } from '../test/harness/netns';
import { median, ms, percentile, printTable } from './bench-report';
import { mulberry32 } from '../test/harness/prng';

const PREFIX = 'bench';
const MARK_BIT = 0x100000;
const COLD_TARGET_MS = 1000;
const INCREMENTAL_TARGET_MS = 30;
const MEMORY_SAMPLE_MS = 2;
/** Local endpoints get 198.18.0.0/16 and 2001:db8:18::/48, remote ones 198.19.0.0/16 and
 * 2001:db8:19::/48 (benchmarking and documentation ranges). */
const MAX_ENDPOINTS = 65_000;

// ---------------------------------------------------------------------------------------------
// Deterministic world

const canon = (selector: string): string => parseSelector(selector).text;
const port = (p: number): PortRange => ({ from: p, to: p });
const range = (from: number, to: number): PortRange => ({ from, to });

function profileName(i: number): string {
  // Every 17th name is too long for a chain name and gets hashed, as long Docker network names do.
  return i % 17 === 5 ? `bench-network-with-a-rather-long-name-${i}` : `bench-net-${i}`;
}

/** A realistic mix: same-profile allow, selector + ports, nets, port ranges, ICMP, log + deny. */
function makeProfile(i: number, seed: number, version = 0): Profile {
  // Each profile draws from its own stream, so a new version differs only where `version` is used.
  const random = mulberry32(seed * 100_003 + i);
  const name = profileName(i);
  const k = i % 10;
  const ingress: Rule[] = [
    { action: 'allow', source: { selector: canon(`has(${name})`) }, destination: {} },
    {
      action: 'allow',
      protocol: 'tcp',
      source: { selector: canon(`role == 'frontend-${k}'`) },
      destination: { ports: [port(80), port(443), range(8000 + (version % 90), 8099)] },
    },
    { action: 'allow', protocol: 'icmp', icmp: { type: 8 }, source: {}, destination: {} },
    { action: 'allow', protocol: 'icmpv6', icmp: { type: 128, code: 0 }, source: {}, destination: {} },
  ];
  if (random() < 0.5) {
    ingress.push({
      action: 'allow',
      protocol: 'udp',
      source: { nets: ['198.51.100.0/24', '2001:db8:53::/48'] },
      destination: { ports: [port(53), range(5353, 5355)] },
    });
  }
  if (random() < 0.3) {
    ingress.unshift(
      { action: 'log', protocol: 'tcp', source: { selector: canon("tier == 'untrusted'") }, destination: { ports: [port(22)] } },
      { action: 'deny', protocol: 'tcp', source: { selector: canon("tier == 'untrusted'") }, destination: { ports: [port(22)] } },
    );
  }
  if (random() < 0.3) {
    ingress.push({
      action: 'allow',
      protocol: 'tcp',
      source: { selector: canon(`app in {'api-${k}', 'web-${k}'} && env != 'prod'`), notNets: ['198.19.255.0/24'] },
      destination: { ports: [range(9000, 9100)], notPorts: [port(9050)] },
    });
  }
  if (random() < 0.2) {
    ingress.push({ action: 'deny', source: { nets: [`203.0.113.${k * 16}/28`] }, destination: {} });
  }
  const egress: Rule[] = [
    { action: 'log', protocol: 'tcp', source: {}, destination: { nets: ['169.254.169.254'], ports: [port(80)] } },
    { action: 'deny', protocol: 'tcp', source: {}, destination: { nets: ['169.254.169.254'], ports: [port(80)] } },
  ];
  if (random() < 0.3) {
    egress.push({ action: 'deny', protocol: 'tcp', source: {}, destination: { notSelector: canon(`has(${name})`), ports: [port(5432)] } });
  }
  egress.push({ action: 'allow', source: {}, destination: {} });
  return { name, labels: {}, annotations: {}, ingress, egress, labelsToApply: { [name]: '' } };
}

interface EndpointRecord {
  readonly id: string;
  readonly hostIf: string;
  readonly ipv4: string;
  readonly ipv6: string;
  readonly profiles: readonly string[];
  readonly labels: Labels;
}

function sameLabels(a: Labels, b: Labels): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => Object.hasOwn(b, k) && a[k] === b[k]);
}

function endpointLabels(k: number, random: () => number): Labels {
  const labels: Record<string, string> = {
    role: `frontend-${Math.floor(random() * 10)}`,
    app: `${random() < 0.5 ? 'api' : 'web'}-${k % 10}`,
    env: random() < 0.5 ? 'prod' : 'dev',
  };
  if (random() < 0.05) labels['tier'] = 'untrusted';
  return labels;
}

function makeLocal(i: number, profiles: number, random: () => number): EndpointRecord {
  const id = createHash('sha256').update(`bench-endpoint-${i}`).digest('hex');
  const count = 1 + Math.floor(random() * 3);
  const chosen = new Set<string>();
  while (chosen.size < Math.min(count, profiles)) chosen.add(profileName(Math.floor(random() * profiles)));
  return {
    id,
    hostIf: hostVethName('cali', id),
    ipv4: `198.18.${i >> 8}.${i & 255}`,
    ipv6: `2001:db8:18::${i.toString(16)}`,
    profiles: [...chosen],
    labels: endpointLabels(i, random),
  };
}

function makeRemote(i: number, profiles: number, random: () => number): EndpointRecord {
  return {
    id: `remote-${i}`,
    hostIf: '',
    ipv4: `198.19.${i >> 8}.${i & 255}`,
    ipv6: `2001:db8:19::${i.toString(16)}`,
    profiles: [profileName(Math.floor(random() * profiles))],
    labels: endpointLabels(i, random),
  };
}

export class World {
  readonly profiles = new Map<string, Profile>();
  readonly locals: EndpointRecord[] = [];
  readonly remotes: EndpointRecord[] = [];
  private readonly random: () => number;
  private readonly profileCount: number;
  private readonly seed: number;
  private nextLocal = 1;
  /** The last model, until something changes; its profiles map, until a profile changes. */
  private cached: PolicyModel | undefined;
  private byName: ReadonlyMap<string, Profile> | undefined;
  private readonly views = new WeakMap<EndpointRecord, { profileLabels: Labels[]; local: PolicyEndpoint; labelled: LabelledEndpoint }>();

  constructor(endpoints: number, profiles: number, remotes: number, seed: number) {
    this.random = mulberry32(seed);
    this.seed = seed;
    this.profileCount = profiles;
    for (let p = 0; p < profiles; p++) {
      const profile = makeProfile(p, seed);
      this.profiles.set(profile.name, profile);
    }
    for (let i = 0; i < endpoints; i++) this.addLocal();
    for (let r = 1; r <= remotes; r++) this.remotes.push(makeRemote(r, profiles, this.random));
  }

  addLocal(): void {
    if (this.nextLocal > MAX_ENDPOINTS) throw new Error(`at most ${MAX_ENDPOINTS} local endpoints`);
    this.locals.push(makeLocal(this.nextLocal++, this.profileCount, this.random));
    this.cached = undefined;
  }

  /** Replace one profile with a new object in which one rule's port range differs. */
  changeProfile(round: number): void {
    const i = (round * 7) % this.profileCount;
    this.profiles.set(profileName(i), makeProfile(i, this.seed, round + 1));
    this.cached = undefined;
    this.byName = undefined;
  }

  /** What the agent's PolicyState.input() hands over (see the top of this file). */
  model(): PolicyModel {
    if (this.cached !== undefined) return this.cached;
    const view = (e: EndpointRecord) => {
      const profileLabels = e.profiles.map((p) => this.profiles.get(p)?.labelsToApply ?? {});
      let v = this.views.get(e);
      if (v === undefined || !v.profileLabels.every((l, i) => sameLabels(l, profileLabels[i] ?? {}))) {
        v = {
          profileLabels,
          local: { id: e.id, hostIf: e.hostIf, ipv4: [e.ipv4], ipv6: [e.ipv6], profiles: e.profiles, ready: true },
          labelled: { ipv4: [e.ipv4], ipv6: [e.ipv6], labels: effectiveLabels(profileLabels, e.labels) },
        };
        this.views.set(e, v);
      }
      return v;
    };
    this.cached = {
      localEndpoints: this.locals.map((e) => view(e).local),
      remoteAndLocalEndpoints: [...this.locals, ...this.remotes].map((e) => view(e).labelled),
      profiles: (this.byName ??= new Map(this.profiles)),
      natOutgoingPools: ['198.18.0.0/15'],
      allPools: ['198.18.0.0/15', '2001:db8::/32'],
    };
    return this.cached;
  }
}

// ---------------------------------------------------------------------------------------------
// Measuring

interface Sample {
  readonly wallMs: number;
  readonly stats: ApplyStats;
}

async function timedApply(dp: PolicyDataplane, model: PolicyModel): Promise<Sample> {
  const t0 = performance.now();
  const stats = await dp.apply(model);
  return { wallMs: performance.now() - t0, stats };
}



const mb = (bytes: number): string => `${(bytes / 1024 / 1024).toFixed(0)} MB`;


function phases(samples: readonly Sample[]): string {
  const p = (k: keyof ApplyStats['phasesMs']) => median(samples.map((s) => s.stats.phasesMs[k]));
  const procs = median(samples.map((s) => s.stats.processes));
  const chains = median(samples.map((s) => s.stats.chainsWritten));
  const sets = median(samples.map((s) => s.stats.setsWritten));
  return `render ${ms(p('render'))}, diff ${ms(p('diff'))}, write ${ms(p('write'))}; ${procs} proc, ${chains} chains, ${sets} sets`;
}


/** Chains and rules of a state by kind (both families), and how many ipset members it holds. */
function breakdown(state: DesiredState): string {
  const p = state.prefix;
  const kinds: Array<[string, (chain: string) => boolean]> = [
    ['endpoint chains (one per profile list and direction)', (c) => c.startsWith(`${p}-fw-`) || c.startsWith(`${p}-tw-`)],
    ['dispatch', (c) => c.startsWith(`${p}-from-wl-dispatch`) || c.startsWith(`${p}-to-wl-dispatch`)],
    ['profile chains', (c) => c.startsWith(`${p}-pri-`) || c.startsWith(`${p}-pro-`)],
    ['top-level chains and jumps', () => true],
  ];
  const count = kinds.map(() => ({ chains: 0, rules: 0 }));
  for (const f of [4, 6] as const) {
    for (const table of [state.filter[f], state.nat[f]]) {
      for (const [chain, rules] of table) {
        const k = count[kinds.findIndex(([, is]) => is(chain))] as { chains: number; rules: number };
        k.chains++;
        k.rules += rules.length;
      }
    }
    (count[3] as { rules: number }).rules += state.jumps[f].length;
  }
  const members = [...state.sets.values()].reduce((n, s) => n + s.members.length, 0);
  return kinds.map(([what], i) => `${what}: ${count[i]?.rules} rules in ${count[i]?.chains} chains`).join('; ') + `; ${state.sets.size} ipsets with ${members} members`;
}

function toolVersion(): Promise<string> {
  return new Promise((resolve) => {
    execFile('iptables', ['--version'], (err, stdout) => resolve(err ? 'iptables version unknown' : stdout.trim()));
  });
}

function nonNegativeInt(name: string, text: string | undefined): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) throw new Error(`--${name} must be a non-negative integer`);
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      endpoints: { type: 'string', default: '1000' },
      profiles: { type: 'string', default: '100' },
      reps: { type: 'string', default: '20' },
      'cold-reps': { type: 'string', default: '5' },
      remote: { type: 'string', default: '300' },
      seed: { type: 'string', default: '1' },
      // Tools started from the exec helper, in namespaces through nsenter: the before of the addon.
      'no-native': { type: 'boolean', default: false },
      // A restore tool started per write instead of the long-running ones: their before.
      'no-session': { type: 'boolean', default: false },
    },
  });
  const endpoints = nonNegativeInt('endpoints', values.endpoints);
  const profiles = Math.max(1, nonNegativeInt('profiles', values.profiles));
  const reps = Math.max(1, nonNegativeInt('reps', values.reps));
  const coldReps = Math.max(1, nonNegativeInt('cold-reps', values['cold-reps']));
  const remote = nonNegativeInt('remote', values.remote);
  const seed = nonNegativeInt('seed', values.seed);
  if (endpoints + reps > MAX_ENDPOINTS || remote > MAX_ENDPOINTS) throw new Error(`at most ${MAX_ENDPOINTS} endpoints`);

  const world = new World(endpoints, profiles, remote, seed);
  // As the daemon does: the tools start natively (posix_spawn), or else from the exec helper, not
  // by forking this process.
  const helper = startCommandsNatively(!values['no-native']) ? undefined : await ExecHelper.start();
  startCommandsThrough(helper);
  const ns = await createNetns('benchpol');
  // Ctrl-C: clean up like on any failure (the harness's exit hook deletes the namespace too).
  let interrupted = false;
  const onSignal = (): void => {
    console.error(interrupted ? 'still cleaning up' : 'interrupted: stopping after the current step and cleaning up');
    interrupted = true;
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const check = (): void => {
    if (interrupted) throw new Error('interrupted');
  };
  let cleanup: PolicyDataplane | undefined;
  /** Namespaces of the extra cold applies, deleted at the end. */
  const extra: string[] = [];
  try {
    const restoreSessions = !values['no-session'];
    const dp = new PolicyDataplane({ prefix: PREFIX, markBit: MARK_BIT, netns: ns, restoreSessions });
    cleanup = dp;
    console.log(
      `policy benchmark: ${endpoints} local endpoints, ${profiles} profiles, ${remote} remote endpoints, ` +
        `${reps} repetitions, netns ${ns}, node ${process.version}, ${cpus().length} CPUs, ${await toolVersion()}, ` +
        `tools started ${helper === undefined ? 'natively (posix_spawn, entering the namespace itself)' : 'from the exec helper (through nsenter)'}; ` +
        `rules written ${restoreSessions ? 'through long-running iptables-restore/ip6tables-restore' : 'by a restore process per write'}`,
    );
    // Context for the numbers: every kernel tool runs in the namespace (natively: one exec, as
    // on a real host; without the addon through nsenter: two), and other load on the machine
    // shows up directly.
    const viaNetns: number[] = [];
    const direct: number[] = [];
    for (let i = 0; i < 5; i++) {
      let t0 = performance.now();
      await run('nsenter', [`--net=/var/run/netns/${ns}`, '--', 'true'], 'start true in the namespace');
      viaNetns.push(performance.now() - t0);
      t0 = performance.now();
      await run('true', [], 'start true');
      direct.push(performance.now() - t0);
    }
    console.log(
      `load average ${loadavg()[0]?.toFixed(2)}; process start: 'nsenter --net=<ns> true' ${ms(median(viaNetns))}, ` +
        `'true' ${ms(median(direct))}`,
    );

    // (a) cold
    const model0 = world.model();
    const rssBefore = process.memoryUsage().rss;
    let heapPeak = process.memoryUsage().heapUsed;
    const sampler = setInterval(() => {
      heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
    }, MEMORY_SAMPLE_MS);
    let cold: Sample;
    try {
      cold = await timedApply(dp, model0);
    } finally {
      clearInterval(sampler);
    }
    heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
    const maxRss = process.resourceUsage().maxRSS * 1024;
    const rules = [4, 6].reduce(
      (n, f) => n + [...(dp.appliedState?.filter[f as 4 | 6].values() ?? [])].reduce((m, r) => m + r.length, 0),
      0,
    );
    const coldState = dp.appliedState;
    check();

    // (c) no-op
    const noop: Sample[] = [];
    for (let i = 0; i < reps; i++) {
      noop.push(await timedApply(dp, world.model()));
      check();
    }

    // (b) one endpoint added each time
    const added: Sample[] = [];
    for (let i = 0; i < reps; i++) {
      world.addLocal();
      added.push(await timedApply(dp, world.model()));
      check();
    }

    // (c) one profile rule changed each time
    const changed: Sample[] = [];
    for (let i = 0; i < reps; i++) {
      world.changeProfile(i);
      changed.push(await timedApply(dp, world.model()));
      check();
    }

    // Consistency: the kernel holds exactly what was rendered.
    dp.resync();
    const verify = await timedApply(dp, world.model());
    const consistent = verify.stats.chainsWritten + verify.stats.chainsRemoved + verify.stats.setsWritten + verify.stats.setsRemoved + verify.stats.jumpsWritten === 0;

    // More cold applies: a fresh namespace and a fresh dataplane (empty render cache) each.
    const colds: Sample[] = [cold];
    for (let i = 1; i < coldReps; i++) {
      const coldNs = await createNetns('benchpol');
      extra.push(coldNs);
      const fresh = new PolicyDataplane({ prefix: PREFIX, markBit: MARK_BIT, netns: coldNs, restoreSessions });
      colds.push(await timedApply(fresh, model0));
      await fresh.close();
      await deleteNetns(coldNs);
      extra.pop();
      check();
    }

    const wall = (s: readonly Sample[]) => s.map((x) => x.wallMs);
    console.log('');
    printTable([
      { what: 'metric', value: 'value', target: 'target', detail: 'details (medians)' },
      {
        what: 'cold apply (empty netns) median',
        value: ms(median(wall(colds))),
        detail: `${phases(colds)}, read ${ms(median(colds.map((c) => c.stats.phasesMs.read)))}; ${rules} rules`,
      },
      {
        what: `cold apply p90 (${colds.length} runs)`,
        value: ms(percentile(wall(colds), 90)),
        target: `< ${COLD_TARGET_MS} ms`,
        pass: percentile(wall(colds), 90) < COLD_TARGET_MS,
        detail: `min ${ms(Math.min(...wall(colds)))}, max ${ms(Math.max(...wall(colds)))}`,
      },
      { what: 'peak RSS (maxRSS)', value: mb(maxRss), detail: `RSS before cold ${mb(rssBefore)}` },
      { what: 'peak heap used (sampled)', value: mb(heapPeak) },
      {
        what: '+1 endpoint median',
        value: ms(median(wall(added))),
        target: `< ${INCREMENTAL_TARGET_MS} ms`,
        pass: median(wall(added)) < INCREMENTAL_TARGET_MS,
        detail: phases(added),
      },
      { what: '+1 endpoint p90', value: ms(percentile(wall(added), 90)), detail: `min ${ms(Math.min(...wall(added)))}, max ${ms(Math.max(...wall(added)))}` },
      { what: 'profile rule change median', value: ms(median(wall(changed))), detail: phases(changed) },
      { what: 'profile rule change p90', value: ms(percentile(wall(changed), 90)) },
      { what: 'no-op apply median', value: ms(median(wall(noop))), detail: phases(noop) },
      { what: 'no-op apply p90', value: ms(percentile(wall(noop), 90)) },
      {
        what: 'resync check (kernel == model)',
        value: consistent ? 'ok' : 'DIFF',
        pass: consistent,
        detail: `${ms(verify.wallMs)}, ${verify.stats.chainsWritten} chains / ${verify.stats.setsWritten} sets rewritten`,
      },
    ]);
    if (coldState !== undefined) console.log(`cold write: ${breakdown(coldState)}`);
    console.log(`load average at the end ${loadavg()[0]?.toFixed(2)} (numbers above 1 mean other work competed for the CPUs)`);
    if (!consistent) process.exitCode = 1;
  } finally {
    // Signals stay caught until the namespace is gone: a second Ctrl-C must not leave it behind.
    try {
      await cleanup?.removeAll();
    } finally {
      // Sets live in the namespace: deleting it removes anything removeAll could not.
      for (const n of extra) await deleteNetns(n);
      await deleteNetns(ns);
      process.removeListener('SIGINT', onSignal);
      process.removeListener('SIGTERM', onSignal);
      startCommandsThrough(undefined);
      await helper?.close();
    }
  }
}

// Run when started as a script; importing it (profiling harnesses) only gets World.
if (require.main === module) {
  main().catch((err: unknown) => {
    console.error(err instanceof Error ? (err.stack ?? err.message) : String(err));
    process.exitCode = 1;
  });
}
