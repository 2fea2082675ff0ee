// The kernel side of profile policy: render → diff against what was applied last → write it:
// sets created by `ipset restore`, members changed over netlink (native addon), rules through a
// long-running iptables-restore and ip6tables-restore (restore-session.ts; one process per write
// on a legacy backend), sets destroyed by `ipset restore`.
//
// State: the DesiredState last written successfully. When it is unknown (first apply, resync(),
// or any failure, after which the kernel may hold part of a batch) the next apply reads the
// kernel (iptables-save, ip6tables-save, ipset save) and diffs against that instead, which also
// heals our top-level jumps and removes stray chains and sets of ours. Calls are serialized.
//
// Tools: iptables 1.8 with the nf_tables backend. `-w` is accepted and harmless there.

import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { DataplaneError, errorMessage } from '../lib/errors.js';
import {
  assertIfPrefix,
  assertMarkBit,
  assertPolicyPrefix,
  FAMILIES,
  ownsSet,
  RenderCache,
  renderPolicy,
  type DesiredState,
  type Family,
  type PolicyModel,
} from '../policy/render.js';
import {
  diffPolicy,
  emptyDesiredState,
  parseIpsetSave,
  parseIptablesSave,
  type KernelSnapshot,
  type PlanStats,
  type PolicyPlan,
} from '../policy/diff.js';
import { HOST_IF_PREFIX } from '../policy/names.js';
import { CommandError, run, runWithInput } from './exec.js';
import { ipsetErrorText, membershipChanges, membershipMessage } from './netlink/ipset.js';
import { NetlinkSocket } from './netlink/socket.js';
import { RestoreSession, type RestoreTool } from './restore-session.js';
import { refusalOf } from './netlink/wire.js';
import { assertNetnsName, netnsPathOf } from './names.js';
import type { NetnsOption } from './veth.js';

/** Where `ip netns add` puts its namespaces (iproute2's NETNS_RUN_DIR). */

/** iptables-restore of a large ruleset can take a while on a busy host. */
const RESTORE_TIMEOUT_MS = 60_000;
/** Membership changes per netlink transaction (the addon takes up to 64 messages at a time). */
const NETLINK_BATCH = 64;
const MAX_OUTPUT_BYTES = 256 * 1024 * 1024;
/** How long a set whose last rule went may still be "in use by a kernel component" (below). */
const SET_RELEASE_WAIT_MS = 2_000;
const SET_RELEASE_RETRY_MS = 20;
const SET_IN_USE = /Error in line (\d+): Set cannot be destroyed: it is in use by a kernel component/;

/** The packet mark bit policy chains use to carry "allowed" from a profile chain back to the
 * endpoint chain. Chosen clear of the bits Docker and kube-proxy use. */
export const POLICY_MARK_BIT = 0x100000;

export interface PolicyDataplaneOptions extends NetnsOption {
  /** Chain/set prefix, `[a-z][a-z0-9]{0,7}`. */
  prefix: string;
  /** The mark bit policy may use, e.g. 0x100000. */
  markBit: number;
  /** Host interface prefix (default `cali`). */
  ifPrefix?: string;
  /** Program ip6tables and IPv6 sets too (default true). */
  ipv6?: boolean;
  /** Write rules through long-running restore tools when the backend is nf_tables (default true);
   * false starts a tool per write (the benchmark's before). */
  restoreSessions?: boolean;
}

export interface ApplyStats extends PlanStats {
  /** The kernel was read and diffed against (first apply, after resync() or a failure). */
  fullResync: boolean;
  /** Processes started (reads included). */
  processes: number;
  /** Wall time of the whole apply. */
  ms: number;
  /** Where it went: render (pure), kernel read (full resync only; started before render, so this
   * is the wait left after it), diff (pure), kernel writes. */
  phasesMs: { render: number; read: number; diff: number; write: number };
  /** Render warnings (skipped invalid remote addresses). */
  warnings: readonly string[];
  /** What is programmed after this apply: our rules (both tables, both families, top-level
   * jumps included), chains and ipsets. */
  programmed: { rules: number; chains: number; sets: number };
}

