// Container churn against a harness plugin: C clients each create and start containers on one
// network and remove them again, keeping up to W of their own alive at a time, until N have been
// made. Every started container's address is checked against the others alive (Docker's view) and,
// by a sampler running alongside, against the datastore's allocations (exactly one, held by this
// host, naming the container's endpoint once it is recorded). At the end, once the caller has
// removed the network, nothing of the run may be left: no allocation, endpoint record, network or
// profile record, veth, host route, chain or set. Used by `npm run bench:churn` (500 containers)
// and by a small run in the test suite; the same code for both.
import type Docker from 'dockerode';
import { addressOn, runContainer } from './containers';
import type { Plugin } from './plugin';
import { PluginStore, added, duplicateAllocations, readKernel, type KernelState, type PluginState } from './plugin-traces';

export interface ChurnOptions {
  readonly docker: Docker;
  readonly image: string;
  readonly plugin: Plugin;
  /** Docker's name of a network of the plugin's. */
  readonly network: string;
  readonly containers: number;
  readonly clients: number;
  /** Containers each client keeps alive before removing its oldest. */
  readonly window: number;
  /** Between datastore samples. */
  readonly sampleIntervalMs?: number;
  readonly progress?: (line: string) => void;
}

export interface ChurnResult {
  readonly started: number;
  readonly removed: number;
  /** Docker errors (failed create, start, inspect or remove). */
  readonly failures: string[];
  /** Two live containers with one address, or an address allocated twice. */
  readonly duplicates: string[];
  /** A live container's address not allocated (or to another holder, or another endpoint). */
  readonly mismatches: string[];
  readonly samples: number;
  /** Samples that could not be read (the store socket did not answer in time: a busy machine). */
  readonly sampleErrors: string[];
  readonly maxLive: number;
  readonly wallMs: number;
  /** Create + start + inspect, per container. */
  readonly startMs: number[];
  /** Remove (force), per container. */
  readonly removeMs: number[];
}

interface Live {
  readonly name: string;
  readonly endpointId: string;
  readonly ip: string;
  /** Set when its removal starts: from then on its address may be released at any moment. */
  removing: boolean;
}

const DEFAULT_SAMPLE_INTERVAL_MS = 500;

