// Writes a workload's own routing (agent/sandbox-plan.ts) inside its network namespace, entered by
// path (Docker's sandboxes are not `ip netns` names; exec.ts's netnsPath). Ours there: rules at
// SANDBOX_RULE_PRIORITY of the shape we write (a source and a table; added with our protocol
// number too, so deleting one never takes someone else's) and routes with our routing protocol
// number; Docker's routes (its gateway /32s and default route) are never touched. Each apply reads the namespace once per family and writes only
// the difference, in one `ip -batch` per family.
import { existsSync } from 'node:fs';
import type { IpFamily } from '../ipam/cidr';
import { DataplaneError, errorMessage } from '../lib/errors';
import { CommandError, runWithInput } from './exec';
import { assertNetnsPath } from './names';

/** The main table's number, as `ip -N` prints it. */
const MAIN_TABLE = '254';
/** Priority of our rules in a workload's namespace: before the main table (32766). */
export const SANDBOX_RULE_PRIORITY = 100;

export interface SandboxRule {
  readonly family: IpFamily;
  /** A workload address, with its full-length prefix. */
  readonly from: string;
  readonly table: number;
}

export interface SandboxRoute {
  readonly family: IpFamily;
  /** 'main', or one of our tables. */
  readonly table: number | 'main';
  /** 'default' or a CIDR. */
  readonly dst: string;
  readonly via: string;
  /** The preferred source address (bare), for routes to members. */
  readonly src?: string;
  /** The interface, named by an address it carries: the front end names the interfaces. */
  readonly deviceAddress: string;
}

export interface SandboxPlan {
  readonly sandbox: string;
  readonly rules: readonly SandboxRule[];
  readonly routes: readonly SandboxRoute[];
}

/** done: in place; pending: some interface is not in the namespace yet (the front end moves it
 * there after attach) or a write failed, so try again; gone: the namespace no longer exists. */
export type SandboxOutcome = 'done' | 'pending' | 'gone';

interface AddrJson { ifname?: string; addr_info?: { local?: string }[] }
interface RuleJson { priority?: number; src?: string; srclen?: number; table?: string; protocol?: string; [selector: string]: unknown }
interface RouteJson { dst?: string; gateway?: string; dev?: string; prefsrc?: string; table?: string }

interface FamilyState {
  /** Rule spec (without protocol) -> the protocol the kernel reports for it, if any. */
  readonly rules: Map<string, string | undefined>;
  /** Route spec by `table dst`. */
  readonly routes: Map<string, string>;
}

export class SandboxRoutingDataplane {
  constructor(private readonly o: { readonly protocol: number; readonly warn?: (message: string) => void }) {}

  /** Brings the namespace in line with `plan`; an empty plan removes everything of ours there. */
  async apply(plan: SandboxPlan): Promise<SandboxOutcome> {
    const path = assertNetnsPath(plan.sandbox);
    if (!existsSync(path)) return 'gone';
    let pending = false;
    for (const family of [4, 6] as const) {
      let state: { devices: Map<string, string>; current: FamilyState };
      try {
        state = await this.read(path, family);
      } catch (err) {
        if (!existsSync(path) || notANamespace(err)) return 'gone';
        throw err;
      }
      const desired = this.desired(plan, family, state.devices);
      pending ||= desired.missingDevice;
      const lines: string[] = [];
      for (const rule of desired.rules) if (!state.current.rules.has(rule)) lines.push(`rule add ${rule} protocol ${this.o.protocol}`);
      // The kernel deletes the first rule matching what a delete names; naming the protocol too
      // keeps that from being another rule at our priority with our source and table and a
      // selector of its own (one written before rules carried our protocol is deleted without).
      for (const [rule, proto] of state.current.rules) if (!desired.rules.has(rule)) lines.push(`rule del ${rule}${proto === undefined ? '' : ` protocol ${proto}`}`);
      for (const [key, spec] of desired.routes) if (state.current.routes.get(key) !== spec) lines.push(`route replace ${spec}`);
      for (const [key, spec] of state.current.routes) if (!desired.routes.has(key)) lines.push(`route del ${spec}`);
      if (lines.length === 0) continue;
      try {
        // -force: one bad line (a member's route racing its interface) must not keep the rest out.
        await runWithInput('ip', [`-${family}`, '-force', '-batch', '-'], `${lines.join('\n')}\n`, `route ${plan.sandbox}`, { netnsPath: path });
      } catch (err) {
        if (!existsSync(path) || notANamespace(err)) return 'gone';
        this.o.warn?.(`routing in ${plan.sandbox}: ${errorMessage(err)}; retrying`);
        pending = true;
      }
    }
    return pending ? 'pending' : 'done';
  }