/** Rules, chains and sets a desired state amounts to (metrics). */
export function programmedCounts(desired: DesiredState): ApplyStats['programmed'] {
  let rules = 0;
  let chains = 0;
  for (const family of FAMILIES) {
    for (const table of [desired.filter[family], desired.nat[family]]) {
      chains += table.size;
      for (const r of table.values()) rules += r.length;
    }
    rules += desired.jumps[family].length;
  }
  return { rules, chains, sets: desired.sets.size };
}

export class PolicyDataplane {
  readonly prefix: string;
  readonly markBit: number;
  private readonly ifPrefix: string;
  private readonly ipv6: boolean;
  private readonly netns: string | undefined;
  /** Per family, once the backend is known to be nf_tables (see restoreSessions). */
  private sessions: Promise<Record<Family, RestoreSession> | undefined> | undefined;
  private readonly useSessions: boolean;
  private applied: DesiredState | undefined;
  /** What earlier renders worked out (pure memo: the output does not depend on it). */
  private readonly renderCache = new RenderCache();
  /** Bumped by resync(): an apply already under way must not record its state as current. */
  private epoch = 0;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(opts: PolicyDataplaneOptions) {
    this.prefix = assertPolicyPrefix(opts.prefix);
    assertMarkBit(opts.markBit);
    this.markBit = opts.markBit;
    this.ifPrefix = assertIfPrefix(opts.ifPrefix ?? HOST_IF_PREFIX);
    this.ipv6 = opts.ipv6 ?? true;
    this.netns = opts.netns === undefined ? undefined : assertNetnsName(opts.netns);
    this.useSessions = opts.restoreSessions ?? true;
  }

  /** Make the kernel match the model. Rejects (and forgets the applied state) on any failure. */
  apply(model: PolicyModel): Promise<ApplyStats> {
    return this.serialized(async () => {
      const t0 = performance.now();
      // A full resync diffs against the kernel: start the reading tools first, so they run while
      // render (synchronous, CPU only) works. The read still completes before anything is written.
      const kernelRead = this.applied === undefined ? this.readKernel() : undefined;
      kernelRead?.catch(() => undefined); // if render throws first; write() awaits and reports it
      const desired = renderPolicy(
        { ...model, prefix: this.prefix, markBit: this.markBit, ifPrefix: this.ifPrefix, ipv6: this.ipv6 },
        this.renderCache,
      );
      return this.write(desired, t0, performance.now() - t0, kernelRead);
    });
  }

  /** Forget the applied state: the next apply reads the kernel and repairs everything of ours. */
  resync(): void {
    this.epoch++;
    this.applied = undefined;
  }

  /** The state last written successfully (undefined when the next apply is a full resync). */
  get appliedState(): DesiredState | undefined {
    return this.applied;
  }

  /** Remove every chain, jump and set with our prefix (uninstall, tests), and end the restore
   * tools (the next apply starts them again). Idempotent. */
  removeAll(): Promise<ApplyStats> {
    return this.serialized(async () => {
      this.applied = undefined;
      try {
        return await this.write(emptyDesiredState(this.prefix), performance.now(), 0);
      } finally {
        this.applied = undefined;
        await this.closeSessions();
      }
    });
  }

  /** End the long-running restore tools (daemon shutdown). The kernel keeps what was written. */
  close(): Promise<void> {
    return this.serialized(() => this.closeSessions());
  }

  /** What the kernel holds now (our chains and sets, and the chains that reference them). */
  async readKernel(): Promise<KernelSnapshot> {
    const [v4, v6, sets] = await Promise.all([
      this.save(4),
      this.ipv6 ? this.save(6) : Promise.resolve(''),
      this.tool('ipset', ['save'], 'read ipsets'),
    ]);
    return {
      iptables: { 4: parseIptablesSave(v4), 6: parseIptablesSave(v6) },
      sets: parseIpsetSave(sets, (n) => ownsSet(this.prefix, n)),
    };
  }

  // ---------------------------------------------------------------------------------------------