export async function churn(o: ChurnOptions): Promise<ChurnResult> {
  const live = new Map<string, Live>(); // by address
  const failures: string[] = [];
  const duplicates = new Set<string>();
  const mismatches: string[] = [];
  const startMs: number[] = [];
  const removeMs: number[] = [];
  let next = 0;
  let removed = 0;
  let maxLive = 0;
  let done = false;
  const began = performance.now();

  const remove = async (c: Docker.Container, entry: Live | undefined): Promise<void> => {
    if (entry !== undefined) entry.removing = true;
    const t0 = performance.now();
    try {
      await c.remove({ force: true });
      removeMs.push(performance.now() - t0);
      removed++;
    } catch (err) {
      failures.push(`remove ${c.id.slice(0, 12)}: ${String(err)}`);
    }
    // Only once Docker has released it: from then on the address may be handed out again.
    if (entry !== undefined && live.get(entry.ip) === entry) live.delete(entry.ip);
  };

  const client = async (): Promise<void> => {
    const mine: { c: Docker.Container; entry: Live | undefined }[] = [];
    while (next < o.containers) {
      const n = next++;
      const t0 = performance.now();
      let c: Docker.Container;
      try {
        c = await runContainer(o.docker, { image: o.image, network: o.network });
      } catch (err) {
        failures.push(`start #${n}: ${String(err)}`);
        continue;
      }
      let entry: Live | undefined;
      try {
        const a = await addressOn(c, o.network);
        startMs.push(performance.now() - t0);
        entry = { name: c.id.slice(0, 12), endpointId: a.endpointId, ip: a.ipv4, removing: false };
        const other = live.get(a.ipv4);
        if (a.ipv4 === '') failures.push(`container ${entry.name} has no IPv4 address`);
        else if (other !== undefined) duplicates.add(`${a.ipv4}: containers ${other.name} and ${entry.name} alive at once`);
        else live.set(a.ipv4, entry);
        maxLive = Math.max(maxLive, live.size);
      } catch (err) {
        failures.push(`inspect #${n}: ${String(err)}`);
      }
      mine.push({ c, entry });
      if ((n + 1) % 50 === 0) o.progress?.(`${n + 1}/${o.containers} started, ${live.size} alive`);
      if (mine.length >= o.window) {
        const oldest = mine.shift();
        if (oldest !== undefined) await remove(oldest.c, oldest.entry);
      }
    }
    for (const m of mine) await remove(m.c, m.entry);
  };

  const store = new PluginStore(o.plugin);
  let samples = 0;
  const sampleErrors: string[] = [];
  const sampler = async (): Promise<void> => {
    while (!done) {
      const before = new Map(live);
      let state: PluginState;
      try {
        state = await store.read();
      } catch (err) {
        sampleErrors.push(String(err));
        await new Promise((r) => setTimeout(r, o.sampleIntervalMs ?? DEFAULT_SAMPLE_INTERVAL_MS));
        continue;
      }
      samples++;
      for (const ip of duplicateAllocations(state.allocations)) duplicates.add(`${ip}: allocated twice in the datastore`);
      const byIp = new Map(state.allocations.map((a) => [a.ip, a]));
      const records = new Set(state.endpoints);
      for (const [ip, entry] of before) {
        // Alive, and not being removed, for the whole read: its address must be held, by this
        // host, for its endpoint.
        if (live.get(ip) !== entry || entry.removing) continue;
        const a = byIp.get(ip);
        if (a === undefined) mismatches.push(`${ip} (container ${entry.name}) is not allocated`);
        else if (a.owner.node !== o.plugin.node) mismatches.push(`${ip} (container ${entry.name}) is held by ${a.owner.node}`);
        else if (a.owner.endpointId !== undefined && a.owner.endpointId !== entry.endpointId) {
          mismatches.push(`${ip} (container ${entry.name}, endpoint ${entry.endpointId.slice(0, 12)}) is allocated to endpoint ${a.owner.endpointId.slice(0, 12)}`);
        }
        if (!records.has(entry.endpointId)) mismatches.push(`container ${entry.name}: no endpoint record ${entry.endpointId.slice(0, 12)}`);
      }
      await new Promise((r) => setTimeout(r, o.sampleIntervalMs ?? DEFAULT_SAMPLE_INTERVAL_MS));
    }
  };

  const sampling = sampler();
  try {
    await Promise.all(Array.from({ length: o.clients }, () => client()));
  } finally {
    done = true;
    await sampling;
    await store.close();
  }
  return {
    started: startMs.length,
    removed,
    failures,
    duplicates: [...duplicates],
    mismatches,
    samples,
    sampleErrors,
    maxLive,
    wallMs: performance.now() - began,
    startMs,
    removeMs,
  };
}

export interface Baseline {
  readonly chains: string[];
  readonly sets: string[];
}

/** The plugin's chains and sets before the run (its base chains stay while it runs). */
export async function baseline(plugin: Plugin): Promise<Baseline> {
  const k = await readKernel(plugin, []);
  return { chains: k.chains, sets: k.sets };
}

export interface Leftovers {
  readonly endpoints: string[];
  readonly allocations: string[];
  readonly networks: string[];
  readonly profiles: string[];
  readonly veths: string[];
  readonly routes: string[];
  readonly chains: string[];
  readonly sets: string[];
  /** Lines in which the plugin's reconciler repaired a leak (the normal path left it). */
  readonly repairs: string[];
}

export function leftoverCount(l: Leftovers): number {
  return Object.values(l).reduce((n: number, v: string[]) => n + v.length, 0);
}

const REPAIR_LINE = /removed endpoint|removed veth|released address/;

/** What is left of the run, once the agent has caught up (waits up to `timeoutMs` for it to be
 * nothing: a removal's veth and rules go a moment after Docker's answer). */
export async function leftovers(plugin: Plugin, routePrefixes: readonly string[], base: Baseline, timeoutMs = 15_000): Promise<Leftovers> {
  const store = new PluginStore(plugin);
  try {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const [s, k]: [PluginState, KernelState] = await Promise.all([store.read(), readKernel(plugin, routePrefixes)]);
      const l: Leftovers = {
        endpoints: s.endpoints,
        allocations: s.allocations.map((a) => `${a.ip} (${a.owner.node} ${a.owner.handle})`),
        networks: s.networks,
        profiles: s.profiles,
        veths: k.veths,
        routes: k.routes,
        chains: added(base.chains, k.chains),
        sets: added(base.sets, k.sets),
        repairs: plugin.output().split('\n').filter((line) => REPAIR_LINE.test(line)),
      };
      if (leftoverCount(l) === 0 || Date.now() > deadline) return l;
      await new Promise((r) => setTimeout(r, 250));
    }
  } finally {
    await store.close();
  }
}