  private desired(plan: SandboxPlan, family: IpFamily, devices: ReadonlyMap<string, string>): { rules: Set<string>; routes: Map<string, string>; missingDevice: boolean } {
    const rules = new Set(plan.rules.filter((r) => r.family === family).map((r) => ruleSpec(r.from, String(r.table))));
    const routes = new Map<string, string>();
    let missingDevice = false;
    for (const r of plan.routes) {
      if (r.family !== family) continue;
      const dev = devices.get(r.deviceAddress);
      if (dev === undefined) {
        missingDevice = true;
        continue;
      }
      routes.set(`${r.table} ${r.dst}`, this.routeSpec(family, String(r.table), r.dst, r.via, dev, r.src));
    }
    return { rules, routes, missingDevice };
  }

  /** Addresses, planned values and device names reach `ip` validated: addresses are canonical
   * (the plan comes from parsed records) and device names come from the kernel itself. */
  private routeSpec(family: IpFamily, table: string, dst: string, via: string, dev: string, src: string | undefined): string {
    // onlink: the IPv4 gateway is proxy-ARP'd by the host end; no route on the device covers it.
    return `${dst} via ${via} dev ${dev}${family === 4 ? ' onlink' : ''}${src === undefined ? '' : ` src ${src}`} table ${table} proto ${this.o.protocol}`;
  }

  private async read(path: string, family: IpFamily): Promise<{ devices: Map<string, string>; current: FamilyState }> {
    const op = `read routing in ${path}`;
    // -N: tables as numbers, also where /etc/iproute2/rt_tables names ours.
    const { stdout } = await runWithInput('ip', ['-N', '-j', `-${family}`, '-batch', '-'], `addr show\nrule show\nroute show table all proto ${this.o.protocol}\n`, op, { netnsPath: path });
    const parts = stdout.split('\n').filter((l) => l.trim() !== '');
    if (parts.length !== 3) throw new DataplaneError(`${op}: expected 3 JSON lists from ip, got ${parts.length}`);
    let addrs: AddrJson[];
    let rules: RuleJson[];
    let routes: RouteJson[];
    try {
      [addrs, rules, routes] = parts.map((p) => JSON.parse(p) as unknown[]) as [AddrJson[], RuleJson[], RouteJson[]];
    } catch (err) {
      throw new DataplaneError(`${op}: unexpected output from ip: ${errorMessage(err)}`, { cause: err });
    }
    const full = family === 4 ? 32 : 128;
    const devices = new Map<string, string>();
    for (const link of addrs) for (const a of link.addr_info ?? []) if (link.ifname !== undefined && a.local !== undefined) devices.set(a.local, link.ifname);
    const current: FamilyState = { rules: new Map(), routes: new Map() };
    for (const r of rules) {
      if (r.priority === SANDBOX_RULE_PRIORITY && isOurRuleShape(r)) current.rules.set(ruleSpec(`${r.src}/${r.srclen ?? full}`, r.table), r.protocol);
    }
    for (const r of routes) {
      if (r.dst === undefined) continue;
      const dst = r.dst === 'default' || r.dst.includes('/') ? r.dst : `${r.dst}/${full}`;
      const table = r.table === undefined || r.table === MAIN_TABLE ? 'main' : r.table;
      current.routes.set(`${table} ${dst}`, r.gateway === undefined || r.dev === undefined
        ? `${dst} table ${table} proto ${this.o.protocol}` // ours, of a shape we never write: a stray
        : this.routeSpec(family, table, dst, r.gateway, r.dev, r.prefsrc));
    }
    return { devices, current };
  }
}

/** The file is there but no namespace is mounted on it: Docker is tearing the sandbox down (it
 * unmounts the namespace before it removes the file). */
/** The path exists but is no namespace any more (its mount is gone): nsenter's words, or the
 * native starter's (exec.ts). */
function notANamespace(err: unknown): boolean {
  return err instanceof CommandError &&
    (/reassociate to namespace .* failed: Invalid argument/.test(err.stderr) || /cannot enter network namespace .*: Invalid argument/.test(err.message));
}

/** Keys `ip -j rule show` prints for a rule as we write it (`from <address> table <n>`). */
const OUR_RULE_KEYS = new Set(['priority', 'src', 'srclen', 'table', 'protocol']);

/** Whether a rule has the shape we write: a source address and a table, no other selector. Anyone
 * else's rule at our priority (from all, by mark or interface, ...) is not ours: it is left alone,
 * and it must not pass for ours (a marked rule with our source and table), nor could `rule del
 * from <src> table <n>` name it (`from all/32` is refused, which kept the namespace pending). */
function isOurRuleShape(r: RuleJson): r is RuleJson & { src: string; table: string } {
  return typeof r.src === 'string' && r.src !== 'all' && typeof r.table === 'string' && (r.protocol === undefined || typeof r.protocol === 'string') && Object.keys(r).every((k) => OUR_RULE_KEYS.has(k));
}

function ruleSpec(from: string, table: string): string {
  return `from ${from} table ${table} priority ${SANDBOX_RULE_PRIORITY}`;
}