  private async write(
    desired: DesiredState,
    t0: number,
    renderMs: number,
    kernelRead?: Promise<KernelSnapshot>,
  ): Promise<ApplyStats> {
    let processes = 0;
    const epoch = this.epoch;
    const fullResync = this.applied === undefined;
    try {
      let t = performance.now();
      let kernel: KernelSnapshot | undefined;
      if (fullResync) {
        kernel = await (kernelRead ?? this.readKernel());
        processes += this.ipv6 ? 3 : 2;
      }
      const read = performance.now() - t;
      t = performance.now();
      // The base is exact (what we wrote last, or what the kernel printed), so chains that only
      // gained rules can take inserts: no deletion, no RCU wait in the tool (see DiffOptions).
      const plan = diffPolicy(this.applied, desired, kernel, { insertInPlace: true });
      const diff = performance.now() - t;
      t = performance.now();
      this.applied = undefined; // until the whole plan is in
      processes += await this.run(plan);
      if (this.epoch === epoch) this.applied = desired;
      const end = performance.now();
      return {
        ...plan.stats,
        fullResync,
        processes,
        ms: end - t0,
        phasesMs: { render: renderMs, read, diff, write: end - t },
        warnings: desired.warnings,
        programmed: programmedCounts(desired),
      };
    } catch (err) {
      this.applied = undefined;
      throw err;
    }
  }

  /**
   * Sets are created before the rules that name them and destroyed after the rules that named
   * them are gone. The two iptables families are independent tables and are written side by side;
   * membership-only set changes (no set created) go alongside them too, since no rule waits for
   * them: an endpoint's own traffic only flows once its dispatch rules are in.
   */
  private async run(plan: PolicyPlan): Promise<number> {
    const ipsetBefore = (): Promise<void> =>
      this.restore('ipset', ['-exist', 'restore'], plan.ipsetBefore, 'update policy ipsets');
    const creates = /^create /m.test(plan.ipsetBefore);
    let n = 0;
    if (plan.ipsetBefore !== '' && creates) {
      await ipsetBefore();
      n++;
    }
    // Each resolves to the number of processes it started.
    const sessions = await this.restoreSessions();
    const writes = FAMILIES.filter((f) => plan.iptables[f] !== '' && (f === 4 || this.ipv6)).map((family) => {
      const op = `write IPv${family} policy chains`;
      const session = sessions?.[family];
      if (session === undefined) return this.restore(restoreTool(family), ['-w', '--noflush'], plan.iptables[family], op).then(() => 1);
      const started = session.pid === undefined ? 1 : 0;
      return named(session.apply(plan.iptables[family], op, RESTORE_TIMEOUT_MS), plan.iptables[family]).then(() => started);
    });
    if (plan.ipsetBefore !== '' && !creates) writes.push(this.changeMembers(plan.ipsetBefore, ipsetBefore));
    const results = await Promise.allSettled(writes);
    for (const r of results) if (r.status === 'fulfilled') n += r.value;
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
    if (plan.ipsetAfter !== '') n += await this.destroySets(plan.ipsetAfter);
    return n;
  }

  /**
   * Destroys the sets no rule names any more. Under nf_tables the kernel drops a deleted rule's
   * reference to its set a moment after the commit (deferred work). A restore tool that exits
   * waited for that; a long-running one answers before it, so a set may still be "in use by a
   * kernel component" for a moment: destroyed again from that line on, for up to
   * SET_RELEASE_WAIT_MS. Resolves to the number of processes started.
   */
  private async destroySets(input: string): Promise<number> {
    const deadline = performance.now() + SET_RELEASE_WAIT_MS;
    let lines = input.split('\n').filter((l) => l !== '');
    for (let n = 1; ; n++) {
      const batch = `${lines.join('\n')}\n`;
      try {
        await runWithInput('ipset', ['restore'], batch, 'remove unused policy ipsets', this.execOptions());
        return n;
      } catch (err) {
        const inUse = err instanceof CommandError ? SET_IN_USE.exec(err.stderr) : null;
        if (inUse?.[1] === undefined || performance.now() > deadline) return named(Promise.reject(err instanceof Error ? err : new Error(String(err))), batch).then(() => n);
        lines = lines.slice(Number(inUse[1]) - 1);
        await sleep(SET_RELEASE_RETRY_MS);
      }
    }
  }

  /** Members added and deleted (a container coming or going): over netlink when the native addon
   * is there, no process; else (or for anything but add and del) through `ipset restore`.
   * Resolves to the number of processes started. */
  private async changeMembers(input: string, withTool: () => Promise<void>): Promise<number> {
    const changes = membershipChanges(input);
    let socket: NetlinkSocket | undefined;
    try {
      socket = changes === undefined ? undefined : NetlinkSocket.open('netfilter', this.netns);
    } catch {
      socket = undefined; // the tool reports what is wrong in its own words
    }
    if (changes === undefined || socket === undefined) {
      await withTool();
      return 1;
    }
    try {
      for (let i = 0; i < changes.length; i += NETLINK_BATCH) {
        const batch = changes.slice(i, i + NETLINK_BATCH);
        const nl = socket;
        const result = await nl.transact(batch.map((c) => membershipMessage(nl.nextSeq(), c)));
        for (const [j, c] of batch.entries()) {
          const replies = result.replies[j];
          const what = `update policy ipsets: ${c.op} ${c.set} ${c.member}`;
          if (replies === undefined) throw new DataplaneError(`${what}: no answer from the kernel: ${errorMessage(result.lost)}`, { cause: result.lost });
          const refused = refusalOf(replies);
          if (refused !== undefined) throw new DataplaneError(`${what}: ${ipsetErrorText(refused.errno) ?? nl.errnoText(refused.errno)}`);
        }
      }
      return 0;
    } finally {
      await socket.close();
    }
  }

  private save(family: Family): Promise<string> {
    return this.tool(family === 4 ? 'iptables-save' : 'ip6tables-save', [], `read IPv${family} rules`);
  }

  private async tool(file: string, args: string[], op: string): Promise<string> {
    const { stdout } = await run(file, args, op, this.execOptions());
    return stdout;
  }

  /** Feed a batch to a new process. */
  private restore(file: string, args: string[], input: string, op: string): Promise<void> {
    return named(runWithInput(file, args, input, op, this.execOptions()).then(() => undefined), input);
  }

  /** The restore sessions, if the backend is nf_tables (asked once: `iptables-restore --version`). */
  private restoreSessions(): Promise<Record<Family, RestoreSession> | undefined> {
    if (!this.useSessions) return Promise.resolve(undefined);
    this.sessions ??= this.tool('iptables-restore', ['--version'], 'ask the iptables backend').then(
      (version) => {
        if (!version.includes('nf_tables')) return undefined;
        const path = this.netns === undefined ? undefined : netnsPathOf(this.netns);
        return { 4: new RestoreSession(restoreTool(4), path), 6: new RestoreSession(restoreTool(6), path) };
      },
      () => {
        // Per-write processes report what is wrong in their own words; asked again next time.
        this.sessions = undefined;
        return undefined;
      },
    );
    return this.sessions;
  }

  private async closeSessions(): Promise<void> {
    const sessions = await this.sessions;
    this.sessions = undefined;
    if (sessions !== undefined) await Promise.all(FAMILIES.map((f) => sessions[f].close()));
  }

  /** In a named namespace (tests, the benchmark) the tools run there. */
  private execOptions(): { timeoutMs: number; maxBufferBytes: number; netnsPath?: string } {
    return { timeoutMs: RESTORE_TIMEOUT_MS, maxBufferBytes: MAX_OUTPUT_BYTES, ...(this.netns !== undefined && { netnsPath: netnsPathOf(this.netns) }) };
  }

  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.queue.then(fn, fn);
    this.queue = next.catch(() => undefined);
    return next;
  }
}

function restoreTool(family: Family): RestoreTool {
  return family === 4 ? 'iptables-restore' : 'ip6tables-restore';
}

/** On failure, name the offending input line (both tools report "line N", counted in `input`). */
async function named(write: Promise<void>, input: string): Promise<void> {
  try {
    await write;
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
    const m = /line:? (\d+)/i.exec(err.stderr);
    const line = m?.[1] === undefined ? undefined : input.split('\n')[Number(m[1]) - 1];
    throw new DataplaneError(line === undefined ? err.message : `${err.message} (input: ${line})`, { cause: err });
  }
}
